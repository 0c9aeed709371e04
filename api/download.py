"""``bge-serve download --to DIR``: the models the settings name, fetched into ``DIR``.

Progress goes to stderr; the settings to use go to stdout, one ``NAME=value``
line each, so ``bge-serve download --to /models > models.env`` gives an env file:
``MODELS_DIR=DIR`` and the repo ids, which then load from ``DIR`` and keep their
hub names as public names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from backends.download import ModelSpec, check_folder, download
from engine.errors import StartupError
from engine.settings import Settings, load_settings

__all__ = ["download_main", "models_to_fetch"]

_LOCAL_BACKENDS = frozenset({"flag", "infinity"})


def models_to_fetch(settings: Settings) -> list[ModelSpec]:
    """The models a local backend loads (a chain of remotes needs none); bge-m3's heads
    when the flag backend serves sparse vectors."""
    specs = []
    embedding_chains = {*settings.embed_backends, *settings.lexical_colbert_chain}
    if embedding_chains & _LOCAL_BACKENDS:
        specs.append(
            ModelSpec(
                "EMBEDDING_MODEL_NAME",
                settings.embedding_model_name,
                heads="flag" in settings.lexical_colbert_chain,
            )
        )
    if set(settings.rerank_backends) & _LOCAL_BACKENDS:
        specs.append(ModelSpec("RERANKER_MODEL_NAME", settings.reranker_model_name, heads=False))
    return specs


def download_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bge-serve download",
        description="Fetch EMBEDDING_MODEL_NAME and RERANKER_MODEL_NAME from the Hugging Face "
        "hub into DIR/<name> (resuming an interrupted download), check them, and print the "
        "settings that use them. Other options: as bge-serve's (env or flags). HF_TOKEN and "
        "HF_ENDPOINT are read as huggingface_hub reads them.",
    )
    parser.add_argument(
        "--to", type=Path, metavar="DIR", help="Models folder (default: MODELS_DIR)."
    )
    known, rest = parser.parse_known_args(argv)
    settings = load_settings(rest)
    where: Path | str | None = known.to or settings.models_dir
    if where is None:
        parser.error("say where: --to DIR, or MODELS_DIR")
    to = Path(where)

    def say(line: str) -> None:
        print(f"bge-serve download: {line}", file=sys.stderr, flush=True)

    specs = models_to_fetch(settings)
    if not specs:
        say("every chain is remote: no model to fetch")
        return 0
    try:
        fetched = download([spec for spec in specs if not _is_folder(spec)], to, progress=say)
    except StartupError as exc:
        say(str(exc))
        return 1
    lines = [f"MODELS_DIR={to}"] if fetched else []
    # A repo id loads from MODELS_DIR; a folder setting stays the folder it names.
    lines += [f"{spec.setting}={spec.repo_id}" for spec in specs]
    print("\n".join(lines))
    return 0


def _is_folder(spec: ModelSpec) -> bool:
    """A setting that already names a folder is checked where it is, not fetched."""
    folder = Path(spec.repo_id).expanduser()
    if not folder.is_dir():
        return False
    problems = check_folder(folder, spec.heads)
    if problems:
        raise StartupError(f"{spec.setting}={folder} is not usable: {'; '.join(problems)}")
    return True
