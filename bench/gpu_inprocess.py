"""In-process rows: this project's flag classes (M3Encoder, CrossEncoder) and
sentence-transformers in one process, same folder, same texts, each dtype.

``call`` rows time whole calls (tokenisation included: ``M3Encoder.encode``,
``SentenceTransformer.encode``); ``passes`` rows time the forward passes alone
(``run_batch`` over texts tokenised and grouped beforehand), which is what the fraction of
the GPU's peak is about. Each is the median of repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.gpu_plan import (
    BATCH_TOKENS,
    PEAK_TFLOPS,
    TINY,
    Profile,
    Workload,
    flops,
    model_folders,
    release,
    synchronize,
    torch_dtype,
    workloads,
)
from bench.gpu_record import Part, Row


def timed(fn: Callable[[], object], profile: Profile) -> tuple[float, int]:
    """Median seconds of ``fn`` after one warm-up call, and the repeats taken."""
    device = profile.device
    fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < profile.min_reps or (
        time.perf_counter() - start < profile.min_s and len(times) < profile.max_reps
    ):
        begin = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return statistics.median(times), len(times)


def fill(row: Row, seconds: float, reps: int, workload: Workload, profile: Profile) -> None:
    row.texts = len(workload.texts)
    row.tokens = sum(workload.lengths)
    row.seconds = seconds
    row.reps = reps
    row.texts_per_s = row.texts / seconds
    row.tokens_per_s = row.tokens / seconds
    row.tflop_per_s = flops(workload.lengths, profile.shape, row.op) / seconds / 1e12
    row.peak_fraction = row.tflop_per_s / PEAK_TFLOPS


@contextlib.contextmanager
def gpu_memory(row: Row, device: str) -> Iterator[None]:
    """Peak memory the measurement allocated (weights included) and the weights alone."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    row.weights_gpu_mib = torch.cuda.memory_allocated() / 2**20
    yield
    row.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20


def inprocess(args: argparse.Namespace, profile: Profile, part: Part) -> None:
    from engine.types import Output

    folders = model_folders(args.work)
    loads = workloads(profile.shape, profile)
    mixed, fixed = loads["mixed 16-512"], loads["64 x 256"]
    long = next(w for name, w in loads.items() if name.startswith("long"))
    rerank_mixed, rerank_fixed = loads["rerank mixed 16-496"], loads["rerank 64 x 256"]
    hybrid = frozenset({Output.DENSE, Output.LEXICAL, Output.COLBERT})
    dense = frozenset({Output.DENSE})
    # The GPU's first figures first: the forward-pass rate at the target's shape.
    need = 0.0 if profile is TINY else 8.0
    for dtype in args.dtypes:
        m3 = loaded(
            part, Row("load", "call", "-", "dense", dtype), need, flag_m3, folders["m3"], profile
        )
        if m3 is not None:
            for workload, op, outputs in (
                (fixed, "dense", dense),
                (fixed, "hybrid", hybrid),
                (mixed, "dense", dense),
                (long, "dense", dense),
            ):
                row = Row("flag M3Encoder.run_batch", "passes", workload.name, op, dtype)
                if not part.skipped(row, need):
                    with part.measuring(row), gpu_memory(row, profile.device):
                        seconds, reps = timed(m3_passes(m3, workload, outputs), profile)
                        fill(row, seconds, reps, workload, profile)
            for workload, op, outputs in (
                (mixed, "dense", dense),
                (mixed, "hybrid", hybrid),
                (long, "dense", dense),
            ):
                row = Row("flag M3Encoder.encode", "call", workload.name, op, dtype)
                if not part.skipped(row, need):
                    with part.measuring(row), gpu_memory(row, profile.device):
                        call = functools.partial(m3.encode, workload.texts, outputs)
                        seconds, reps = timed(call, profile)
                        fill(row, seconds, reps, workload, profile)
            del m3
            release(profile.device)
        reranker = loaded(
            part,
            Row("load", "call", "-", "rerank", dtype),
            need,
            flag_reranker,
            folders["reranker"],
            profile,
        )
        if reranker is not None:
            row = Row("flag CrossEncoder.run_batch", "passes", rerank_fixed.name, "rerank", dtype)
            if not part.skipped(row, need):
                with part.measuring(row), gpu_memory(row, profile.device):
                    seconds, reps = timed(rerank_passes(reranker, rerank_fixed), profile)
                    fill(row, seconds, reps, rerank_fixed, profile)
            row = Row("flag CrossEncoder.score", "call", rerank_mixed.name, "rerank", dtype)
            if not part.skipped(row, need):
                with part.measuring(row), gpu_memory(row, profile.device):
                    call = functools.partial(
                        reranker.score, rerank_mixed.query or "", rerank_mixed.texts
                    )
                    seconds, reps = timed(call, profile)
                    fill(row, seconds, reps, rerank_mixed, profile)
            del reranker
            release(profile.device)
        sentence_transformers_rows(
            folders, profile, dtype, (fixed, mixed, long), rerank_mixed, part
        )


