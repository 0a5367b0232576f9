"""`tune_host_allocator`: applied with glibc (Linux), refused sizes name the argument."""

from __future__ import annotations

import ctypes
import sys

import pytest

from flax_bart import tune_host_allocator
from flax_bart.host_memory import _glibc, host_allocator_state


def _has_glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version
        return sys.platform.startswith("linux")
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _has_glibc(), reason="glibc only")
def test_applied_with_glibc_and_reported():
    assert _glibc() is not None
    assert tune_host_allocator() is True
    assert host_allocator_state() == "tuned (mmap threshold 256 MiB, trim threshold 1024 MiB)"
    assert tune_host_allocator(64 << 20, 512 << 20) is True
    assert "mmap threshold 64 MiB, trim threshold 512 MiB" in host_allocator_state()
    tune_host_allocator()  # back to the defaults for the rest of the session


@pytest.mark.parametrize("kwargs, words", [
    (dict(mmap_threshold=0), "mmap_threshold=0"),
    (dict(trim_threshold=-5), "trim_threshold=-5"),
    (dict(mmap_threshold=2 ** 31), "mmap_threshold=2147483648"),
    (dict(trim_threshold=1.5), "trim_threshold=1.5"),
    (dict(mmap_threshold=True), "mmap_threshold=True"),
])
def test_bad_sizes_name_the_argument(kwargs, words):
    with pytest.raises(ValueError, match=words):
        tune_host_allocator(**kwargs)
