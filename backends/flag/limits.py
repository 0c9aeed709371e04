"""How many tokens a model can take."""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["model_max_tokens"]

# RoBERTa-family position ids start after the padding index, so
# max_position_embeddings counts padding_idx + 1 positions no token can use.
_OFFSET_POSITION_MODELS = frozenset({"xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"})


def model_max_tokens(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, setting: int | None
) -> int:
    """The model's usable sequence length, lowered to ``setting`` when that is smaller."""
    limit = int(config.max_position_embeddings)
    if config.model_type in _OFFSET_POSITION_MODELS:
        limit -= int(config.pad_token_id or 0) + 1
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    if 0 < tokenizer.model_max_length < 1_000_000:
        limit = min(limit, int(tokenizer.model_max_length))
    return min(limit, setting) if setting is not None else limit
