"""Where a SRC argument points: a directory, a weights file, or a hub id in the local cache."""

from __future__ import annotations

import os
import re

from convert.errors import ConversionError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(src: str, *, cache_dir: str | None = None, revision: str | None = None) -> str:
    """A local path for `src`; hub ids resolve offline from the huggingface_hub cache."""
    src = os.fspath(src)
    if os.path.exists(src):
        return src
    if not _REPO_ID.match(src) or ".." in src:
        raise ConversionError(f"{src}: no such file or directory")
    try:
        from flax_bart.hub import resolve_checkpoint_dir
    except ImportError:
        resolve_checkpoint_dir = None
    try:
        if resolve_checkpoint_dir is not None:
            return resolve_checkpoint_dir(src, cache_dir=cache_dir, revision=revision, local_files_only=True)
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=src, cache_dir=cache_dir, revision=revision, local_files_only=True)
    except Exception as e:  # the hub client raises several types for "not in the cache"
        raise ConversionError(
            f"{src}: not a local file or directory, and not found as a hub id in the local "
            f"huggingface_hub cache{f' ({cache_dir})' if cache_dir else ''} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
