"""FlagEmbedding's own results on a model folder: what the service must equal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class M3Reference:
    dense: NDArray[np.float32]
    lexical: list[dict[str, float]]
    colbert: list[NDArray[np.float32]]


def m3_reference(folder: Path, texts: Sequence[str], max_length: int = 512) -> M3Reference:
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu")
    out = model.encode(
        list(texts),
        batch_size=7,  # several uneven batches: padding must not change a result
        max_length=max_length,
        return_dense=True,
        return_sparse=True,
        return_colbert_vecs=True,
    )
    return M3Reference(
        dense=np.asarray(out["dense_vecs"], dtype=np.float32),
        lexical=[{k: float(v) for k, v in d.items()} for d in out["lexical_weights"]],
        colbert=[np.asarray(c, dtype=np.float32) for c in out["colbert_vecs"]],
    )


def rerank_reference(folder: Path, query: str, documents: Sequence[str]) -> list[float]:
    from FlagEmbedding import FlagReranker

    reranker = FlagReranker(str(folder), use_fp16=False, devices="cpu")
    scores = reranker.compute_score([[query, doc] for doc in documents], batch_size=5)
    return [float(s) for s in scores]
