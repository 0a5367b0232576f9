"""Host allocator settings that let XLA:CPU reuse its per-call buffers.

On Linux with glibc, each run of a compiled XLA:CPU program allocates its temporaries (and outputs)
with `malloc`. glibc serves large requests with fresh `mmap`s and gives them back on `free`, and
trims the heap top back to the kernel, so the next call page-faults (and the kernel zeroes) the
same hundreds of megabytes again. Two settings keep those pages in the process:

- the mmap and trim thresholds, raised to 1 GiB: requests up to that size come from the heap, and
  up to that much freed heap stays resident;
- one arena (`M_ARENA_MAX` = 1). XLA:CPU runs its programs on threads of its own, and glibc gives
  such threads arenas of their own, whose heaps hold at most 64 MiB: a larger request there is an
  `mmap` whatever the threshold says. A BART-base float16 forward converts its weights to float32
  for XLA's dots, a few hundred MB of temporaries: with the thresholds alone it still took ~110k
  page faults a call (~0.45 GB), with one arena too about none; the LM forward of 2 x 32 tokens ran in
  149-152 ms against 269-313 ms, float32 in 119 against 147-157 ms (2-core AMD EPYC,
  `reports/bench/epyc-avx512-68b435a/`). A thread's arena is fixed by its first allocation and JAX's
  threads allocate as the backend starts, so this part only takes effect when it comes before JAX
  starts: the CLIs and `from_pretrained` (as the process's first use of JAX) set it then,
  `one_arena_in_time()` says whether it was, and `MALLOC_ARENA_MAX=1` in the environment does it for
  any process.

These change process-wide settings, so flax_bart never does it on import. `from_pretrained` does
it by default when JAX's default backend is the CPU (`tune_for_cpu()`): a library user then gets the
measured speed without knowing about it (issue 16 measured BART-base QA at 1.61x transformers' time
untuned against 1.20x tuned on an AVX2 machine). Opt out with `from_pretrained(...,
tune_allocator=False)` or `FLAX_BART_TUNE_ALLOCATOR=0`; call `tune_host_allocator()` yourself in other
CPU inference processes (the `flax-bart generate`, `qa` and `parity` commands and the benchmarks do).
The price: up to `trim_threshold` bytes of freed memory stay resident, and the process's threads
share one arena's lock. Nothing happens on other platforms or C libraries (the function returns False).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8   # glibc <malloc.h>
DEFAULT_MMAP_THRESHOLD = 1 << 30               # requests up to 1 GiB come from the heap
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
                        trim_threshold: int = DEFAULT_TRIM_THRESHOLD, one_arena: bool = True) -> bool:
    """Raise glibc's mmap and trim thresholds and (`one_arena`) let every thread allocate from the main
    arena (module doc). True when applied, False where there is no glibc `mallopt`; an invalid size
    raises ValueError."""
    mmap_threshold = _check("mmap_threshold", mmap_threshold)
    trim_threshold = _check("trim_threshold", trim_threshold)
    if not isinstance(one_arena, bool):
        raise ValueError(f"tune_host_allocator: one_arena={one_arena!r}; expected True or False")
    libc = _glibc()
    if libc is None:
        return False
    # read before anything below could start JAX; MALLOC_ARENA_MAX=1 set one arena at the process's start
    in_time = not jax_started() or os.environ.get("MALLOC_ARENA_MAX", "").strip() == "1"
    ok = (libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(mmap_threshold)) == 1
          and libc.mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(trim_threshold)) == 1)
    if ok and one_arena and not _state.get("one_arena"):
        ok = libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(1)) == 1
        if ok:
            _state.update(one_arena=True, arena_in_time=in_time)
    if ok:
        _state.update(mmap_threshold=mmap_threshold, trim_threshold=trim_threshold)
    return ok


def jax_started() -> bool:
    """Whether JAX's backends (and so XLA:CPU's threads) have started; JAX is never imported here."""
    jax = sys.modules.get("jax")
    if jax is None:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):   # another JAX: assume the worst
        return True


def one_arena_in_time() -> bool:
    """Whether `tune_host_allocator` set one arena before JAX's threads started (module doc)."""
    return bool(_state.get("one_arena") and _state.get("arena_in_time"))


def host_allocator_state() -> str:
    """A line for reports: the thresholds set by `tune_host_allocator`, or the C library's defaults."""
    if not _state:
        return "default"
    arena = ""
    if _state.get("one_arena"):
        arena = ", one arena" if _state.get("arena_in_time") else \
            ", one arena for threads started after JAX's (set late: XLA's threads kept their own)"
    return (f"tuned (mmap threshold {_state['mmap_threshold'] >> 20} MiB, "
            f"trim threshold {_state['trim_threshold'] >> 20} MiB{arena})")


def tune_for_cpu() -> bool:
    """`tune_host_allocator()` when JAX computes on the CPU and `FLAX_BART_TUNE_ALLOCATOR` is not "0";
    True when the settings are (now or already) in place. Finding the backend starts JAX, so where
    JAX has not started yet the one arena is set first, and put back to glibc's default count where
    the backend turns out not to be the CPU."""
    if os.environ.get("FLAX_BART_TUNE_ALLOCATOR", "1").strip() == "0":
        return False
    if _state:
        return True
    libc = _glibc()
    if libc is None:
        return False
    import jax

    early = not jax_started()
    if early:
        libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(1))
    if jax.default_backend() != "cpu":
        if early:   # glibc's default on 64-bit: 8 arenas a core
            libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(8 * (os.cpu_count() or 1)))
        return False
    ok = tune_host_allocator()
    if ok and early:
        _state["arena_in_time"] = True
    return ok
