"""Small file helpers shared by the packages: atomic single-file writes."""

from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    """The process umask, read from /proc (setting it to read it races with other threads); 0o022
    where that is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def new_file_mode() -> int:
    """The mode `open()` gives a new file (0o666 less the umask); mkstemp's 0o600 would hide configs and
    reports from the rest of a team."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The mode `mkdir()` gives a new directory (0o777 less the umask), not mkdtemp's 0o700."""
    return 0o777 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and an atomic rename
    (the file gets the mode a plain `open()` would give it)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), new_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_text_file(directory: str | os.PathLike, name: str, text: str) -> str:
    """`text` at `directory/name`, written atomically (the directory is created); returns the path.
    How config.json and generation_config.json are saved."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    atomic_write_text(path, text)
    return path
