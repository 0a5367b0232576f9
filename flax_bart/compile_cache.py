"""JAX's persistent compilation cache for the `flax-bart` commands, one folder per CPU type.

Every command that compiles (`flax-bart generate`, `qa`, `finetune`, `parity`, `demo`) keeps its XLA
executables in `$FLAX_BART_CACHE/jax-compile/<compile key>` (default root `~/.cache/flax-bart`) unless
given `--compile-cache DIR` or `--no-compile-cache`: a second run of the same shapes loads its programs
instead of compiling them (for greedy generation on BART-base, most of a first call's time on CPU).

The compile key is a digest of what an XLA:CPU executable is built for: the CPU model, its ISA flags,
an `--xla_cpu_max_isa` cap in `XLA_FLAGS`, and the jax/jaxlib versions. A program built for one ISA is
never loaded under another (a home directory shared by machines of several types, or a capped child
process). JAX's setting is process-wide: a library user who configured a cache keeps theirs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path

ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
XLA_MAX_ISA = re.compile(r"--xla_cpu_max_isa=(\S+)")


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; platform.processor() and no flags elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return (platform.processor() or platform.machine() or "unknown"), set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    name = model.group(1).strip() if model else (platform.processor() or platform.machine() or "unknown")
    return name, set(flags.group(1).split()) if flags else set()


def compile_key() -> str:
    """12 hex digits naming what an XLA:CPU executable is built for (module doc)."""
    model, flags = cpuinfo()
    xla = XLA_MAX_ISA.search(os.environ.get("XLA_FLAGS", ""))
    text = json.dumps([model, sorted(f for f in ISA_FLAGS if f in flags), xla.group(1) if xla else None,
                       version("jax"), version("jaxlib")])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("FLAX_BART_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "flax-bart"))


def default_dir() -> Path:
    """`$FLAX_BART_CACHE/jax-compile/<compile key>`."""
    return cache_root() / "jax-compile" / compile_key()


def enable(directory) -> None:
    """Keep XLA executables in `directory`, every program however small or quick to build (the many small
    ones add up). Process-wide: call it from an entry point, before anything compiles."""
    import jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def setup(directory, disabled: bool) -> None:
    """A command's cache: `directory` if given, else `default_dir()`, unless disabled or the process has
    one configured already (the embedding program's setting wins)."""
    if disabled:
        return
    if directory:
        enable(directory)
        return
    import jax

    if not jax.config.jax_compilation_cache_dir:
        enable(default_dir())


def add_arguments(parser) -> None:
    """`--compile-cache DIR` and `--no-compile-cache` (mutually exclusive) on an argparse parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile-cache", default=None, metavar="DIR",
                       help="keep compiled XLA programs in DIR (default: $FLAX_BART_CACHE/jax-compile/<CPU key>, "
                            "FLAX_BART_CACHE defaulting to ~/.cache/flax-bart)")
    group.add_argument("--no-compile-cache", action="store_true", help="compile from scratch, keep nothing")
