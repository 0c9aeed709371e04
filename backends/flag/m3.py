"""bge-m3's three heads over one transformer pass, computed the way FlagEmbedding does.

Same folder, same numbers as ``BGEM3FlagModel.encode`` (the tests assert it):
- dense: the CLS hidden state, L2-normalised; for another folder, the pooling its
  ``modules.json`` names (CLS, mean or last token, as sentence-transformers computes
  it; ``backends.pooling``), L2-normalised unless a request asks for the pooled vector;
- sparse: ``relu(sparse_linear(h))`` per token, the max weight per token id,
  special tokens (cls, eos, pad, unk) left out, weights > 0 only;
- ColBERT: ``colbert_linear`` on every token after CLS (eos included, padding
  not), each vector L2-normalised; a request's ``colbert_max_tokens`` keeps only the
  rows of largest norm before normalising, in their order.
Doing it here rather than through ``encode()`` skips FlagEmbedding's per-call
model moves and progress bars, and lets one pass return any subset of heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from backends.device import dtype_name
from backends.flag.batches import length_sorted_batches, pad
from backends.flag.limits import model_max_tokens
from backends.flag.loading import load_model, runs_packed
from backends.flag.packing import Packing, pack, packed_hidden
from backends.flag.transfer import to_host
from backends.pooling import Pooling, read_pipeline
from backends.tokens import cut_for_truncation
from engine.errors import StartupError
from engine.types import (
    DEFAULT_OPTIONS,
    ColbertMatrix,
    EncodeOptions,
    Encoding,
    ModelInfo,
    Output,
    TokenWeights,
)

__all__ = ["M3Ask", "M3Encoder", "M3Row"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class M3Ask:
    """One text's token ids and what it wants from a forward pass."""

    ids: list[int]
    outputs: frozenset[Output]
    normalize: bool = True  # False: the dense vector as pooled
    colbert_max_tokens: int | None = None  # ColBERT rows kept: the k of largest raw norm


