"""The native backend: bge-m3 heads and the cross-encoder on local torch.

Model work runs on one dedicated thread per backend: it never blocks the
event loop, and torch's own intra-op threads use the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from backends.device import resolve_device, resolve_dtype
from backends.flag.m3 import M3Encoder
from backends.flag.reranker import CrossEncoder
from backends.model_files import resolve_model_dir
from engine.backend import BackendHealth, Capabilities
from engine.errors import Overloaded, Unavailable
from engine.settings import Settings
from engine.types import Encoding, ModelInfo, Operation, Output, Scores

__all__ = ["FlagBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Texts per forward pass, on top of the MAX_BATCH_TOKENS budget.
_MAX_BATCH_ITEMS = 256


class FlagBackend:
    def __init__(self, settings: Settings, operations: frozenset[Operation]) -> None:
        self._settings = settings
        self._device = resolve_device(settings.device)
        embeds = bool(operations & {Operation.EMBED, Operation.SPARSE})
        self._capabilities = Capabilities(
            operations=operations,
            outputs=frozenset(Output)
            if Operation.SPARSE in operations
            else frozenset({Output.DENSE}),
            embedding_model=settings.embedding_model_name if embeds else None,
            reranker_model=settings.reranker_model_name if Operation.RERANK in operations else None,
            max_batch_size=settings.max_batch_size,
        )
        self._m3: M3Encoder | None = None
        self._reranker: CrossEncoder | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flag-model")

    @property
    def name(self) -> str:
        return "flag"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def load(self) -> None:
        settings = self._settings
        dtype = resolve_dtype(self._device, settings.use_fp16)
        caps = self._capabilities
        if caps.embedding_model is not None:
            folder = resolve_model_dir(caps.embedding_model, "EMBEDDING_MODEL_NAME")
            log.info(
                "loading %s from %s on %s (%s)", caps.embedding_model, folder, self._device, dtype
            )
            self._m3 = M3Encoder(
                caps.embedding_model,
                folder,
                device=self._device,
                dtype=dtype,
                max_input_tokens=settings.max_input_tokens,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_items=_MAX_BATCH_ITEMS,
                need_sparse_heads=Operation.SPARSE in caps.operations,
            )
        if caps.reranker_model is not None:
            folder = resolve_model_dir(caps.reranker_model, "RERANKER_MODEL_NAME")
            log.info(
                "loading %s from %s on %s (%s)", caps.reranker_model, folder, self._device, dtype
            )
            self._reranker = CrossEncoder(
                caps.reranker_model,
                folder,
                device=self._device,
                dtype=dtype,
                max_pair_tokens=settings.reranker_max_tokens,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_items=_MAX_BATCH_ITEMS,
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def health(self) -> BackendHealth:
        caps = self._capabilities
        loaded = (caps.embedding_model is None or self._m3 is not None) and (
            caps.reranker_model is None or self._reranker is not None
        )
        return BackendHealth(loaded=loaded, healthy=True, device=self._device)

    def model_info(self, operation: Operation) -> ModelInfo:
        if operation is Operation.RERANK:
            return self._require_reranker().info
        return self._require_m3().info

    async def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        m3 = self._require_m3()
        return await self._run(m3.encode, list(texts), outputs)

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        reranker = self._require_reranker()
        return await self._run(reranker.score, query, list(documents))

    async def tokenize(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        m3 = self._require_m3()
        rows = await self._run(functools.partial(m3.tokenize, truncate=False), list(texts))
        return tuple(rows)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        with _gpu_memory_as_overload():
            return await loop.run_in_executor(self._executor, fn, *args)

    def _require_m3(self) -> M3Encoder:
        if self._m3 is None:
            raise Unavailable("the embedding model is not loaded")
        return self._m3

    def _require_reranker(self) -> CrossEncoder:
        if self._reranker is None:
            raise Unavailable("the reranker model is not loaded")
        return self._reranker


@contextlib.contextmanager
def _gpu_memory_as_overload() -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise Overloaded(
            "the GPU ran out of memory on this batch; retry later or send fewer or shorter "
            "texts (MAX_BATCH_TOKENS bounds a forward pass)",
            retry_after=1,
        ) from exc
