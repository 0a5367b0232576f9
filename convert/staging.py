"""Atomic output: write into a temporary directory beside the target, then move it into place.

A failure or interruption before `commit` leaves the target as it was (absent or the old
checkpoint) and removes the temporary directory. Staging names start with "." and end in
".partial", so no loader mistakes one for a checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from convert.errors import ConversionError


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedOutput:
    """Context manager: `.path` is the staging directory; `commit()` publishes it as `target`.

    merge=False: `target` is replaced as a whole (refused when it exists, unless `overwrite`).
    merge=True: `target` may be an existing directory; the staged files are moved into it one by
    one (each move atomic), after removing the `stale` names (files of the format being replaced).
    """

    def __init__(self, target: str, *, overwrite: bool = False, merge: bool = False):
        self.target = os.path.abspath(os.fspath(target))
        self.merge = merge
        if os.path.lexists(self.target) and not merge and not overwrite:
            raise ConversionError(f"output {target} already exists; pass --overwrite to replace it")
        if merge and os.path.exists(self.target) and not os.path.isdir(self.target):
            raise ConversionError(f"output {target} exists and is not a directory")
        parent = os.path.dirname(self.target)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.", suffix=".partial", dir=parent)
        self.committed = False

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, stale: tuple[str, ...] = (), last: tuple[str, ...] = ()) -> None:
        for name in os.listdir(self.path):
            _fsync_file(os.path.join(self.path, name))
        _fsync_dir(self.path)
        if self.merge:
            self._merge(stale, last)
        else:
            self._swap()
        self.committed = True

    def _swap(self) -> None:
        parent = os.path.dirname(self.target)
        old = None
        if os.path.lexists(self.target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.rename(self.target, old)
        try:
            os.rename(self.path, self.target)
        except BaseException:
            if old is not None:
                os.rename(old, self.target)
            raise
        _fsync_dir(parent)
        if old is not None:
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.unlink(old)

    def _merge(self, stale, last) -> None:
        os.makedirs(self.target, exist_ok=True)
        names = os.listdir(self.path)
        for name in stale:
            p = os.path.join(self.target, name)
            if name not in names and os.path.isfile(p):
                os.unlink(p)
        for name in sorted(names, key=lambda n: n in last):
            os.replace(os.path.join(self.path, name), os.path.join(self.target, name))
        _fsync_dir(self.target)
        os.rmdir(self.path)


def _fsync_file(path: str) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
