"""In-process infinity_emb: dense embeddings and rerank scores, batched by infinity itself.

infinity_emb has no bge-m3 sparse or ColBERT output, so this backend declares
only ``embed`` and ``rerank``; the router refuses it in the sparse chain at
start-up. infinity batches on its own; the backend only bounds the requests in
flight (MAX_QUEUED_REQUESTS, engine/admission.py), answering 429 past it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from backends.device import dtype_name, resolve_device, resolve_dtype
from backends.fingerprint import folder_fingerprint, keys_are_shared
from backends.flag.limits import model_max_tokens
from backends.model_files import resolve_model_dir
from backends.pooling import read_pipeline, sentence_max_tokens
from backends.tokens import chunks, cut_for_truncation, decode_ids, tokens_of
from engine.admission import Admission
from engine.backend import BackendHealth, Capabilities
from engine.errors import StartupError, Unavailable
from engine.settings import Settings
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

if TYPE_CHECKING:
    from infinity_emb import AsyncEngineArray

__all__ = ["InfinityBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SERVED = {Operation.EMBED: "embed", Operation.RERANK: "rerank"}


class InfinityBackend:
    def __init__(self, settings: Settings, operations: frozenset[Operation]) -> None:
        self._settings = settings
        self._device = resolve_device(settings.device)
        self._dtype = dtype_name(resolve_dtype(self._device, settings.model_dtype))
        served = operations & set(_SERVED)
        self._capabilities = Capabilities(
            operations=frozenset(served),
            outputs=frozenset({Output.DENSE}),
            embedding_model=settings.embedding_model_name if Operation.EMBED in served else None,
            reranker_model=settings.reranker_model_name if Operation.RERANK in served else None,
            max_batch_size=settings.max_batch_size,
            refusals={
                "normalize": "infinity_emb L2-normalises every vector it returns and has no "
                "option to skip it; serve unnormalised vectors from the flag backend",
                "truncate_left": "infinity_emb (sentence-transformers) always cuts the end of "
                "a long text; serve truncation_direction Left from the flag backend",
            },
        )
        self._array: AsyncEngineArray | None = None
        self._info: dict[Operation, ModelInfo] = {}
        self._tokenizers: dict[Operation, PreTrainedTokenizerBase] = {}
        self._admission = Admission(settings.max_queued_requests, "the infinity backend")
        # One thread: a fast tokenizer must not be used from two threads at once.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inf-tok")

    @property
    def name(self) -> str:
        return "infinity"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        if importlib.util.find_spec("infinity_emb") is None:
            raise StartupError(
                "the infinity backend needs infinity_emb, which pins numpy<2 and "
                "transformers<5 and so cannot install beside this environment's: install the "
                'service in one of its own (pip install -c constraints-infinity.txt ".[infinity]",'
                " as make install builds .venv-infinity), or use the flag backend"
            )
        # infinity_emb reports anonymous usage unless told not to; a service must not phone home.
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")
        folders = {}
        caps = self._capabilities
        if caps.embedding_model is not None:
            folders[Operation.EMBED] = await asyncio.to_thread(
                resolve_model_dir,
                caps.embedding_model,
                "EMBEDDING_MODEL_NAME",
                self._settings.models_dir,
            )
        if caps.reranker_model is not None:
            folders[Operation.RERANK] = await asyncio.to_thread(
                resolve_model_dir,
                caps.reranker_model,
                "RERANKER_MODEL_NAME",
                self._settings.models_dir,
            )
        # Building the array loads the weights: off the event loop, without the progress
        # bars a log of JSON lines must not get.
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        array = await asyncio.to_thread(self._build, folders)
        await array.astart()
        self._array = array
        for operation, folder in folders.items():
            self._tokenizers[operation] = AutoTokenizer.from_pretrained(folder)
            self._info[operation] = await self._model_info(operation, folder)

    def _build(self, folders: dict[Operation, Path]) -> AsyncEngineArray:
        from infinity_emb import AsyncEngineArray, EngineArgs
        from infinity_emb.primitives import Device, Dtype, InferenceEngine

        return AsyncEngineArray.from_args(
            [
                EngineArgs(
                    model_name_or_path=str(folder),
                    served_model_name=_SERVED[operation],
                    engine=InferenceEngine.torch,
                    device=Device.cuda if self._device == "cuda" else Device.cpu,
                    dtype=Dtype(self._dtype),
                    batch_size=self._settings.infinity_batch_size,
                    # Warm-up breaks under transformers 5 and costs start-up time; the
                    # first requests warm the model instead.
                    model_warmup=False,
                    bettertransformer=False,
                )
                for operation, folder in folders.items()
            ]
        )

    async def _model_info(self, operation: Operation, folder: Path) -> ModelInfo:
        tokenizer = self._tokenizers[operation]
        config = AutoConfig.from_pretrained(folder)
        dimension = None
        if operation is Operation.EMBED:
            probe, _ = await self._engine(operation).embed(sentences=["dimension probe"])
            dimension = int(np.asarray(probe[0]).shape[-1])
        name = (
            self._capabilities.embedding_model
            if operation is Operation.EMBED
            else self._capabilities.reranker_model
        )
        limit = model_max_tokens(config, tokenizer, None)
        # sentence-transformers cuts at its own max_seq_length (256 for all-MiniLM-L6-v2).
        cut = sentence_max_tokens(folder) if operation is Operation.EMBED else None
        fingerprint = ""
        # What a shared cache keys by; rerank scores are not cached.
        if operation is Operation.EMBED and keys_are_shared(self._settings):
            fingerprint = await asyncio.to_thread(
                folder_fingerprint, folder, backend="infinity", dtype=self._dtype
            )
        return ModelInfo(
            name=name or str(folder),
            max_tokens=min(limit, cut) if cut is not None else limit,
            vocab_size=len(tokenizer),
            dimension=dimension,
            pooling=_pooling_name(folder) if operation is Operation.EMBED else None,
            fingerprint=fingerprint,
            dtype=self._dtype,
        )

    async def stop(self) -> None:
        if self._array is not None:
            await self._array.astop()
            self._array = None
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    def health(self) -> BackendHealth:
        loaded = self._array is not None and len(self._info) == len(self._capabilities.operations)
        return BackendHealth(
            loaded=loaded,
            healthy=True,
            device=self._device,
            dtype=self._dtype,
            stats={
                "in_flight": self._admission.counts.queued_requests,
                "rejected_requests": self._admission.counts.rejected_requests,
            },
        )

    def model_info(self, operation: Operation) -> ModelInfo:
        info = self._info.get(operation)
        if info is None:
            raise Unavailable(f"the infinity backend has no {operation} model loaded")
        return info

    async def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        if outputs != {Output.DENSE}:
            raise Unavailable("infinity_emb computes dense vectors only")
        if options != DEFAULT_OPTIONS:  # the engine never sends what refusals lists
            raise Unavailable("infinity_emb computes normalised, right-truncated vectors only")
        with self._admission.admit():
            sentences = await self._cut(texts)
            vectors, usage = await self._engine(Operation.EMBED).embed(sentences=sentences)
        dense = np.asarray(vectors, dtype=np.float32)
        # infinity_emb normalises already; again here, so the engine's promise does not
        # rest on another library's default.
        dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
        return Encoding(token_count=int(usage), dense=dense)

    async def score(self, query: str, documents: Sequence[str]) -> Scores:
        with self._admission.admit():
            ranked, usage = await self._engine(Operation.RERANK).rerank(
                query=query, docs=list(documents), raw_scores=True
            )
        logits = np.empty(len(documents), dtype=np.float32)
        for item in ranked:
            logits[item.index] = item.relevance_score
        return Scores(logits=logits, token_count=int(usage))

    async def token_ids(self, texts: Sequence[str]) -> tuple[list[int], ...]:
        def ids(tokenizer: PreTrainedTokenizerBase, run: Sequence[str]) -> list[list[int]]:
            return [list(row) for row in tokenizer(list(run))["input_ids"]]

        return tuple(await self._in_chunks(ids, texts))

    async def tokens(
        self, texts: Sequence[str], *, add_special_tokens: bool
    ) -> tuple[tuple[Token, ...], ...]:
        def tokens(
            tokenizer: PreTrainedTokenizerBase, run: Sequence[str]
        ) -> Sequence[tuple[Token, ...]]:
            return tokens_of(tokenizer, run, add_special_tokens=add_special_tokens)

        return tuple(await self._in_chunks(tokens, texts))

    async def _cut(self, texts: Sequence[str]) -> list[str]:
        """Each text cut, where it is long, to a checked prefix that sentence-transformers
        truncates to the same tokens, so infinity_emb never tokenizes the rest."""
        tokenizer = self._tokenizers.get(Operation.EMBED)
        if tokenizer is None:
            raise Unavailable("the infinity backend has no embedding model loaded")
        keep = self.model_info(Operation.EMBED).max_tokens - tokenizer.num_special_tokens_to_add(
            pair=False
        )

        def cut(tokenizer: PreTrainedTokenizerBase, run: Sequence[str]) -> list[str]:
            return cut_for_truncation(tokenizer, run, keep, from_left=False)

        return await self._in_chunks(cut, texts)

    async def _in_chunks(
        self,
        work: Callable[[PreTrainedTokenizerBase, Sequence[str]], Sequence[T]],
        texts: Sequence[str],
    ) -> list[T]:
        """``work`` over ``texts`` a chunk per tokenizer-thread call, so that a short
        request's call runs between two of a long one's."""
        done: list[T] = []
        for run in chunks(texts):
            done.extend(await self._on_tokenizer_thread(functools.partial(_on, work, texts[run])))
        return done

    async def decode(
        self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool
    ) -> tuple[str, ...]:
        return await self._on_tokenizer_thread(
            lambda tokenizer: decode_ids(tokenizer, ids, skip_special_tokens)
        )

    async def _on_tokenizer_thread(self, work: Callable[[PreTrainedTokenizerBase], T]) -> T:
        tokenizer = self._tokenizers.get(Operation.EMBED)
        if tokenizer is None:
            raise Unavailable("the infinity backend has no embedding model loaded")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, work, tokenizer)

    def _engine(self, operation: Operation) -> Any:
        if self._array is None:
            raise Unavailable("the infinity backend is not started")
        return self._array[_SERVED[operation]]


def _on(
    work: Callable[[PreTrainedTokenizerBase, Sequence[str]], T],
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
) -> T:
    return work(tokenizer, texts)


def _pooling_name(folder: Path) -> str | None:
    """TEI's name of the folder's pooling, for /info; None where the flag backend's reader
    cannot name it (sentence-transformers may still compute it, so it loads here)."""
    try:
        return read_pipeline(folder).pooling.tei_name
    except StartupError:
        return None
