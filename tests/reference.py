"""FlagEmbedding's own results on a model folder: what the service must equal.

FlagEmbedding 1.4.2 does not import under transformers 5 (its decoder-only rerankers import
``transformers.modeling_attn_mask_utils``), so the service's environment (transformers 5)
runs it in the oracle environment, ``.venv-infinity`` (transformers 4.57, where infinity_emb
runs too; ``make install`` builds both): this module calls itself there as
``python -m tests.reference KIND ANSWER_FILE`` with the request on stdin (JSON: float32
values round-trip exactly). Where FlagEmbedding imports, it runs in-process.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "M3Reference",
    "m3_reference",
    "m3_score_reference",
    "oracle_python",
    "rerank_reference",
]

_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class M3Reference:
    dense: NDArray[np.float32]
    lexical: list[dict[str, float]]
    colbert: list[NDArray[np.float32]]


def m3_reference(
    folder: Path, texts: Sequence[str], max_length: int = 512, truncation_side: str = "right"
) -> M3Reference:
    """``BGEM3FlagModel.encode``'s three heads; ``truncation_side="left"`` cuts a long text's
    start, as its tokenizer does when told to."""
    out = _answer(
        "m3",
        {
            "folder": str(folder),
            "texts": list(texts),
            "max_length": max_length,
            "truncation_side": truncation_side,
        },
    )
    return M3Reference(
        dense=np.asarray(out["dense"], dtype=np.float32),
        lexical=[{k: float(v) for k, v in d.items()} for d in out["lexical"]],
        colbert=[np.asarray(c, dtype=np.float32).reshape(-1, out["width"]) for c in out["colbert"]],
    )


def rerank_reference(folder: Path, query: str, documents: Sequence[str]) -> list[float]:
    """``FlagReranker.compute_score``'s raw logits."""
    out = _answer("rerank", {"folder": str(folder), "query": query, "documents": list(documents)})
    return [float(s) for s in out["scores"]]


def m3_score_reference(
    folder: Path,
    pairs: Sequence[tuple[str, str]],
    weight_sets: Sequence[Sequence[float] | None],
) -> list[dict[str, list[float]]]:
    """``BGEM3FlagModel.compute_score`` of (query, document) pairs, once per weight set
    (None: its own default), each answer its five lists keyed as it keys them. One pair a
    batch: batched, its ColBERT maximum also sees a shorter document's padding (zero
    vectors, a candidate 0), which one pair and ``colbert_score`` never do
    (``engine/m3_score.py``)."""
    out = _answer(
        "m3-score",
        {
            "folder": str(folder),
            "pairs": [list(pair) for pair in pairs],
            "weight_sets": [None if w is None else list(w) for w in weight_sets],
        },
    )
    return [
        # JSON writes NaN (its 0 / 0 where the dense and sparse weights are both 0) as null.
        {
            mode: [math.nan if s is None else float(s) for s in scores]
            for mode, scores in answer.items()
        }
        for answer in out["answers"]
    ]


def oracle_python() -> Path:
    """The interpreter that runs FlagEmbedding: ``BGE_ORACLE_PYTHON``, else the oracle venv."""
    return Path(os.environ.get("BGE_ORACLE_PYTHON", _ROOT / ".venv-infinity" / "bin" / "python"))


def _answer(kind: str, request: dict[str, Any]) -> dict[str, Any]:
    if _flagembedding_imports():
        return _compute(kind, request)
    python = oracle_python()
    if not python.exists():
        raise RuntimeError(
            f"FlagEmbedding does not import here and {python} is missing: `make install` "
            "builds the oracle environment (.venv-infinity)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        # A file, not stdout: FlagEmbedding and its libraries may print.
        answer_file = Path(tmp) / "answer.json"
        done = subprocess.run(
            [str(python), "-m", "tests.reference", kind, str(answer_file)],
            input=msgspec.json.encode(request),
            capture_output=True,
            cwd=_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the FlagEmbedding oracle failed:\n{done.stderr.decode()[-3000:]}")
        answer: dict[str, Any] = msgspec.json.decode(answer_file.read_bytes())
    return answer


def _flagembedding_imports() -> bool:
    try:
        import FlagEmbedding  # noqa: F401
    except ImportError:
        return False
    return True


def _compute(kind: str, request: dict[str, Any]) -> dict[str, Any]:
    if kind == "rerank":
        from FlagEmbedding import FlagReranker

        reranker = FlagReranker(request["folder"], use_fp16=False, devices="cpu")
        pairs = [[request["query"], doc] for doc in request["documents"]]
        scores = reranker.compute_score(pairs, batch_size=5)
        return {"scores": [float(s) for s in scores]}
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(request["folder"], use_fp16=False, devices="cpu")
    if kind == "m3-score":
        scored = [(query, passage) for query, passage in request["pairs"]]
        answers = [
            model.compute_score(scored, batch_size=1, weights_for_different_modes=weights)
            for weights in request["weight_sets"]
        ]
        return {
            "answers": [
                {mode: [float(s) for s in v] for mode, v in answer.items()} for answer in answers
            ]
        }
    model.tokenizer.truncation_side = request["truncation_side"]
    out = model.encode(
        request["texts"],
        batch_size=7,  # several uneven batches: padding must not change a result
        max_length=request["max_length"],
        return_dense=True,
        return_sparse=True,
        return_colbert_vecs=True,
    )
    colbert = [np.asarray(c, dtype=np.float32) for c in out["colbert_vecs"]]
    return {
        "dense": np.asarray(out["dense_vecs"], dtype=np.float32).tolist(),
        "lexical": [{k: float(v) for k, v in d.items()} for d in out["lexical_weights"]],
        "colbert": [c.ravel().tolist() for c in colbert],
        "width": int(colbert[0].shape[1]) if colbert else 0,
    }


if __name__ == "__main__":
    Path(sys.argv[2]).write_bytes(
        msgspec.json.encode(_compute(sys.argv[1], msgspec.json.decode(sys.stdin.buffer.read())))
    )