@dataclass(frozen=True, slots=True)
class M3Row:
    """One text's heads from a forward pass; heads it did not ask for are None."""

    dense: NDArray[np.float32] | None
    lexical: TokenWeights | None
    colbert: ColbertMatrix | None


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
        compile_model: bool = False,
        packed: bool = False,
    ) -> None:
        self._device = device
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_items = max_batch_items
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
        self.model = load_model(
            AutoModel,
            folder,
            device=device,
            dtype=dtype,
            compile_model=compile_model,
            packed=packed,
        )
        self._packed = runs_packed(self.model)
        self.pipeline = read_pipeline(folder)
        hidden = int(self.model.config.hidden_size)
        self.max_tokens = model_max_tokens(self.model.config, self.tokenizer, max_input_tokens)
        if self.pipeline.max_seq_length is not None:
            # The limit sentence-transformers and TEI cut at (256 for all-MiniLM-L6-v2).
            self.max_tokens = min(self.max_tokens, self.pipeline.max_seq_length)
        self.info = ModelInfo(
            name=name,
            max_tokens=self.max_tokens,
            vocab_size=len(self.tokenizer),
            dimension=hidden,
            pooling=self.pipeline.pooling.tei_name,
            dtype=dtype_name(dtype),
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

    def tokenize(
        self, texts: Sequence[str], *, truncate: bool, from_left: bool = False
    ) -> list[list[int]]:
        """Token ids with special tokens; ``from_left`` cuts a long text's start (its
        special tokens stay). Truncating, a long text is cut to a checked prefix first, so
        the tokens past the limit are never made. Not thread-safe: the caller keeps the
        tokenizer to one thread."""
        tokenizer = self.tokenizer
        if truncate:
            keep = self.max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
            texts = cut_for_truncation(tokenizer, texts, keep, from_left=from_left)
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left" if from_left else "right"
        try:
            encoded = tokenizer(
                list(texts), truncation=truncate, max_length=self.max_tokens if truncate else None
            )
        finally:
            tokenizer.truncation_side = side
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(
        self,
        texts: Sequence[str],
        outputs: frozenset[Output],
        options: EncodeOptions = DEFAULT_OPTIONS,
    ) -> Encoding:
        """All of ``texts`` at once, batched by length here (no micro-batcher)."""
        rows = self.tokenize(texts, truncate=True, from_left=options.truncate_left)
        results: list[M3Row | None] = [None] * len(rows)
        lengths = [len(row) for row in rows]
        for batch in length_sorted_batches(lengths, self._max_batch_tokens, self._max_batch_items):
            asks = [
                M3Ask(rows[i], outputs, options.normalize, options.colbert_max_tokens)
                for i in batch
            ]
            for position, result in zip(batch, self.run_batch(asks), strict=True):
                results[position] = result
        return self.assemble(_complete(results), outputs, lengths)

    @torch.inference_mode()
    def run_batch(self, items: Sequence[M3Ask]) -> list[M3Row]:
        """One forward pass over token-id rows; each row gets the heads it asked for."""
        wanted = frozenset().union(*(item.outputs for item in items))
        rows = [item.ids for item in items]
        # Where row i's tokens lie along the token heads' first two axes: (i, 0) in a
        # padded pass's (rows, width), (0, offset) in a packed pass's (1, tokens).
        starts: list[tuple[int, int]]
        states: torch.Tensor | None = None
        if self._packed:
            packing = pack(rows, self.model.config, self._device)
            hidden = packed_hidden(self.model, packing)[None]
            if Output.DENSE in wanted:
                states = pool_packed(hidden[0], packing, self.pipeline.pooling)
            starts = [(0, offset) for offset in packing.offsets]
            token_mask = None
        else:
            ids, token_mask = pad(rows, self._pad_id, self._device)
            hidden = self.model(
                input_ids=ids, attention_mask=token_mask, return_dict=True
            ).last_hidden_state
            if Output.DENSE in wanted:
                states = pool(hidden, token_mask, self.pipeline.pooling)
            starts = [(row, 0) for row in range(len(rows))]
        # dense, pooled, weights, colbert, and the ColBERT rows' norms before normalising
        heads: list[torch.Tensor | None] = [None] * 5
        if states is not None:
            # The norm in float32 whatever the passes ran in: a bf16 sum of 1,024 squares
            # keeps 8 bits of it. In float32 this is FlagEmbedding's computation exactly.
            if any(item.normalize for item in items):
                heads[0] = F.normalize(states.float(), dim=-1)
            if not all(item.normalize for item in items):
                heads[1] = states
        if Output.LEXICAL in wanted:
            assert self.sparse_linear is not None
            heads[2] = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
        if Output.COLBERT in wanted:
            assert self.colbert_linear is not None
            # Every token but each text's CLS; packed, the CLS rows are computed and
            # skipped below (one row per text, cheaper than gathering the rest).
            if token_mask is None:
                vectors = self.colbert_linear(hidden)
            else:
                vectors = self.colbert_linear(hidden[:, 1:]) * token_mask[:, 1:, None].to(
                    hidden.dtype
                )
            heads[3] = F.normalize(vectors.float(), dim=-1)
            if any(item.colbert_max_tokens is not None for item in items):
                heads[4] = torch.linalg.vector_norm(vectors.float(), dim=-1)
        dense, pooled, weights, colbert, norms = to_host(heads)
        # A padded pass's ColBERT head already starts after CLS; a packed one's does not.
        colbert_skip = 1 if token_mask is None else 0
        results = []
        for row, item in enumerate(items):
            length = len(item.ids)
            outputs = item.outputs
            served = dense if item.normalize else pooled
            at, offset = starts[row]
            results.append(
                M3Row(
                    dense=served[row] if served is not None and Output.DENSE in outputs else None,
                    lexical=self._token_weights(
                        np.asarray(item.ids), weights[at][offset : offset + length]
                    )
                    if weights is not None and Output.LEXICAL in outputs
                    else None,
                    colbert=_pruned(
                        colbert[at][offset + colbert_skip : offset + length - 1 + colbert_skip],
                        norms[at][offset + colbert_skip : offset + length - 1 + colbert_skip]
                        if norms is not None
                        else None,
                        item.colbert_max_tokens,
                    )
                    if colbert is not None and Output.COLBERT in outputs
                    else None,
                )
            )
        return results

    def assemble(
        self, rows: Sequence[M3Row], outputs: frozenset[Output], text_tokens: Sequence[int]
    ) -> Encoding:
        """Per-text rows, in input order, into one Encoding."""
        return Encoding(
            token_count=sum(text_tokens),
            text_tokens=tuple(text_tokens),
            dense=np.stack([_present(r.dense) for r in rows]) if Output.DENSE in outputs else None,
            lexical=tuple(_present(r.lexical) for r in rows) if Output.LEXICAL in outputs else None,
            colbert=tuple(_present(r.colbert) for r in rows) if Output.COLBERT in outputs else None,
        )

    def _token_weights(self, ids: NDArray[np.int64], weights: NDArray[np.float32]) -> TokenWeights:
        return TokenWeights.of_tokens(ids, weights, self._special_ids)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row of right-padded token states, as sentence-transformers pools."""
    if pooling is Pooling.CLS:
        return hidden[:, 0]
    if pooling is Pooling.LAST_TOKEN:
        last = mask.sum(dim=1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    # In float32: a sum of 8192 fp16 token states can overflow fp16's range.
    total = torch.sum(hidden * weights, dim=1, dtype=torch.float32)
    return total / torch.clamp(weights.sum(dim=1, dtype=torch.float32), min=1e-9)


def pool_packed(hidden: torch.Tensor, packing: Packing, pooling: Pooling) -> torch.Tensor:
    """:func:`pool` for a packed pass: ``hidden`` is (tokens, hidden), rows end to end."""
    if pooling is Pooling.CLS:
        return hidden.index_select(0, packing.starts)
    if pooling is Pooling.LAST_TOKEN:
        lengths = torch.tensor(packing.lengths, device=hidden.device)
        return hidden.index_select(0, packing.starts + lengths - 1)
    rows = len(packing.lengths)
    # One row more for the filler tokens, summed apart and dropped.
    total = torch.zeros((rows + 1, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
    total.index_add_(0, packing.row_of_token, hidden.float())
    counts = torch.tensor(packing.lengths, dtype=torch.float32, device=hidden.device)
    return total[:rows] / counts[:, None]


def _present(item: T | None) -> T:
    """A head a text asked for; a missing one is a bug, never a partial answer."""
    if item is None:
        raise RuntimeError("a text is missing a head it asked for")
    return item


def _pruned(
    rows: ColbertMatrix, norms: NDArray[np.float32] | None, keep: int | None
) -> ColbertMatrix:
    """The ``keep`` rows of largest norm before normalising, in their order (ties: the
    earlier row); every row where ``keep`` is None or not fewer than the rows."""
    if keep is None or norms is None or len(rows) <= keep:
        return rows
    chosen = np.sort(np.argsort(-norms, kind="stable")[:keep])
    pruned: ColbertMatrix = rows[chosen]
    return pruned


def _complete(items: Sequence[T | None]) -> list[T]:
    return [_present(item) for item in items]


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
