"""Forward passes over real tokens only: a pass's rows packed end to end, no padding.

A padded pass computes every layer's linear maps (nearly all of an encoder's work)
for its longest row times its row count; texts of 10 to 30 tokens make a third of
that padding. Packed, the rows are one sequence of their real tokens: the linear
maps, layer norms and heads run on those alone, and only attention, which must not
cross from one text into another, sees the rows apart. It gathers each layer's
queries, keys and values into padded rows, runs torch's scaled-dot-product
attention with a key-padding mask, and scatters the answers back: four index
copies per layer, against a third of every matmul saved. vLLM's pooling runner
packs the same way (its varlen attention kernels); transformers' flash-attention 2
path does on a GPU where ``flash_attn`` is installed, and there the loader picks it.

The attention runs as a function registered with transformers' public
``AttentionInterface`` under :data:`PACKED_ATTENTION`: called without a packing
(a padded pass, an attention mask given) it is transformers' own SDPA attention,
so a model loaded with it answers padded passes exactly as ``sdpa`` does.

Packing is for encoders whose tokens meet only in attention and whose positions are
absolute embeddings: BERT, RoBERTa and XLM-RoBERTa (bge-m3, bge-reranker-v2-m3,
all-MiniLM-L6-v2). Any other model runs padded passes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = [
    "PACKED_ATTENTION",
    "Packing",
    "can_pack",
    "classifier_packs",
    "pack",
    "packed_classifier_logits",
    "packed_hidden",
    "packed_size",
    "register_packed_attention",
]

PACKED_ATTENTION = "bge_packed"

_PACKABLE = frozenset({"bert", "roberta", "xlm-roberta"})
# Whose position ids count from the padding id + 1 (XLM-RoBERTa: 2); BERT's count from 0.
_POSITIONS_AFTER_PAD = frozenset({"roberta", "xlm-roberta"})
# The keyword the gather travels under, from the model's forward down to the attention
# function (transformers passes a forward's extra keywords through to it).
_KEYWORD = "bge_packing"


@dataclass(frozen=True, slots=True)
class _Gather:
    """Where each padded attention slot reads its token, and where each token's answer is."""

    index: torch.Tensor  # (rows * width,) packed position of each padded slot (0 for padding)
    keep: torch.Tensor  # (rows, 1, 1, width) True for a real key
    scatter: torch.Tensor  # (tokens,) padded slot of each packed token
    rows: int
    width: int


@dataclass(frozen=True, slots=True)
class Packing:
    """One pass's rows as one sequence of tokens, and how to take it apart."""

    ids: torch.Tensor  # (1, tokens), real tokens then filler
    positions: torch.Tensor  # (1, tokens)
    starts: torch.Tensor  # (rows,) where each row begins, on the model's device
    row_of_token: torch.Tensor  # (tokens,) which row each token belongs to (rows: filler)
    offsets: tuple[int, ...]  # where each row begins, on the host
    lengths: tuple[int, ...]
    gather: _Gather


def can_pack(config: PretrainedConfig) -> bool:
    """Whether a model of this config answers packed passes as padded ones. Not under
    transformers 4 (the infinity extra's environment): its BERT and XLM-RoBERTa neither
    look attention up by name nor hand a forward's keywords down to it."""
    return (
        int(transformers.__version__.split(".")[0]) >= 5
        and getattr(config, "model_type", None) in _PACKABLE
        and not getattr(config, "is_decoder", False)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
    )


