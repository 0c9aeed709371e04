"""Cross-encoder logits, computed the way ``FlagReranker.compute_score`` does.

Same folder, same numbers (the tests assert it): the query is cut to 3/4 of
the pair budget, each document to the budget, then the pair
``<s> query </s></s> document </s>`` is cut on the document side only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from backends.device import dtype_name
from backends.flag.batches import length_sorted_batches, pad
from backends.flag.limits import model_max_tokens
from backends.flag.loading import load_model, runs_packed
from backends.flag.packing import classifier_packs, pack, packed_classifier_logits
from backends.flag.transfer import to_host
from backends.tokens import PairTemplate, cut_for_truncation
from engine.types import ModelInfo, Scores

__all__ = ["CrossEncoder"]


class CrossEncoder:
    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        device: str,
        dtype: torch.dtype,
        max_pair_tokens: int,
        max_batch_tokens: int,
        max_batch_items: int,
        compile_model: bool = False,
        packed: bool = False,
    ) -> None:
        self._device = device
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_items = max_batch_items
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
        self.model = load_model(
            AutoModelForSequenceClassification,
            folder,
            device=device,
            dtype=dtype,
            compile_model=compile_model,
            packed=packed,
        )
        self._packed = runs_packed(self.model) and classifier_packs(self.model)
        self.max_tokens = model_max_tokens(self.model.config, self.tokenizer, max_pair_tokens)
        self.info = ModelInfo(
            name=name,
            max_tokens=self.max_tokens,
            vocab_size=len(self.tokenizer),
            dtype=dtype_name(dtype),
        )
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._pair = PairTemplate.of(self.tokenizer)

    def pairs(self, query: str, documents: Sequence[str]) -> list[list[int]]:
        tokenizer = self.tokenizer
        query_room = self.max_tokens * 3 // 4
        (query,) = cut_for_truncation(tokenizer, [query], query_room, from_left=False)
        query_ids = tokenizer(
            query, add_special_tokens=False, truncation=True, max_length=query_room
        )["input_ids"]
        document_room = max(self.max_tokens - len(query_ids) - self._pair.size, 0)
        # Cut to the room a document can have, so the tokens past it are never made.
        documents = cut_for_truncation(tokenizer, documents, self.max_tokens, from_left=False)
        documents_ids = tokenizer(
            list(documents), add_special_tokens=False, truncation=True, max_length=self.max_tokens
        )["input_ids"]
        return [self._pair.join(query_ids, doc[:document_room]) for doc in documents_ids]

    def score(self, query: str, documents: Sequence[str]) -> Scores:
        """All pairs at once, batched by length here (no micro-batcher)."""
        rows = self.pairs(query, documents)
        lengths = [len(row) for row in rows]
        logits = np.empty(len(rows), dtype=np.float32)
        for batch in length_sorted_batches(lengths, self._max_batch_tokens, self._max_batch_items):
            logits[batch] = self.run_batch([rows[i] for i in batch])
        return Scores(logits=logits, token_count=sum(lengths))

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[list[int]]) -> list[float]:
        """One forward pass over (query, document) token-id rows: a raw logit each."""
        if self._packed:
            out = packed_classifier_logits(self.model, pack(rows, self.model.config, self._device))
        else:
            ids, mask = pad(rows, self._pad_id, self._device)
            out = self.model(input_ids=ids, attention_mask=mask, return_dict=True).logits
        (host,) = to_host([out.view(-1)])
        assert host is not None
        logits: list[float] = host.tolist()
        return logits
