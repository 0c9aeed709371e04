"""bge-m3's three heads over one transformer pass, computed the way FlagEmbedding does.

Same folder, same numbers as ``BGEM3FlagModel.encode`` (the tests assert it):
- dense: the CLS hidden state, L2-normalised;
- sparse: ``relu(sparse_linear(h))`` per token, the max weight per token id,
  special tokens (cls, eos, pad, unk) left out, weights > 0 only;
- ColBERT: ``colbert_linear`` on every token after CLS (eos included, padding
  not), each vector L2-normalised.
Doing it here rather than through ``encode()`` skips FlagEmbedding's per-call
model moves and progress bars, and lets one pass return any subset of heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from backends.flag.batches import length_sorted_batches, pad
from backends.flag.limits import model_max_tokens
from engine.errors import StartupError
from engine.types import ColbertMatrix, Encoding, ModelInfo, Output, TokenWeights

__all__ = ["M3Encoder"]

T = TypeVar("T")


class M3Encoder:
    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        device: str,
        dtype: torch.dtype,
        max_input_tokens: int | None,
        max_batch_tokens: int,
        max_batch_items: int,
        need_sparse_heads: bool,
    ) -> None:
        self._device = device
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_items = max_batch_items
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)  # type: ignore[no-untyped-call]
        self.model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()
        hidden = int(self.model.config.hidden_size)
        self.max_tokens = model_max_tokens(self.model.config, self.tokenizer, max_input_tokens)
        self.info = ModelInfo(
            name=name, max_tokens=self.max_tokens, vocab_size=len(self.tokenizer), dimension=hidden
        )
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._special_ids = np.array(
            sorted(
                {
                    token_id
                    for token_id in (
                        self.tokenizer.cls_token_id,
                        self.tokenizer.eos_token_id,
                        self.tokenizer.pad_token_id,
                        self.tokenizer.unk_token_id,
                    )
                    if token_id is not None
                }
            ),
            dtype=np.int64,
        )
        self.sparse_linear: torch.nn.Linear | None = None
        self.colbert_linear: torch.nn.Linear | None = None
        if need_sparse_heads:
            self.sparse_linear = _load_head(folder / "sparse_linear.pt", dtype, device)
            self.colbert_linear = _load_head(folder / "colbert_linear.pt", dtype, device)
            if (
                self.sparse_linear.in_features != hidden
                or self.colbert_linear.in_features != hidden
            ):
                raise StartupError(f"{folder}: the sparse/ColBERT heads do not fit the encoder")

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[list[int]]:
        encoded = self.tokenizer(
            list(texts), truncation=truncate, max_length=self.max_tokens if truncate else None
        )
        return [list(ids) for ids in encoded["input_ids"]]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], outputs: frozenset[Output]) -> Encoding:
        rows = self.tokenize(texts, truncate=True)
        n = len(rows)
        dense = np.empty((n, self.info.dimension or 0), dtype=np.float32)
        lexical: list[TokenWeights | None] = [None] * n
        colbert: list[ColbertMatrix | None] = [None] * n
        lengths = [len(row) for row in rows]
        for batch in length_sorted_batches(lengths, self._max_batch_tokens, self._max_batch_items):
            ids, mask = pad([rows[i] for i in batch], self._pad_id, self._device)
            hidden = self.model(
                input_ids=ids, attention_mask=mask, return_dict=True
            ).last_hidden_state
            if Output.DENSE in outputs:
                dense[batch] = F.normalize(hidden[:, 0], dim=-1).float().cpu().numpy()
            if Output.SPARSE in outputs:
                assert self.sparse_linear is not None
                weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float().cpu().numpy()
                ids_np = ids.cpu().numpy()
                for row, position in enumerate(batch):
                    length = lengths[position]
                    lexical[position] = self._token_weights(
                        ids_np[row, :length], weights[row, :length]
                    )
            if Output.COLBERT in outputs:
                assert self.colbert_linear is not None
                vectors = self.colbert_linear(hidden[:, 1:]) * mask[:, 1:, None].to(hidden.dtype)
                vectors = F.normalize(vectors, dim=-1).float().cpu().numpy()
                for row, position in enumerate(batch):
                    colbert[position] = vectors[row, : lengths[position] - 1]
        return Encoding(
            token_counts=tuple(lengths),
            dense=dense if Output.DENSE in outputs else None,
            lexical=_complete(lexical) if Output.SPARSE in outputs else None,
            colbert=_complete(colbert) if Output.COLBERT in outputs else None,
        )

    def _token_weights(self, ids: NDArray[np.int64], weights: NDArray[np.float32]) -> TokenWeights:
        keep = (weights > 0) & ~np.isin(ids, self._special_ids)
        unique, inverse = np.unique(ids[keep], return_inverse=True)
        best = np.zeros(unique.shape[0], dtype=np.float32)
        np.maximum.at(best, inverse, weights[keep].astype(np.float32))
        return TokenWeights(token_ids=unique.astype(np.int64), weights=best)


def _complete(items: list[T | None]) -> tuple[T, ...]:
    """Every position filled: a partial answer is a bug, never something to return."""
    if any(item is None for item in items):
        raise RuntimeError("a text was left out of every forward pass")
    return tuple(item for item in items if item is not None)


def _load_head(path: Path, dtype: torch.dtype, device: str) -> torch.nn.Linear:
    if not path.is_file():
        raise StartupError(
            f"{path.parent} has no {path.name}: sparse and ColBERT vectors need a bge-m3 "
            "folder with colbert_linear.pt and sparse_linear.pt"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    out_features, in_features = state["weight"].shape
    head = torch.nn.Linear(in_features, out_features)
    head.load_state_dict(state)
    return head.to(device=device, dtype=dtype).eval()
