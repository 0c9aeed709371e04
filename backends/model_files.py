"""Turn a model setting (a local folder or a Hugging Face repo id) into a local folder."""

from __future__ import annotations

from pathlib import Path

from engine.errors import StartupError

__all__ = ["model_folder_name", "resolve_model_dir"]


def model_folder_name(repo_id: str) -> str:
    """The folder a repo's files go to under MODELS_DIR: its name without the owner."""
    return repo_id.rstrip("/").rsplit("/", 1)[-1]


def resolve_model_dir(name: str, setting: str, models_dir: str | None = None) -> Path:
    """A local folder for ``name``: the folder itself; with ``models_dir`` (MODELS_DIR), a
    repo id's folder there as ``bge-serve download`` lays it out; else the HF cache, or a
    fresh download.

    Fails fast, naming ``setting`` (the env var to change), when none of these works:
    a service that cannot reach the hub must not hang or die later on first request.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise StartupError(f"{setting}={name}: no config.json in {folder}: not a model folder")
        return folder
    if folder.is_absolute() or name.startswith((".", "~")):
        raise StartupError(f"{setting}={name}: no such folder")
    if models_dir is not None:
        downloaded = Path(models_dir).expanduser() / model_folder_name(name)
        if downloaded.is_dir():
            return downloaded
        raise StartupError(
            f"{setting}={name}: MODELS_DIR={models_dir} has no {downloaded.name}; fetch it "
            f"with `bge-serve download --to {models_dir}`"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except HFValidationError as exc:
        raise StartupError(f"{setting}={name} is neither a folder nor a repo id: {exc}") from exc
    except Exception:  # noqa: BLE001, S110 - not cached yet: try the hub next
        pass
    try:
        return Path(snapshot_download(name))
    except Exception as exc:
        raise StartupError(
            f"cannot load {setting}={name}: it is not a local folder, not in the Hugging Face "
            f"cache, and the hub could not be reached ({type(exc).__name__}). Download the "
            f"model elsewhere and point {setting} at its folder, e.g. "
            f"{setting}=/models/{name.rsplit('/', 1)[-1]}"
        ) from exc
