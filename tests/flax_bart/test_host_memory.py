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


_CHILD = """
import sys
from flax_bart import BartConfig
from flax_bart.host_memory import host_allocator_state
from flax_bart.models import FlaxBartForQuestionAnswering
from tests.bart_helpers import TINY
FlaxBartForQuestionAnswering(BartConfig(**TINY), seed=0).save_pretrained(sys.argv[1])
print(host_allocator_state())   # a model built from a config leaves the allocator alone
kw = {} if sys.argv[2] == "default" else {"tune_allocator": False}
FlaxBartForQuestionAnswering.from_pretrained(sys.argv[1], **kw)
print(host_allocator_state())
"""


@pytest.mark.skipif(not _has_glibc(), reason="glibc only")
@pytest.mark.parametrize("how, tuned", [("default", True), ("kwarg", False), ("env", False)])
def test_from_pretrained_tunes_a_cpu_process_unless_told_not_to(tmp_path, how, tuned):
    import os
    import subprocess
    from pathlib import Path

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if how == "env":
        env["FLAX_BART_TUNE_ALLOCATOR"] = "0"
    root = Path(__file__).resolve().parents[2]
    mode = "kwarg" if how == "kwarg" else "default"
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "ckpt"), mode],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = out.stdout.strip().splitlines()[-2:]
    assert not before.startswith("tuned")
    assert after.startswith("tuned") is tuned, after
