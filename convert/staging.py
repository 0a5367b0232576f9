"""Atomic output: write into a temporary directory beside the target, then move it into place.

A failure or interruption before `commit` leaves the target as it was (absent or the old
checkpoint) and removes the temporary directory. Staging names start with "." and end in
".partial", and loaders refuse such directories (`containment.check_not_staging`), so one left by a
killed process (or a replaced target whose deletion failed) is never mistaken for a checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import tempfile
import threading

from convert.errors import ConversionError

_INTERRUPTED, _RECORDING = threading.Event(), threading.Event()
PUBLISHED: list[str] = []   # targets committed inside `interrupts_recorded` (what an interrupt did not stop)


@contextlib.contextmanager
def interrupts_recorded():
    """Ctrl-C raises KeyboardInterrupt as usual, and is also recorded, so that no output is published
    after one even where Python swallowed the exception (it only prints one raised in a garbage-collection
    callback, such as JAX's, and carries on). Only where Python's own Ctrl-C handler is in place (the main
    thread, SIGINT neither ignored nor handled by the caller) and not already inside; elsewhere a no-op."""
    if (threading.current_thread() is not threading.main_thread() or _RECORDING.is_set()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def record(signum, frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    PUBLISHED.clear()
    _RECORDING.set()
    previous = signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()
        _RECORDING.clear()


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
        if not str(os.fspath(target)).strip():   # abspath("") is the working directory
            raise ConversionError("the output path is empty (an unset variable?); name the output directory")
        self.target = os.path.abspath(os.fspath(target))
        self.merge = merge
        if os.path.lexists(self.target) and not merge and not overwrite:
            raise ConversionError(f"output {target} already exists; pass --overwrite to replace it")
        if os.path.lexists(self.target) and not merge:
            check_replaceable(self.target, target)
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
        if _INTERRUPTED.is_set():   # an interrupt some callback swallowed on the way: publish nothing
            raise KeyboardInterrupt
        if self.merge:
            self._merge(stale, last)
        else:
            from flax_bart.io_utils import new_dir_mode

            os.chmod(self.path, new_dir_mode())  # published as a plain directory, not mkdtemp's 0700
            self._swap()
        self.committed = True
        if _RECORDING.is_set():
            PUBLISHED.append(self.target)

    def _swap(self) -> None:
        """Publish the staging directory as the target. An existing target is exchanged with it in
        one atomic step where the OS can (Linux renameat2), so the target is never absent; the old
        one then sits under the staging name (never loadable, see `containment`) until deleted."""
        parent = os.path.dirname(self.target)
        if os.path.lexists(self.target) and exchange(self.path, self.target):
            _fsync_dir(parent)
            _discard(self.path)
            return
        old = None
        if os.path.lexists(self.target):  # fallback: two renames, the old target kept until the second
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}.", suffix=".old.partial", dir=parent)
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
            _discard(old)

    def _merge(self, stale, last) -> None:
        """Move the staged files in so that a reader (or a crash) never sees old and new files mixed:
        `last` names the entry files (an index, a single weights file). First the old entries go,
        except a single file that a new single file replaces atomically, so the old checkpoint is
        either whole or unloadable; then the new shards, then the new entries, then stale leftovers."""
        os.makedirs(self.target, exist_ok=True)
        names = os.listdir(self.path)
        atomic = {n for n in names if n in last and not n.endswith(".json")}
        for name in stale:
            p = os.path.join(self.target, name)
            if name in last and name not in atomic and os.path.isfile(p):
                os.unlink(p)
        _fsync_dir(self.target)
        for name in sorted(names, key=lambda n: n in last):
            os.replace(os.path.join(self.path, name), os.path.join(self.target, name))
        # published; what follows is cleanup, which may fail without making the save a failure
        for name in stale:
            p = os.path.join(self.target, name)
            if name not in names and os.path.isfile(p):
                _discard(p)
        _fsync_dir(self.target)
        _discard(self.path)


# An orbax output's own names (flax_bart.orbax_io, not imported here: it imports jax)
_ORBAX_FILES, _ORBAX_DIRS = ("flax_bart_orbax.json",), ("params",)


def _is_output_entry(directory: str, name: str) -> bool:
    """Whether `name` in `directory` is a file an earlier output of flax-bart holds (convert, --to orbax,
    finetune): the config and side files convert copies, its summary, weights, indexes and shards, an
    orbax checkpoint's files; never a symlink."""
    from convert.api import SIDE_FILES, SUMMARY_NAME
    from convert.sources import WEIGHT_FILES, shard_pattern

    path = os.path.join(directory, name)
    if os.path.islink(path):
        return False
    if name in _ORBAX_DIRS:
        return os.path.isdir(path)
    weights = any(name in pair or shard_pattern(pair[0]).match(name) for pair in WEIGHT_FILES.values())
    return os.path.isfile(path) and (weights or name in SIDE_FILES + (SUMMARY_NAME,) + _ORBAX_FILES)


def check_replaceable(target: str, shown: str, replacer: str = "--overwrite") -> None:
    """What `replacer` (the option that replaces `shown` as a whole) may replace: an empty directory or an
    earlier output (config.json and checkpoint files only); never a file, the working or home directory or a
    directory holding either (`/`), nor a directory holding other files (a mistyped DST must not delete them)."""
    real = os.path.realpath(target)
    for what, place in (("the working directory", os.getcwd()), ("the home directory", os.path.expanduser("~"))):
        place = os.path.realpath(place)
        if os.path.commonpath([real, place]) == real:
            raise ConversionError(f"output {shown} is {what} or holds it ({place}); an existing DST is replaced as "
                                  f"a whole, so choose a directory of its own")
    if not os.path.isdir(real):
        raise ConversionError(f"output {shown} exists and is not a directory; {replacer} replaces only an earlier "
                              f"output directory: remove it yourself or choose another DST")
    names = sorted(os.listdir(real))
    if not names:
        return
    others = [n for n in names if not _is_output_entry(real, n)]
    if others or not _is_output_entry(real, "config.json"):
        shown_names = (others or names)[:5] + (["..."] if len(others or names) > 5 else [])
        raise ConversionError(f"output {shown} exists and is not an earlier checkpoint output (config.json and "
                              f"checkpoint files only; it holds {shown_names}): {replacer} replaces only such "
                              f"a directory; remove it yourself or choose another DST")


def _discard(path: str) -> None:
    """Best-effort removal of what a published output replaced (a directory, or a file or symlink
    that was at the target path): a failure leaves a `.partial` name no loader accepts, and does not
    turn the finished conversion into a failure."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or the
    file system cannot, so that the caller falls back to two renames."""
    global _RENAMEAT2
    if _RENAMEAT2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
            _RENAMEAT2 = fn
        except (OSError, AttributeError):
            _RENAMEAT2 = False
    if _RENAMEAT2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), b)


_RENAMEAT2 = None


def _fsync_file(path: str) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