def loaded(
    part: Part,
    row: Row,
    need: float,
    load: Callable[[Path, Profile, str], Any],
    folder: Path,
    profile: Profile,
) -> Any:
    """``load(folder, profile, dtype)``, recorded as a row; None when it failed or was skipped."""
    if part.skipped(row, need):
        return None
    model = None
    with part.measuring(row):
        begin = time.monotonic()
        model = load(folder, profile, row.dtype)
        row.seconds = time.monotonic() - begin
        row.note = f"{getattr(load, '__name__', 'load')} loaded {folder.name}"
    return model


def flag_m3(folder: Path, profile: Profile, dtype: str) -> Any:
    from backends.flag.m3 import M3Encoder

    return M3Encoder(
        "bge-m3-shape",
        folder,
        device=profile.device,
        dtype=torch_dtype(dtype),
        max_input_tokens=None,
        max_batch_tokens=BATCH_TOKENS,
        max_batch_items=256,
        need_sparse_heads=True,
    )


def flag_reranker(folder: Path, profile: Profile, dtype: str) -> Any:
    from backends.flag.reranker import CrossEncoder

    return CrossEncoder(
        "bge-reranker-shape",
        folder,
        device=profile.device,
        dtype=torch_dtype(dtype),
        max_pair_tokens=512,
        max_batch_tokens=BATCH_TOKENS,
        max_batch_items=256,
    )


def m3_passes(m3: Any, workload: Workload, outputs: frozenset[Any]) -> Callable[[], None]:
    """The forward passes of ``encode`` alone: texts tokenised and grouped beforehand."""
    from backends.flag.batches import length_sorted_batches
    from backends.flag.m3 import M3Ask

    rows = m3.tokenize(workload.texts, truncate=True)
    if [len(r) for r in rows] != workload.lengths:
        raise RuntimeError("the tokenizer's counts differ from the workload's")
    batches = length_sorted_batches([len(r) for r in rows], BATCH_TOKENS, 256)
    asks = [[M3Ask(rows[i], outputs) for i in batch] for batch in batches]

    def run() -> None:
        for batch in asks:
            m3.run_batch(batch)

    return run


def rerank_passes(reranker: Any, workload: Workload) -> Callable[[], None]:
    from backends.flag.batches import length_sorted_batches

    rows = reranker.pairs(workload.query or "", workload.texts)
    if [len(r) for r in rows] != workload.lengths:
        raise RuntimeError("the tokenizer's pair counts differ from the workload's")
    batches = length_sorted_batches([len(r) for r in rows], BATCH_TOKENS, 256)
    groups = [[rows[i] for i in batch] for batch in batches]

    def run() -> None:
        for group in groups:
            reranker.run_batch(group)

    return run


def st_batch(workload: Workload) -> int:
    """The texts per sentence-transformers batch that hold flag's padded-token budget."""
    return max(1, min(len(workload.texts), BATCH_TOKENS // max(workload.lengths)))


def sentence_transformers_rows(
    folders: dict[str, Path],
    profile: Profile,
    dtype: str,
    embeds: Sequence[Workload],
    rerank: Workload,
    part: Part,
) -> None:
    need = 0.0 if profile is TINY else 8.0
    system = "sentence-transformers"
    model = loaded(
        part, Row("load", "call", "-", "dense", dtype), need, st_model, folders["m3"], profile
    )
    if model is not None:
        for workload in embeds:
            row = Row(f"{system} encode", "call", workload.name, "dense", dtype)
            if not part.skipped(row, need):
                with part.measuring(row), gpu_memory(row, profile.device):
                    batch = st_batch(workload)
                    row.note = f"batch_size={batch}"
                    call = functools.partial(
                        model.encode,
                        workload.texts,
                        batch_size=batch,
                        show_progress_bar=False,
                        convert_to_numpy=True,
                    )
                    seconds, reps = timed(call, profile)
                    fill(row, seconds, reps, workload, profile)
        del model
        release(profile.device)
    cross = loaded(
        part,
        Row("load", "call", "-", "rerank", dtype),
        need,
        st_cross_encoder,
        folders["reranker"],
        profile,
    )
    if cross is not None:
        row = Row(f"{system} CrossEncoder.predict", "call", rerank.name, "rerank", dtype)
        if not part.skipped(row, need):
            with part.measuring(row), gpu_memory(row, profile.device):
                batch = st_batch(rerank)
                row.note = f"batch_size={batch}"
                pairs = [(rerank.query or "", doc) for doc in rerank.texts]
                call = functools.partial(
                    cross.predict, pairs, batch_size=batch, show_progress_bar=False
                )
                seconds, reps = timed(call, profile)
                fill(row, seconds, reps, rerank, profile)
        del cross
        release(profile.device)


def st_model(folder: Path, profile: Profile, dtype: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=profile.device)
    model.to(torch_dtype(dtype))
    return model


def st_cross_encoder(folder: Path, profile: Profile, dtype: str) -> Any:
    import torch
    from sentence_transformers import CrossEncoder

    device = profile.device

    try:
        cross = CrossEncoder(str(folder), num_labels=1, max_length=512, device=device)
    except TypeError:  # a later release that renamed the arguments
        cross = CrossEncoder(str(folder), device=device)
        cross.max_length = 512
    module = cross if isinstance(cross, torch.nn.Module) else cross.model
    module.to(torch_dtype(dtype))
    return cross
