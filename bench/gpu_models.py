"""Random-weight bge-m3 and bge-reranker-v2-m3 folders at their real size, built offline.

The GPU benchmark (bench/gpu.py) needs models that cost what the published ones cost
and a tokenizer whose token counts it controls, on a machine with no network:

- the M3 embedder: ``XLMRobertaModel`` with bge-m3's config.json (24 layers, hidden 1024,
  16 heads, intermediate 4096, vocabulary 250,002, 8,194 positions: ~568 M parameters),
  ``colbert_linear.pt`` and ``sparse_linear.pt`` as BAAI ships them, and the
  sentence-transformers modules (CLS pooling, normalised, 8,192 tokens);
- the reranker: ``XLMRobertaForSequenceClassification`` of the same shape, one label;
- a Unigram tokenizer with 250,002 pieces (XLM-R's special ids: ``<s>``=0, ``<pad>``=1,
  ``</s>``=2, ``<unk>``=3, ``<mask>`` last). Every word of :func:`words` is one piece, so a
  text of N of them is exactly N + 2 tokens: the benchmark's lengths are exact.

``shape="tiny"`` builds the same folders a few hundred KB large for the CPU check.
Weights use the published ``initializer_range`` (0.02): their values do not change what a
forward pass costs, and fp16 activations stay in range.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "Shape", "build_m3", "build_reranker", "text_of", "words"]

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"


@dataclass(frozen=True)
class Shape:
    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int

    @property
    def max_tokens(self) -> int:
        # XLM-R's positions start after the padding index (1): two positions no token uses.
        return self.max_position_embeddings - 2

    @property
    def layer_weights(self) -> int:
        """Matrix weights of the encoder layers (Q, K, V, output; the two feed-forward)."""
        hidden, inner = self.hidden_size, self.intermediate_size
        return self.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * inner)


SHAPES = {
    # BAAI/bge-m3's and BAAI/bge-reranker-v2-m3's published config.json.
    "bge-m3": Shape("bge-m3", 250_002, 1024, 24, 16, 4096, 8194),
    # Same code path on a CPU in seconds; long texts up to 1,024 tokens.
    "tiny": Shape("tiny", 1_000, 32, 2, 2, 64, 1026),
}

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def words(count: int) -> list[str]:
    """``count`` distinct lowercase words, deterministic: each is one tokenizer piece."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70
    out: list[str] = []
    for size in itertools.count(1):
        for combo in itertools.product(syllables, repeat=size):
            out.append("".join(combo))
            if len(out) == count:
                return out
    raise AssertionError("unreachable")


def _vocabulary(size: int) -> tuple[list[tuple[str, float]], list[str]]:
    """Unigram pieces (specials, single letters, then whole words) and the words."""
    letters = sorted(set(_CONSONANTS + _VOWELS))
    # Single characters let any text of these letters tokenize; they score below a whole
    # word so that a word of the list is always one piece.
    singles = [("▁", -20.0)] + [(ch, -20.0) for ch in letters]
    room = size - len(SPECIALS) - len(singles) - 1
    vocabulary = words(room)
    pieces = [(token, 0.0) for token in SPECIALS]
    pieces += singles
    pieces += [("▁" + word, -10.0) for word in vocabulary]
    pieces.append((MASK, 0.0))
    assert len(pieces) == size
    return pieces, vocabulary


def build_tokenizer(size: int, max_tokens: int) -> Any:
    """An XLM-R tokenizer over :func:`_vocabulary`, on transformers 4 or 5."""
    import transformers

    pieces, _ = _vocabulary(size)
    names = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": MASK,
        "model_max_length": max_tokens,
    }
    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5's XLM-R tokenizer builds its Unigram model from the pieces itself.
        return transformers.XLMRobertaTokenizer(vocab=pieces, **names)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return transformers.XLMRobertaTokenizerFast(tokenizer_object=tok, **names)


