"""Locate a model's files: a local directory as given, or a Hugging Face Hub ID downloaded once."""

from __future__ import annotations

from pathlib import Path


def resolve_model_dir(path_or_id: str) -> Path:
    """Return a local directory holding the model's files.

    A path that exists is used as is. Anything else is treated as a Hub ID and fetched with
    ``huggingface_hub.snapshot_download`` (which honours ``HF_HOME`` and ``HF_HUB_OFFLINE``).

    Raises:
        FileNotFoundError: neither a local directory nor a downloadable ID.
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise FileNotFoundError(f"model path {path_or_id!r} is a file; give the model's directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id))
    except Exception as exc:  # the hub client raises many kinds; the message matters to the user
        raise FileNotFoundError(
            f"model {path_or_id!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}); download it first or pass a directory"
        ) from exc
