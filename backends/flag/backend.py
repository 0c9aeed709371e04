"""The native backend: bge-m3 heads and the cross-encoder on local torch.

Requests reach the models through the engine's micro-batchers (one per model),
so concurrent requests share forward passes. Model work runs on dedicated
threads (MODEL_WORKERS) and tokenisation on another: none blocks the event
loop, and a fast tokenizer is never used from two threads at once (it is not
safe to).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from backends.device import dtype_name, resolve_device, resolve_dtype
from backends.fingerprint import folder_fingerprint, keys_are_shared
from backends.flag.m3 import M3Ask, M3Encoder, M3Row
from backends.flag.reranker import CrossEncoder
from backends.flag.threads import FirstFreeThreads
from backends.model_files import resolve_model_dir
from backends.tokens import chunks, decode_ids, tokens_of
from engine.backend import BackendHealth, Capabilities
from engine.batching import MicroBatcher, Unit
from engine.errors import Overloaded, Unavailable
from engine.settings import Settings
from engine.telemetry import SizeHistogram
from engine.types import (
    DEFAULT_OPTIONS,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Operation,
    Output,
    Scores,
    Token,
)

__all__ = ["FlagBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

# Texts per forward pass, on top of the MAX_BATCH_TOKENS budget.
_MAX_BATCH_ITEMS = 256


class FlagBackend:
    def __init__(self, settings: Settings, operations: frozenset[Operation]) -> None:
        self._settings = settings
        self._device = resolve_device(settings.device)
        self._dtype = resolve_dtype(self._device, settings.model_dtype)
        embeds = bool(operations & {Operation.EMBED, Operation.LEXICAL_COLBERT})
        self._capabilities = Capabilities(
            operations=operations,
            outputs=frozenset(Output)
            if Operation.LEXICAL_COLBERT in operations
            else frozenset({Output.DENSE}),
            embedding_model=settings.embedding_model_name if embeds else None,
            reranker_model=settings.reranker_model_name if Operation.RERANK in operations else None,
            max_batch_size=settings.max_batch_size,
            options=frozenset({"normalize", "truncate_left", "colbert_max_tokens"}),
        )
        self._m3: M3Encoder | None = None
        self._reranker: CrossEncoder | None = None
        self._m3_batcher: MicroBatcher[M3Ask, M3Row] | None = None
        self._rerank_batcher: MicroBatcher[list[int], float] | None = None
        self._workers = model_workers(settings.model_workers, self._device)
        self._model_thread = FirstFreeThreads(self._workers, thread_name_prefix="flag-model")
        self._passes = 0
        self._passes_lock = threading.Lock()
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flag-tok")

    @property
    def name(self) -> str:
        return "flag"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._model_thread, self._load)
        if self._m3 is not None:
            self._m3_batcher = self._batcher("embed", self._m3.run_batch)
        if self._reranker is not None:
            self._rerank_batcher = self._batcher("rerank", self._reranker.run_batch)

    def _batcher(self, name: str, run: Callable[[list[P]], list[R]]) -> MicroBatcher[P, R]:
        settings = self._settings
        batcher: MicroBatcher[P, R] = MicroBatcher(
            f"flag-{name}",
            functools.partial(self._run_pass, run),
            executor=self._model_thread,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_items=_MAX_BATCH_ITEMS,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queued_requests=settings.max_queued_requests,
            workers=self._workers,
        )
        batcher.start()
        return batcher

    def _run_pass(self, run: Callable[[list[P]], list[R]], items: list[P]) -> list[R]:
        """One forward pass on a model thread.

        On a CPU with two passes at once, each gets half the cores; a pass alone gets
        them all, so a lone request is as fast as with one worker. torch (OpenMP)
        keeps the thread count per calling thread.
        """
        with self._passes_lock:
            self._passes += 1
            alone = self._passes == 1
        try:
            if self._device == "cpu" and self._workers > 1:
                cores = os.cpu_count() or 1
                torch.set_num_threads(cores if alone else max(1, cores // self._workers))
            return _as_overload_on_gpu_oom(run, items)
        finally:
            with self._passes_lock:
                self._passes -= 1

    def _load(self) -> None:
        settings = self._settings
        dtype = self._dtype
        caps = self._capabilities
        if caps.embedding_model is not None:
            folder = resolve_model_dir(
                caps.embedding_model, "EMBEDDING_MODEL_NAME", settings.models_dir
            )
            log.info(
                "flag: loading %s from %s on %s (%s)",
                caps.embedding_model,
                folder,
                self._device,
                dtype,
            )
            # Hashed on a thread of its own while the weights load (each file is read from
            # disk once, the other reader finds it in the page cache).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flag-hash") as hashing:
                fingerprint = (
                    hashing.submit(
                        folder_fingerprint, folder, backend="flag", dtype=dtype_name(dtype)
                    )
                    if keys_are_shared(settings)
                    else None
                )
                m3 = self._m3 = M3Encoder(
                    caps.embedding_model,
                    folder,
                    device=self._device,
                    dtype=dtype,
                    max_input_tokens=settings.max_input_tokens,
                    max_batch_tokens=settings.max_batch_tokens,
                    max_batch_items=_MAX_BATCH_ITEMS,
                    need_sparse_heads=Operation.LEXICAL_COLBERT in caps.operations,
                    compile_model=settings.torch_compile,
                    packed=settings.packed_passes,
                )
                if fingerprint is not None:
                    m3.info = dataclasses.replace(m3.info, fingerprint=fingerprint.result())
            log.info(
                "flag: %s dense vectors: %s%s",
                caps.embedding_model,
                m3.pipeline.describe(),
                f"; cache fingerprint {m3.info.fingerprint:.12}" if m3.info.fingerprint else "",
            )
        if caps.reranker_model is not None:
            folder = resolve_model_dir(
                caps.reranker_model, "RERANKER_MODEL_NAME", settings.models_dir
            )
            log.info(
                "flag: loading %s from %s on %s (%s)",
                caps.reranker_model,
                folder,
                self._device,
                dtype,
            )
            self._reranker = CrossEncoder(
                caps.reranker_model,
                folder,
                device=self._device,
                dtype=dtype,
                max_pair_tokens=settings.reranker_max_tokens,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_items=_MAX_BATCH_ITEMS,
                compile_model=settings.torch_compile,
                packed=settings.packed_passes,
            )

    async def stop(self) -> None:
        for batcher in (self._m3_batcher, self._rerank_batcher):
            if batcher is not None:
                await batcher.stop()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    def health(self) -> BackendHealth:
        caps = self._capabilities
        loaded = (caps.embedding_model is None or self._m3_batcher is not None) and (
            caps.reranker_model is None or self._rerank_batcher is not None
        )
        stats: dict[str, int] = {}
        sizes: dict[str, SizeHistogram] = {}
        for name, batcher in (("embed", self._m3_batcher), ("rerank", self._rerank_batcher)):
            if batcher is not None:
                for key, value in dataclasses.asdict(batcher.stats).items():
                    stats[f"{name}.{key}"] = value
                sizes[name] = batcher.batch_sizes
        return BackendHealth(
            loaded=loaded,
            healthy=True,
            device=self._device,
            dtype=dtype_name(self._dtype),
            stats=stats,
            batch_sizes=sizes,
        )

    def model_info(self, operation: Operation) -> ModelInfo:
        if operation is Operation.RERANK:
            return self._require(self._reranker, "reranker").info
        return self._require(self._m3, "embedding").info

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        m3 = self._require(self._m3, "embedding")
        batcher = self._require(self._m3_batcher, "embedding")
        tokenize = functools.partial(m3.tokenize, truncate=True, from_left=options.truncate_left)
        rows = await self._tokenize(tokenize, texts)
        units = [
            Unit(M3Ask(row, outputs, options.normalize, options.colbert_max_tokens), len(row))
            for row in rows
        ]
        results = await batcher.submit(units)
        return m3.assemble(results, outputs, [len(row) for row in rows])

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        reranker = self._require(self._reranker, "reranker")
        batcher = self._require(self._rerank_batcher, "reranker")
        rows = await self._tokenize(functools.partial(reranker.pairs, query), documents)
        logits = await batcher.submit([Unit(row, len(row)) for row in rows])
        return Scores(
            logits=np.asarray(logits, dtype=np.float32), token_count=sum(len(r) for r in rows)
        )

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        m3 = self._require(self._m3, "embedding")
        rows = await self._tokenize(functools.partial(m3.tokenize, truncate=False), texts)
        return tuple(rows)

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool
    ) -> tuple[tuple[Token, ...], ...]:
        m3 = self._require(self._m3, "embedding")
        tokens = functools.partial(tokens_of, m3.tokenizer, add_special_tokens=add_special_tokens)
        return tuple(await self._tokenize(tokens, texts))

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool
    ) -> tuple[str, ...]:
        m3 = self._require(self._m3, "embedding")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenizer_thread, decode_ids, m3.tokenizer, ids, skip_special_tokens
        )

    async def _tokenize(
        self, tokenize: Callable[[Sequence[str]], Sequence[T]], texts: Sequence[str]
    ) -> list[T]:
        """``tokenize`` over ``texts`` in chunks, one tokenizer-thread call each: another
        request's call runs between two of them, not after all of a large request."""
        loop = asyncio.get_running_loop()
        rows: list[T] = []
        for run in chunks(texts):
            rows.extend(await loop.run_in_executor(self._tokenizer_thread, tokenize, texts[run]))
        return rows

    @staticmethod
    def _require(value: T | None, what: str) -> T:
        if value is None:
            raise Unavailable(f"the {what} model is not loaded")
        return value


def model_workers(setting: int | None, device: str) -> int:
    """Forward passes at once: a GPU runs one well; two CPU passes keep 2+ cores busy."""
    if setting is not None:
        return setting
    return 2 if device == "cpu" and (os.cpu_count() or 1) >= 2 else 1


def _as_overload_on_gpu_oom(run: Callable[[list[P]], list[R]], items: list[P]) -> list[R]:
    try:
        return run(items)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise Overloaded(
            "the GPU ran out of memory on this batch; retry later or send fewer or shorter "
            "texts (MAX_BATCH_TOKENS bounds a forward pass)",
            retry_after=1,
        ) from exc