def _config(shape: Shape, **extra: object) -> Any:
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        attention_probs_dropout_prob=0.1,
        hidden_dropout_prob=0.1,
        position_embedding_type="absolute",
        **extra,
    )


def build_m3(path: Path, shape: Shape, *, device: str = "cpu", seed: int = 0) -> Path:
    import torch
    from transformers import XLMRobertaModel

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    # Initialising 568 M weights takes seconds on a GPU, tens of seconds on a CPU.
    with torch.device(device):
        model = XLMRobertaModel(_config(shape, architectures=["XLMRobertaModel"]))
        colbert = torch.nn.Linear(shape.hidden_size, shape.hidden_size)
        sparse = torch.nn.Linear(shape.hidden_size, 1)
    model.save_pretrained(path)
    del model
    build_tokenizer(shape.vocab_size, shape.max_tokens).save_pretrained(path)
    torch.save({k: v.cpu() for k, v in colbert.state_dict().items()}, path / "colbert_linear.pt")
    torch.save({k: v.cpu() for k, v in sparse.state_dict().items()}, path / "sparse_linear.pt")
    _finish(path, "", shape)
    _sentence_transformers_modules(path, shape)
    return path


def _sentence_transformers_modules(path: Path, shape: Shape) -> None:
    """CLS pooling, then Normalize, 8,192 tokens: what BAAI/bge-m3 ships for
    sentence-transformers (written here, not by tests/fixtures, whose import needs the
    transformers 4 tokenizer classes)."""
    kinds = ("Transformer", "Pooling", "Normalize")
    folders = ("", "1_Pooling", "2_Normalize")
    modules = [
        {"idx": i, "name": str(i), "path": folder, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, folder) in enumerate(zip(kinds, folders, strict=True))
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": shape.max_tokens, "do_lower_case": False})
    )
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": shape.hidden_size,
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (path / "2_Normalize").mkdir(exist_ok=True)


def build_reranker(path: Path, shape: Shape, *, device: str = "cpu", seed: int = 1) -> Path:
    import torch
    from transformers import XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    config = _config(shape, architectures=["XLMRobertaForSequenceClassification"], num_labels=1)
    # Initialising 568 M weights takes seconds on a GPU, tens of seconds on a CPU.
    with torch.device(device):
        model = XLMRobertaForSequenceClassification(config)
    model.save_pretrained(path)
    del model
    build_tokenizer(shape.vocab_size, shape.max_tokens).save_pretrained(path)
    # The reranker was tuned from bge-m3 and its config.json says so.
    _finish(path, "BAAI/bge-m3", shape)
    return path


def _finish(path: Path, name_or_path: str, shape: Shape) -> None:
    from engine.random_weights import MARKER

    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["_name_or_path"] = name_or_path
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    (path / MARKER).write_text(
        f"random weights, {shape.name} shape, built by bench/gpu_models.py\n"
    )
    (path / "bench_shape.json").write_text(json.dumps(asdict(shape), indent=2))


def text_of(tokens: int, vocabulary: list[str], rng: random.Random) -> str:
    """A text of exactly ``tokens`` tokens (special tokens included, so at least 3)."""
    return " ".join(rng.choice(vocabulary) for _ in range(max(1, tokens - 2)))


def vocabulary_of(shape: Shape) -> list[str]:
    return _vocabulary(shape.vocab_size)[1]


def parameters(path: Path) -> int:
    """Parameters stored in a folder's safetensors files (the model; heads aside)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                count = 1
                for size in weights.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write bge-m3/ and bge-reranker-v2-m3/ in")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bge-m3")
    parser.add_argument("--device", default="cpu", help="where the weights are initialised")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    m3 = build_m3(args.out / "bge-m3", shape, device=args.device)
    reranker = build_reranker(args.out / "bge-reranker-v2-m3", shape, device=args.device)
    for folder in (m3, reranker):
        print(f"{folder}: {parameters(folder):,} parameters")


if __name__ == "__main__":
    main()
