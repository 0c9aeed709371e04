"""How a model folder says its dense vector is made: sentence-transformers' module list.

A folder with ``modules.json`` (all-MiniLM-L6-v2, the e5 family, bge-m3 itself) names its
pipeline: a Transformer, a Pooling module whose ``config.json`` picks the mode, and
maybe a Normalize module. Read the way sentence-transformers reads it (a Pooling
config without any ``pooling_mode_*`` key means mean pooling there too) and TEI does
(``sentence_bert_config.json``'s ``max_seq_length`` is the token limit). A folder
without ``modules.json`` is a FlagEmbedding folder: CLS pooling, normalised.

Only what the flag backend computes is accepted; any other pipeline (weighted mean,
max, several modes at once, a Dense projection) is refused at start-up, since serving
it as CLS or mean would answer 200 with vectors from another space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.errors import StartupError

__all__ = ["FLAG_EMBEDDING", "Pipeline", "Pooling", "read_pipeline", "sentence_max_tokens"]


class Pooling(StrEnum):
    """The pooling modes the flag backend computes (TEI's set, SPLADE aside)."""

    CLS = "cls"
    MEAN = "mean"  # attention-mask weighted mean of the token states
    LAST_TOKEN = "lasttoken"

    @property
    def tei_name(self) -> str:
        """What TEI's /info calls it."""
        return "last_token" if self is Pooling.LAST_TOKEN else self.value


@dataclass(frozen=True, slots=True)
class Pipeline:
    pooling: Pooling
    # Whether the model's own pipeline ends in a Normalize module. What is served does not
    # hang on it, as in TEI: L2-normalised unless a request asks for the pooled vector.
    normalize: bool
    max_seq_length: int | None = None  # sentence_bert_config.json's token limit, if any

    def describe(self) -> str:
        module = "with" if self.normalize else "without"
        return f"{self.pooling} pooling ({module} a Normalize module)"


# FlagEmbedding's BGEM3FlagModel: CLS, then L2-normalised.
FLAG_EMBEDDING = Pipeline(Pooling.CLS, normalize=True)

# sentence-transformers' config keys, in its order, and the mode each one turns on.
_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# sentence-transformers' Pooling(...) defaults: mean pooling unless the config says otherwise.
_MODE_DEFAULTS = {key: key == "pooling_mode_mean_tokens" for key in _MODE_KEYS}
_MODULE_KINDS = ("Transformer", "Pooling", "Normalize")


def read_pipeline(folder: Path) -> Pipeline:
    """The folder's pooling and normalisation; StartupError for one the flag backend
    cannot compute, naming the folder and what it asks for."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return FLAG_EMBEDDING
    modules = _json(modules_file, folder)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise StartupError(f"{modules_file}: expected a list of modules")
    pooling: Pooling | None = None
    normalize = False
    kinds: list[str] = []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        kinds.append(kind)
        if kind not in _MODULE_KINDS:
            raise StartupError(
                f"{folder}: modules.json lists a {module.get('type')} module "
                f"({module.get('path')}); the flag backend computes Transformer, Pooling and "
                "Normalize only, and without it the vectors would be another model's"
            )
        path = str(module.get("path", ""))
        if kind == "Transformer" and path not in ("", "."):
            raise StartupError(
                f"{folder}: the transformer is in {path}/, not the folder itself; "
                "point the model setting at a folder whose config.json is the encoder's"
            )
        if kind == "Pooling":
            pooling = _pooling_mode(folder, folder / path / "config.json")
        if kind == "Normalize":
            normalize = True
    if kinds.count("Transformer") != 1 or kinds.count("Pooling") != 1:
        raise StartupError(
            f"{folder}: modules.json lists {', '.join(kinds) or 'no modules'}; "
            "expected one Transformer and one Pooling module"
        )
    assert pooling is not None
    return Pipeline(pooling, normalize, sentence_max_tokens(folder))


def _pooling_mode(folder: Path, config_file: Path) -> Pooling:
    if not config_file.is_file():
        raise StartupError(
            f"{folder}: modules.json lists a Pooling module; {config_file} is missing"
        )
    config = _json(config_file, folder)
    if not isinstance(config, dict):
        raise StartupError(f"{config_file}: expected an object")
    named = config.get("pooling_mode")
    # sentence-transformers 5+: the name (or a list of names) overrides the legacy flags,
    # and is case-sensitive ("CLS" is refused there, so here).
    if isinstance(named, str):
        modes = [named]
    elif isinstance(named, list):
        modes = [str(mode) for mode in named]
    else:
        modes = [
            mode for key, mode in _MODE_KEYS.items() if bool(config.get(key, _MODE_DEFAULTS[key]))
        ]
    if len(modes) != 1 or modes[0] not in set(Pooling):
        asked = " + ".join(modes) if modes else "no pooling mode"
        raise StartupError(
            f"{folder}: {config_file.parent.name}/config.json asks for {asked}; the flag "
            f"backend computes one of {', '.join(Pooling)} pooling"
        )
    return Pooling(modes[0])


def sentence_max_tokens(folder: Path) -> int | None:
    """``sentence_bert_config.json``'s ``max_seq_length``: where sentence-transformers
    (and so infinity_emb) and TEI cut a text."""
    config_file = folder / "sentence_bert_config.json"
    if not config_file.is_file():
        return None
    config = _json(config_file, folder)
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _json(path: Path, folder: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StartupError(f"{folder}: cannot read {path.name}: {exc}") from exc
