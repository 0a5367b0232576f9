"""Which files a checkpoint directory may make the converter read.

A checkpoint comes from a stranger; its index, weights and side files must not lead the converter to
read (or copy into an output a user may publish) files elsewhere on the machine. A file belongs to a
checkpoint directory when its real path (symlinks resolved) lies inside that directory, or, for a
snapshot of the huggingface_hub cache (`<repo>/snapshots/<revision>/...`, whose files are symlinks
into `<repo>/blobs/`), inside that repository's `blobs` directory.

Staging directories of an unfinished conversion (`.<name>.<random>.partial`, see `staging.py`) are
never a checkpoint: a killed conversion leaves one behind, and nothing may load it.
"""

from __future__ import annotations

import os
import re

from convert.errors import ConversionError

STAGING_NAME = re.compile(r"^\..+\.partial$")


def allowed_roots(directory: str) -> list[str]:
    """Real paths under which the files of checkpoint `directory` may lie."""
    root = os.path.realpath(directory)
    roots = [root]
    # huggingface_hub cache: <cache>/models--org--name/snapshots/<revision>[/sub/dirs]
    parts = root.split(os.sep)
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(("models--", "datasets--", "spaces--")):
            blobs = os.sep.join(parts[:i] + ["blobs"])
            if os.path.isdir(blobs):
                roots.append(blobs)
            break
    return roots


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def contained(directory: str, name: str, what: str) -> str:
    """The real path of `name` (relative to checkpoint `directory`), refused with a clear error when
    it is absolute, has `..` components, or resolves (through symlinks) outside the checkpoint."""
    if "\0" in name:
        raise ConversionError(f"{what} {name!r} contains a NUL byte: not a file name")
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise ConversionError(f"{what} {name!r} escapes the checkpoint directory {directory}")
    real = os.path.realpath(os.path.join(directory, name))
    roots = allowed_roots(directory)
    if not any(_inside(real, r) for r in roots):
        raise ConversionError(
            f"{what} {name!r} resolves to {real}, outside the checkpoint directory {roots[0]}: refusing to read it"
        )
    return real


def check_not_staging(path: str) -> None:
    """Refuse a path inside an unfinished conversion's staging directory."""
    real = os.path.realpath(path)
    for part in real.split(os.sep):
        if STAGING_NAME.match(part):
            raise ConversionError(
                f"{path} is inside {part}, the staging directory of an unfinished (interrupted?) conversion; "
                f"it is not a checkpoint (delete it and convert again)"
            )
