"""The one sparse index space a client holds to.

Given one (``Client(sparse_space=...)``, e.g. what ``bge-index`` recorded in a
collection), the client asks the server for that mapping in every request and refuses
an answer, or a ``/health``, in another space. Given none, it takes the server's space
at first contact and holds to that: a server restarted with another
``SPARSE_TOKEN_MAPPING`` or ``SPARSE_INDEX_SPACE`` is then refused, not mixed in.
"""

from __future__ import annotations

import threading

from bge_client._errors import SparseSpaceMismatch
from bge_client._types import SparseMapping, SparseSpace

__all__ = ["SpaceGuard"]


class SpaceGuard:
    def __init__(self, space: SparseSpace | None) -> None:
        self._space = space
        # Sync clients may be shared between threads; adopting is check-then-set.
        self._lock = threading.Lock()

    @property
    def space(self) -> SparseSpace | None:
        return self._space

    def mapping(self) -> SparseMapping | None:
        """What each request asks for (None until a space is known: the server's own)."""
        return None if self._space is None else self._space.mapping

    def server_says(self, server: SparseSpace | None, base_url: str) -> None:
        """Check (or adopt) what ``/health`` reports. A server whose default mapping is
        another still answers in ours when asked, so only the same mapping in another
        index space is refused here; answers are checked one by one anyway."""
        if server is None:
            return
        with self._lock:
            if self._space is None:
                self._space = server
                return
            expected = self._space
        if server.mapping == expected.mapping and server.index_space != expected.index_space:
            raise _mismatch(expected, server, f"{base_url}/health reports")

    def answered(self, got: SparseSpace, route: str) -> SparseSpace:
        """The space of an answer, checked against (or adopted as) the client's."""
        with self._lock:
            if self._space is None:
                self._space = got
                return got
            expected = self._space
        if got != expected:
            raise _mismatch(expected, got, f"{route} answered")
        return got


def _mismatch(expected: SparseSpace, got: SparseSpace, who: str) -> SparseSpaceMismatch:
    if got.mapping == "hash" or expected.mapping == "hash":
        fix = f"SPARSE_TOKEN_MAPPING={expected.mapping}" + (
            f" and SPARSE_INDEX_SPACE={expected.index_space}" if expected.mapping == "hash" else ""
        )
    else:
        # Token ids of another vocabulary: another model's tokenizer.
        fix = f"EMBEDDING_MODEL_NAME to the model with {expected.index_space} tokens"
    return SparseSpaceMismatch(
        f"{who} sparse vectors in the {got} space, but this client holds to the {expected} "
        f"space (its sparse_space, or the server's at first contact): no sparse query would "
        f"match vectors of the other. Set {fix} on the server, or re-index the collection "
        f"with this server and make the client with its space",
        expected=expected,
        got=got,
    )
