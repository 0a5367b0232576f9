"""Resolve a local checkpoint directory or a hub id (through huggingface_hub's cache)."""

from __future__ import annotations

import os


class CheckpointNotFoundError(OSError):
    pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_checkpoint_dir(
    path_or_id: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> str:
    """A local directory as is; a file's directory; otherwise a hub id, from the cache when offline."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or not path.strip():
        raise CheckpointNotFoundError(f"{path!r}: no such checkpoint directory or file")
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    offline = bool(local_files_only) or _offline()
    try:
        return huggingface_hub.snapshot_download(
            repo_id=path,
            revision=revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            local_files_only=offline,
            token=token,
            force_download=force_download,
        )
    except HFValidationError as e:
        raise CheckpointNotFoundError(f"{path!r} is neither a local path nor a valid hub id: {e}") from None
    except Exception as e:  # huggingface_hub raises several types for "not cached"/"not reachable"
        where = f"the hub cache ({cache_dir or huggingface_hub.constants.HF_HUB_CACHE})"
        mode = "offline" if offline else "online"
        raise CheckpointNotFoundError(
            f"{path!r}: not a local directory, and not found in {where} ({mode}"
            f"{', revision ' + revision if revision else ''}): {type(e).__name__}: {e}"
        ) from None
