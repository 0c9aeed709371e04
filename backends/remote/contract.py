"""What every remote kind is once probed (``Remote``), and what its probe found (``Offer``).

A remote kind knows one remote's wire format: how to find out what it serves
(``probe``, which returns the remote bound to its client and offer) and how to
ask it for one chunk of work, no larger than its batch limit. Splitting,
admission, merging and the up/down state belong to the endpoint; concurrency,
retries and error statuses to the transport; the checks of answers to
answers.py; which kind is which to kinds.py.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self

from backends.fingerprint import remote_fingerprint
from backends.remote.transport import Deadline, RemoteClient
from engine.backend import Capabilities
from engine.errors import BackendFailure, InvalidInput, Unavailable
from engine.settings import Settings
from engine.types import EncodeOptions, Encoding, ModelInfo, Operation, Output, Scores, Token

__all__ = ["PASSED_ON", "Kind", "Offer", "ProbeFailed", "Remote", "RemoteChanged"]

Kind = Literal["tei", "infinity", "self", "runpod", "vllm"]
# The options a remote that takes TEI's request fields is sent as asked.
PASSED_ON = frozenset({"normalize", "truncate_left"})
# Each option as the request named it, for the error that refuses it.
_OPTION_PARAMS = {"normalize": "normalize", "truncate_left": "truncation_direction"}


class ProbeFailed(Exception):
    """The remote could not be probed now (down, loading, answering errors); try later."""


class RemoteChanged(BackendFailure):
    """The remote no longer is what its probe found (e.g. it now refuses batches its
    /info allowed): the call fails, and the endpoint probes the remote again."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What one remote serves, as found by probing it: what a backend declares up front
    (operations, heads, model names, batch limit, options honoured and why not), and
    each model's details."""

    capabilities: Capabilities
    models: Mapping[Operation, ModelInfo]
    version: str = ""
    # Why an operation is not offered, for the start-up error that names it.
    missing: Mapping[Operation, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        models: Mapping[Operation, ModelInfo],
        *,
        outputs: frozenset[Output],
        max_batch_size: int,
        options: frozenset[str] = PASSED_ON,
        refusals: Mapping[str, str] | None = None,
        version: str = "",
        missing: Mapping[Operation, str] | None = None,
    ) -> Offer:
        """The offer of the operations ``models`` serve; ``max_batch_size`` is the most
        texts (or documents) the remote takes in one request."""
        embedding = models.get(Operation.EMBED) or models.get(Operation.LEXICAL_COLBERT)
        reranker = models.get(Operation.RERANK)
        capabilities = Capabilities(
            operations=frozenset(models),
            outputs=outputs,
            embedding_model=embedding.name if embedding else None,
            reranker_model=reranker.name if reranker else None,
            max_batch_size=max_batch_size,
            options=options,
            refusals=refusals or {},
        )
        return cls(capabilities, models, version, missing or {})


class Remote(ABC):
    """One probed remote, bound to its client and its offer: each call takes only its
    own arguments, and a chunk no larger than the offer's batch limit."""

    kind: ClassVar[Kind]
    name: ClassVar[str]  # as logs and /health name the kind
    # Whether "too large" (413) for several items means the batch, never one item, was
    # too much (so halves may pass): true of a bge-serve, whose inputs are truncated.
    halves_too_large: ClassVar[bool] = False
    offer: Offer  # set by probe, through _serving

    def __init__(self, client: RemoteClient) -> None:
        self.client = client
        self.url = client.url

    @classmethod
    @abstractmethod
    async def probe(cls, client: RemoteClient, settings: Settings, deadline: Deadline) -> Self:
        """The remote, serving what it was found to; ProbeFailed when it cannot tell now,
        StartupError when it answers but does not fit the settings (e.g. several models
        and none chosen)."""

    def _serving(self, offer: Offer) -> Self:
        """Itself, serving ``offer`` with each model's cache fingerprint: what the remote
        says of itself, taken again at every probe (a remote that comes back serving
        another model is keyed apart)."""
        models = {
            operation: dataclasses.replace(
                info, fingerprint=remote_fingerprint(self.url, self.kind, offer.version, info)
            )
            for operation, info in offer.models.items()
        }
        self.offer = dataclasses.replace(offer, models=models)
        return self

    def describe(self) -> str:
        offer = self.offer
        served = ", ".join(
            f"{op} ({offer.models[op].name})"
            for op in sorted(offer.capabilities.operations)
            if op in offer.models
        )
        version = f" {offer.version}" if offer.version else ""
        return f"{self.name}{version} serving {served or 'nothing usable'}"

    def refuse(self, outputs: frozenset[Output], options: EncodeOptions) -> None:
        """Before anything is sent: heads it does not compute are Unavailable (another
        backend may), options its API cannot say are the request's (InvalidInput, why)."""
        served = self.offer.capabilities
        if not outputs <= served.outputs:
            wanted = ", ".join(sorted(outputs - served.outputs))
            raise Unavailable(f"the remote {self.url} ({self.describe()}) cannot compute {wanted}")
        departs = {"normalize": not options.normalize, "truncate_left": options.truncate_left}
        for option, param in _OPTION_PARAMS.items():
            if departs[option] and option not in served.options:
                raise InvalidInput(served.refusals[option], param=param)

    @abstractmethod
    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions,
        deadline: Deadline,
    ) -> Encoding:
        """Called after ``refuse``: ``outputs`` and ``options`` are ones it offers."""

    @abstractmethod
    async def score(self, query: str, documents: Sequence[str], deadline: Deadline) -> Scores:
        """Raw logits, by document."""

    async def token_ids(self, texts: Sequence[str], deadline: Deadline) -> tuple[list[int], ...]:
        raise Unavailable(f"the {self.name} at {self.url} has no tokenizer route")

    async def tokens(
        self, texts: Sequence[str], add_special_tokens: bool, deadline: Deadline
    ) -> tuple[tuple[Token, ...], ...]:
        raise Unavailable(f"the {self.name} at {self.url} has no tokenizer route")

    async def decode(
        self, ids: Sequence[Sequence[int]], skip_special_tokens: bool, deadline: Deadline
    ) -> tuple[str, ...]:
        raise Unavailable(f"the {self.name} at {self.url} has no decode route")
