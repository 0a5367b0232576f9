"""Fault injection for filesystem mutations: every write to a file opened for writing, every fsync,
rename, replace, atomic exchange, copy, mkdir, unlink and rmdir is one numbered point;
`Faults(fail_at=n)` raises OSError(ENOSPC) at point n (and counts every point either way)."""

from __future__ import annotations

import builtins
import collections
import errno
import os
import shutil


def _no_fsync(fd) -> None:
    os.fstat(fd)  # still fails on a bad descriptor, like fsync


class _WriteProxy:
    """A file opened for writing whose `write` is a fault point; everything else is the file's."""

    def __init__(self, f, faults: "Faults", path):
        self._f, self._faults, self._path = f, faults, path

    def write(self, data):
        self._faults.hit("write", self._path)
        return self._f.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


class Faults:
    """Context manager patching the mutating filesystem calls of the process."""

    PATCHED = (("os", "fsync"), ("os", "rename"), ("os", "replace"), ("os", "mkdir"), ("os", "unlink"),
               ("os", "remove"), ("os", "rmdir"), ("shutil", "copyfile"), ("convert.staging", "exchange"))

    def __init__(self, fail_at: int | None = None, sync: bool = False):
        """sync=False: an fsync is a fault point but does not reach the disk (the tests run every
        point of a conversion in turn; durability is not what they check)."""
        self.fail_at = fail_at
        self.sync = sync
        self.count = 0
        self.kinds: collections.Counter = collections.Counter()
        self.log: list[str] = []  # the kind of every point, in order
        self.failed: tuple[str, str] | None = None
        self._saved: list = []

    def hit(self, kind: str, what) -> None:
        n = self.count
        self.count += 1
        self.kinds[kind] += 1
        self.log.append(kind)
        if n == self.fail_at:
            self.failed = (kind, str(what))
            raise OSError(errno.ENOSPC, f"injected fault #{n} ({kind} {what})")

    def __enter__(self) -> "Faults":
        import convert.staging

        modules = {"os": os, "shutil": shutil, "convert.staging": convert.staging}
        for mod_name, name in self.PATCHED:
            mod = modules[mod_name]
            real = getattr(mod, name)
            if name == "fsync" and not self.sync:
                real = _no_fsync
            self._saved.append((mod, name, real))
            setattr(mod, name, self._wrap(name, real))
        real_open = builtins.open
        self._saved.append((builtins, "open", real_open))

        def faulty_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and not isinstance(file, int):
                return _WriteProxy(f, self, file)
            return f

        builtins.open = faulty_open
        return self

    def _wrap(self, name, real):
        def faulty(*args, **kwargs):
            self.hit(name, args[0] if args else "")
            return real(*args, **kwargs)
        return faulty

    def __exit__(self, *exc) -> None:
        for mod, name, real in reversed(self._saved):
            setattr(mod, name, real)
        self._saved.clear()
