"""``bge-serve download --to DIR``: fetch the configured models into ``DIR/<name>``, check
them, and say which settings to use.

A container mounts a volume of models; this fills it once, before the service
starts (the compose files run it as a one-shot service). Only the files the
backends load are fetched — bge-m3's repository also holds ONNX exports and
images several GB large. An interrupted download resumes where it stopped
(huggingface_hub keeps the partial file and asks for the rest with a Range request).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.model_files import model_folder_name
from engine.errors import StartupError

__all__ = ["ModelSpec", "check_folder", "download", "files_to_fetch"]

log = logging.getLogger(__name__)

# Top-level files a model folder needs besides its weights: configs, tokenizer, the
# sentence-transformers layout (infinity reads it) and bge-m3's sparse/ColBERT heads.
_WANTED_SUFFIXES = (".json", ".model", ".txt")
_HEADS = ("colbert_linear.pt", "sparse_linear.pt")
_SKIPPED = ("README.md", "LICENSE")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    setting: str  # the env var that names it, for messages and the lines printed
    repo_id: str
    heads: bool  # bge-m3's colbert_linear.pt and sparse_linear.pt are required

    @property
    def folder_name(self) -> str:
        return model_folder_name(self.repo_id)


def files_to_fetch(repo_files: Sequence[str], heads: bool) -> list[str]:
    """What of a repository's files the backends load: one copy of the weights
    (safetensors when there are any, else the PyTorch pickle), configs, tokenizer,
    ``1_Pooling/``, and the heads."""
    top = [name for name in repo_files if "/" not in name]
    safetensors = [name for name in top if name.endswith(".safetensors")]
    weights = safetensors or [
        name for name in top if name.startswith("pytorch_model") and name.endswith(".bin")
    ]
    if not weights:
        raise StartupError("the repository has no model.safetensors or pytorch_model.bin")
    wanted = [
        name
        for name in top
        if name.endswith(_WANTED_SUFFIXES) and name not in _SKIPPED and name not in weights
    ]
    wanted += [name for name in repo_files if name.startswith("1_Pooling/")]
    present_heads = [name for name in _HEADS if name in top]
    if heads and len(present_heads) < len(_HEADS):
        missing = ", ".join(sorted(set(_HEADS) - set(present_heads)))
        raise StartupError(
            f"the repository has no {missing}: not a bge-m3 model with sparse and ColBERT heads"
        )
    return sorted({*weights, *wanted, *present_heads})


def check_folder(folder: Path, heads: bool) -> list[str]:
    """What is wrong with ``folder`` as a model folder (empty: nothing). Every file a
    backend loads must exist and parse; the weights are opened, not loaded."""
    problems: list[str] = []
    config = folder / "config.json"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(parsed, dict) or "model_type" not in parsed:
            problems.append("config.json has no model_type")
    except (OSError, ValueError) as exc:
        problems.append(f"config.json: {exc}")
    problems += _check_tokenizer(folder)
    problems += _check_weights(folder)
    if heads:
        for name in _HEADS:
            problems += _check_torch_file(folder / name)
    return problems


def _check_tokenizer(folder: Path) -> list[str]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer("tokenizer check")
    except Exception as exc:  # noqa: BLE001 - any failure means the folder is unusable
        return [f"the tokenizer does not load: {type(exc).__name__}: {exc}"]
    return []


def _check_weights(folder: Path) -> list[str]:
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        from safetensors import safe_open

        problems = []
        for path in safetensors:
            try:
                with safe_open(str(path), framework="pt") as weights:
                    if not list(weights.keys()):
                        problems.append(f"{path.name} holds no tensors")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path.name}: {type(exc).__name__}: {exc}")
        return problems
    pickles = sorted(folder.glob("pytorch_model*.bin"))
    if not pickles:
        return ["no model.safetensors or pytorch_model.bin"]
    return [problem for path in pickles for problem in _check_torch_file(path)]


def _check_torch_file(path: Path) -> list[str]:
    import torch

    if not path.is_file():
        return [f"no {path.name}"]
    try:
        # mmap: a 2 GB checkpoint is checked without reading it all into memory.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        return [f"{path.name}: {type(exc).__name__}: {exc}"]
    if not isinstance(state, dict) or not state:
        return [f"{path.name} holds no tensors"]
    return []


def download(
    specs: Sequence[ModelSpec],
    to: Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Each model fetched (or its partial download resumed) into ``to/<name>`` and checked;
    the folders by setting. Raises StartupError saying what is wrong."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=endpoint, token=token)
    folders: dict[str, Path] = {}
    for spec in specs:
        target = to / spec.folder_name
        progress(f"{spec.setting}={spec.repo_id}: fetching into {target}")
        try:
            info = api.model_info(spec.repo_id)
            repo_files = [sibling.rfilename for sibling in info.siblings or ()]
            wanted = files_to_fetch(repo_files, spec.heads)
            snapshot_download(
                spec.repo_id,
                revision=info.sha,  # the commit listed, even if the branch moves meanwhile
                local_dir=target,
                allow_patterns=wanted,
                endpoint=endpoint,
                token=token,
            )
        except StartupError as exc:
            raise StartupError(f"{spec.setting}={spec.repo_id}: {exc}") from exc
        except Exception as exc:
            raise StartupError(
                f"{spec.setting}={spec.repo_id}: the download failed ({type(exc).__name__}: "
                f"{exc}); run the same command again to resume it"
            ) from exc
        problems = check_folder(target, spec.heads)
        if problems:
            raise StartupError(
                f"{spec.setting}={spec.repo_id}: {target} is not usable: {'; '.join(problems)}"
            )
        progress(f"{spec.setting}={spec.repo_id}: {len(wanted)} files in {target}, checked")
        folders[spec.setting] = target
    return folders
