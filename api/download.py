"""``bge-serve download --to DIR``: the models the settings name, fetched into ``DIR``.

Progress goes to stderr; the settings to use go to stdout, one ``NAME=value``
line each, so ``bge-serve download --to /models > models.env`` gives an env file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from backends.download import ModelSpec, check_folder, download
from engine.errors import StartupError
from engine.model_names import served_name
from engine.settings import Settings, load_settings

__all__ = ["download_main", "models_to_fetch"]

_LOCAL_BACKENDS = frozenset({"flag", "infinity"})


def models_to_fetch(settings: Settings) -> list[ModelSpec]:
    """The models a local backend loads (a chain of remotes needs none); bge-m3's heads
    when the flag backend serves sparse vectors."""
    specs = []
    embedding_chains = {*settings.embed_backends, *settings.sparse_backends}
    if embedding_chains & _LOCAL_BACKENDS:
        specs.append(
            ModelSpec(
                "EMBEDDING_MODEL_NAME",
                settings.embedding_model_name,
                heads="flag" in settings.sparse_backends,
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
    parser.add_argument("--to", required=True, type=Path, metavar="DIR", help="Models folder.")
    known, rest = parser.parse_known_args(argv)
    settings = load_settings(rest)
    to: Path = known.to

    def say(line: str) -> None:
        print(f"bge-serve download: {line}", file=sys.stderr, flush=True)

    lines: list[str] = []
    try:
        remote = [spec for spec in models_to_fetch(settings) if not _is_folder(spec)]
        folders = download(remote, to, progress=say)
        for spec in models_to_fetch(settings):
            folder = folders.get(spec.setting, Path(spec.repo_id))
            public = served_name(spec.repo_id, None)
            served = spec.setting.replace("MODEL_NAME", "SERVED_NAME")
            lines += [f"{spec.setting}={folder}", f"{served}={public}"]
    except StartupError as exc:
        say(str(exc))
        return 1
    if not lines:
        say("every chain is remote: no model to fetch")
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
