"""Host allocator settings that let XLA:CPU reuse its per-call buffers.

On Linux with glibc, each run of a compiled XLA:CPU program allocates its temporaries (and outputs)
with `malloc`. glibc serves large requests with fresh `mmap`s and gives them back on `free`, and
trims the heap top back to the kernel, so the next call page-faults (and the kernel zeroes) the
same hundreds of megabytes again. Raising the mmap and trim thresholds keeps those pages in the
process, which measured 10-15% faster BART-base encoding and generation on this project's CPU
machine (README, "Benchmarks"); PyTorch's timings did not change.

This changes a process-wide setting, so flax_bart never does it on import. `from_pretrained` does
it by default when JAX's default backend is the CPU (`tune_for_cpu()`): a library user then gets the
measured speed without knowing about it (issue 16 measured BART-base QA at 1.61x transformers' time
untuned against 1.20x tuned on an AVX2 machine). Opt out with `from_pretrained(...,
tune_allocator=False)` or `FLAX_BART_TUNE_ALLOCATOR=0`; call `tune_host_allocator()` yourself in other
CPU inference processes (the `flax-bart generate` and `qa` commands and the benchmarks do). The price:
up to `trim_threshold` bytes of freed memory stay resident. Nothing happens on other platforms or C
libraries (the function returns False).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc <malloc.h>
DEFAULT_MMAP_THRESHOLD = 256 << 20             # requests up to 256 MiB come from the heap
DEFAULT_TRIM_THRESHOLD = 1 << 30               # keep up to 1 GiB of freed heap resident
_INT_MAX = 2 ** 31 - 1

_state: dict = {}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (absent from musl and other C libraries)
        return libc
    except (OSError, AttributeError):
        return None


def _check(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _INT_MAX:
        raise ValueError(f"tune_host_allocator: {name}={value!r}; expected an int of bytes in [1, {_INT_MAX}]")
    return value


def tune_host_allocator(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                        trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds (module doc). True when applied, False where there is
    no glibc `mallopt`; an invalid size raises ValueError."""
    mmap_threshold = _check("mmap_threshold", mmap_threshold)
    trim_threshold = _check("trim_threshold", trim_threshold)
    libc = _glibc()
    if libc is None:
        return False
    ok = (libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(mmap_threshold)) == 1
          and libc.mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(trim_threshold)) == 1)
    if ok:
        _state.update(mmap_threshold=mmap_threshold, trim_threshold=trim_threshold)
    return ok


def host_allocator_state() -> str:
    """A line for reports: the thresholds set by `tune_host_allocator`, or the C library's defaults."""
    if not _state:
        return "default"
    return f"tuned (mmap threshold {_state['mmap_threshold'] >> 20} MiB, trim threshold {_state['trim_threshold'] >> 20} MiB)"


def tune_for_cpu() -> bool:
    """`tune_host_allocator()` when JAX computes on the CPU and `FLAX_BART_TUNE_ALLOCATOR` is not "0";
    True when the settings are (now or already) in place."""
    if os.environ.get("FLAX_BART_TUNE_ALLOCATOR", "1").strip() == "0":
        return False
    if _state:
        return True
    import jax

    if jax.default_backend() != "cpu":
        return False
    return tune_host_allocator()