def register_packed_attention() -> None:
    """Make :data:`PACKED_ATTENTION` a name ``attn_implementation`` takes (idempotent).
    Its mask is SDPA's: none at all for a packed pass, which is given no mask."""
    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def packed_size(tokens: int) -> int:
    """The token count a packed pass of ``tokens`` runs at: 8 steps to 64, then 16 steps
    per doubling (at most 1/16 more tokens, 3 % on average).

    On a CPU, oneDNN (torch's bf16 matmuls) compiles a kernel per matrix shape and keeps
    ONEDNN_PRIMITIVE_CACHE_CAPACITY of them; a pass of any other size would compile anew
    (a 6 ms pass of one text took 17 ms). 136 sizes up to 16,384 tokens keep every
    shape a model runs inside the cache: compiled once, then reused, and the memory the
    cache holds stops growing.
    """
    if tokens <= 64:
        return max(8, -(-tokens // 8) * 8)
    step = 1 << max(0, tokens.bit_length() - 5)  # 1/16 of the power of two below
    return -(-tokens // step) * step


def pack(rows: Sequence[Sequence[int]], config: PretrainedConfig, device: str) -> Packing:
    """``rows`` (token ids, at least one each) end to end, with what a packed pass needs.

    Filler rows of padding tokens, answered and dropped, bring the pass to
    :func:`packed_size`; each is at most as long as the longest row, so attention's padded
    width does not grow. On a GPU the host tensors are pinned and copied without blocking,
    as padded passes' are (:func:`backends.flag.batches.pad`)."""
    lengths = tuple(len(row) for row in rows)
    offsets = tuple(itertools.accumulate(lengths, initial=0))[:-1]
    width = max(lengths)
    real = sum(lengths)
    filler = packed_size(real) - real
    fill = [width] * (filler // width) + ([filler % width] if filler % width else [])
    all_lengths = torch.tensor([*lengths, *fill], dtype=torch.long)
    first = int(config.pad_token_id) + 1 if config.model_type in _POSITIONS_AFTER_PAD else 0
    pad_id = int(config.pad_token_id or 0)
    ids = torch.tensor([token for row in rows for token in row] + [pad_id] * filler)
    all_starts = torch.cumsum(all_lengths, 0) - all_lengths
    # Filler tokens count as one row past the real ones (pooling drops it).
    row_of_token = torch.repeat_interleave(torch.arange(len(all_lengths)), all_lengths)
    positions = torch.arange(ids.shape[0]) - all_starts[row_of_token] + first
    row_of_token.clamp_(max=len(rows))
    slots = torch.arange(width)
    valid = slots[None, :] < all_lengths[:, None]
    index = torch.where(valid, all_starts[:, None] + slots[None, :], 0).reshape(-1)
    scatter = valid.reshape(-1).nonzero().squeeze(1)
    host = [ids[None], positions[None], all_starts[: len(rows)], row_of_token, index]
    host += [valid[:, None, None, :], scatter]
    if device.startswith("cuda"):
        host = [t.pin_memory().to(device, non_blocking=True) for t in host]
    ids_d, positions_d, starts_d, row_d, index_d, keep_d, scatter_d = host
    return Packing(
        ids=ids_d,
        positions=positions_d,
        starts=starts_d,
        row_of_token=row_d,
        offsets=offsets,
        lengths=lengths,
        gather=_Gather(index_d, keep_d, scatter_d, len(all_lengths), width),
    )


def packed_hidden(model: Any, packing: Packing) -> torch.Tensor:
    """The encoder's last hidden states, (tokens, hidden): the rows end to end, then the
    filler (:func:`pack`). ``model`` is a base encoder (``AutoModel``) loaded with
    :data:`PACKED_ATTENTION`."""
    out = model(
        input_ids=packing.ids,
        position_ids=packing.positions,
        token_type_ids=torch.zeros_like(packing.ids),
        return_dict=True,
        **{_KEYWORD: packing.gather},
    )
    hidden: torch.Tensor = out.last_hidden_state[0]
    return hidden


def classifier_packs(model: Any) -> bool:
    """Whether :func:`packed_classifier_logits` knows ``model``'s sequence classification
    head: RoBERTa's and XLM-RoBERTa's (bge-reranker-v2-m3), BERT's with its pooler."""
    base = getattr(model, model.base_model_prefix, None)
    if base is None or not hasattr(model, "classifier"):
        return False
    if model.config.model_type == "bert":
        return getattr(base, "pooler", None) is not None and hasattr(model, "dropout")
    return model.config.model_type in ("roberta", "xlm-roberta")


def packed_classifier_logits(model: Any, packing: Packing) -> torch.Tensor:
    """A sequence classifier's logits, (rows, labels), from a packed pass (a model
    :func:`classifier_packs` accepts)."""
    base = getattr(model, model.base_model_prefix)
    cls = packed_hidden(base, packing).index_select(0, packing.starts)[:, None, :]
    if model.config.model_type == "bert":
        # BertForSequenceClassification: the pooler (dense + tanh on the CLS state), then
        # dropout (a no-op in eval mode), then the classifier.
        return model.classifier(model.dropout(base.pooler(cls)))  # type: ignore[no-any-return]
    # RobertaClassificationHead reads features[:, 0, :] itself.
    return model.classifier(cls)  # type: ignore[no-any-return]


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    gather: _Gather | None = kwargs.pop(_KEYWORD, None)
    if gather is None:
        answer: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return answer
    # (1, heads, tokens, head_dim) in; (1, tokens, heads, head_dim) out, as transformers'
    # attention functions answer.
    heads, head_dim = query.shape[1], query.shape[3]

    def padded(packed: torch.Tensor) -> torch.Tensor:
        rows = packed[0].transpose(0, 1).index_select(0, gather.index)
        return rows.view(gather.rows, gather.width, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        padded(query), padded(key), padded(value), attn_mask=gather.keep, scale=scaling
    )
    flat = out.transpose(1, 2).reshape(gather.rows * gather.width, heads, head_dim)
    return flat.index_select(0, gather.scatter)[None], None
