"""The machine fingerprint: what a parity report's numbers depend on besides the code.

Errors at the ulp level move with the CPU's instruction set (XLA:CPU and PyTorch pick kernels by
ISA: AVX2 vs AVX-512 vs AVX512-BF16 change summation order and bf16 rounding), the GPU model, and the
jax/jaxlib/torch builds. Every report and baseline carries this fingerprint, so a baseline comparison
can say when the two runs come from different machines.

The ISA a framework actually uses can be capped below what the CPU offers (`ISA_LIMIT_VARIABLES`);
`restricted_isa_env` builds such an environment for a child process, which is how one machine checks
the behaviour of a lesser CPU (`python -m parity.cross_isa`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from typing import Any, Mapping

from flax_bart import compile_cache
from flax_bart.compile_cache import ISA_FLAGS  # CPU flags that change which kernels XLA:CPU or PyTorch pick

_XLA_MAX_ISA = compile_cache.XLA_MAX_ISA
_cpuinfo = compile_cache.cpuinfo
_version = compile_cache.version
# The persistent compilation cache's folder name (the CPU, its ISA flags and caps, jax/jaxlib).
compile_key = compile_cache.compile_key

# Environment variables that cap the ISA the frameworks use.
ISA_LIMIT_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# Tiers, lowest first, with the spelling each cap takes (XLA, ATen, oneDNN, MKL).
ISA_TIERS: Mapping[str, Mapping[str, str]] = {
    "AVX": {"xla": "AVX", "aten": "default", "onednn": "AVX", "mkl": "AVX"},
    "AVX2": {"xla": "AVX2", "aten": "avx2", "onednn": "AVX2", "mkl": "AVX2"},
    "AVX512": {"xla": "AVX512", "aten": "avx512", "onednn": "AVX512_CORE", "mkl": "AVX512"},
}
# Keys of the fingerprint that change numerics; `same_machine` compares only these.
NUMERIC_KEYS = ("cpu_model", "cpu_count", "cpu_caches", "isa_flags", "isa_limits", "xla_cpu_max_isa", "torch_cpu_capability",
                "torch_threads", "gpus", "jax", "jaxlib", "torch")


def _caches() -> str | None:
    """'L1d 32K, L2 512K, L3 32768K' (GEMM libraries block by cache size: it can change summation order)."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("index"))
        parts = []
        for entry in entries:
            def read(name):
                with open(os.path.join(root, entry, name), encoding="utf-8") as fh:
                    return fh.read().strip()
            kind = read("type")
            if kind == "Instruction":
                continue
            parts.append(f"L{read('level')}{'d' if kind == 'Data' else ''} {read('size')}")
        return ", ".join(parts) or None
    except OSError:
        return None


def native_tier(flags: set[str]) -> str | None:
    """The highest entry of ISA_TIERS the CPU supports (None: not x86 or flags unknown)."""
    if {"avx512f", "avx512bw"} <= flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    return None


def _torch_cpu() -> tuple[str | None, int | None]:
    """(ATen's CPU capability, intra-op threads) of an imported torch; never imports it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None
    try:
        return str(torch.backends.cpu.get_cpu_capability()), int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 - an old or odd build: the fingerprint just lacks these fields
        return None, None


def _gpus() -> list[str]:
    names = []
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            names += [f"jax {d.platform}: {d.device_kind}" for d in jax.devices() if d.platform != "cpu"]
        except Exception:  # noqa: BLE001 - no backend initialised: nothing to name
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                names += [f"torch cuda:{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001
            pass
    return sorted(set(names))


def collect() -> dict[str, Any]:
    """This process's fingerprint (reads jax/torch only if already imported)."""
    model, flags = _cpuinfo()
    xla = _XLA_MAX_ISA.search(os.environ.get("XLA_FLAGS", ""))
    capability, threads = _torch_cpu()
    fp: dict[str, Any] = {
        "cpu_model": model,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_caches": _caches(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "native_isa": native_tier(flags),
        "isa_limits": {k: os.environ[k] for k in ISA_LIMIT_VARIABLES if os.environ.get(k)},
        "xla_cpu_max_isa": xla.group(1) if xla else None,
        "torch_cpu_capability": capability,
        "torch_threads": threads,
        "gpus": _gpus(),
        "jax": _version("jax"), "jaxlib": _version("jaxlib"), "torch": _version("torch"),
    }
    fp["id"] = fingerprint_id(fp)
    return fp


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """Short digest of the numerics-relevant keys: equal ids, same kernels."""
    text = json.dumps({k: fp.get(k) for k in NUMERIC_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def same_machine(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool | None:
    """True/False when both fingerprints are known; None when either is missing (old reports)."""
    if not a or not b:
        return None
    return all(a.get(k) == b.get(k) for k in NUMERIC_KEYS)


def describe(fp: Mapping[str, Any] | None) -> str:
    """One line: CPU, effective ISA, GPUs, versions."""
    if not fp:
        return "unknown machine (no fingerprint recorded)"
    isa = fp.get("native_isa") or "?"
    caps = [f"XLA max {fp['xla_cpu_max_isa']}"] if fp.get("xla_cpu_max_isa") else []
    caps += [f"{k}={v}" for k, v in sorted((fp.get("isa_limits") or {}).items())]
    flags = ",".join(f for f in fp.get("isa_flags", ()) if f.startswith(("avx512", "amx"))) or "no AVX-512"
    parts = [f"{fp.get('cpu_model', '?')} ({isa}; {flags}" + (f"; capped: {' '.join(caps)}" if caps else "") + ")"]
    if fp.get("torch_cpu_capability"):
        parts.append(f"torch CPU {fp['torch_cpu_capability']}")
    if fp.get("gpus"):
        parts.append("GPU " + ", ".join(fp["gpus"]))
    parts.append(" ".join(f"{k} {fp[k]}" for k in ("jax", "jaxlib", "torch") if fp.get(k)))
    return "; ".join(p for p in parts if p) + f" [{fp.get('id', '?')}]"


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """'key: A -> B' for each numerics-relevant key that differs."""
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in NUMERIC_KEYS if a.get(k) != b.get(k)]


def restricted_isa_env(tier: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default os.environ) with XLA, ATen, oneDNN and MKL capped at ``tier``.

    Refuses a tier above the CPU's own: PyTorch would believe it and crash on the first AVX-512
    instruction."""
    if tier not in ISA_TIERS:
        raise ValueError(f"ISA tier {tier!r}: expected one of {list(ISA_TIERS)}")
    _, flags = _cpuinfo()
    native = native_tier(flags)
    order = list(ISA_TIERS)
    if native is None or order.index(tier) > order.index(native):
        raise ValueError(f"ISA tier {tier}: this CPU supports at most {native or 'none of them'}")
    names = ISA_TIERS[tier]
    env = dict(os.environ if base is None else base)
    xla = _XLA_MAX_ISA.sub("", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = (xla + f" --xla_cpu_max_isa={names['xla']}").strip()
    env["ATEN_CPU_CAPABILITY"] = names["aten"]
    env["ONEDNN_MAX_CPU_ISA"] = env["DNNL_MAX_CPU_ISA"] = names["onednn"]
    env["MKL_ENABLE_INSTRUCTIONS"] = names["mkl"]
    return env


def other_tier() -> str:
    """A tier below this CPU's own (AVX2 on AVX-512 machines, AVX on AVX2 ones): a different kernel set."""
    _, flags = _cpuinfo()
    native = native_tier(flags)
    if native is None or native == "AVX":
        raise ValueError(f"no ISA tier below this CPU's own ({native or 'unknown'}) to restrict to")
    order = list(ISA_TIERS)
    return order[order.index(native) - 1]


def software_versions(reference: str) -> dict:
    """flax-bart's own version (and git commit, when run from a checkout), and transformers' when it is
    the PyTorch reference: what else, besides jax/flax/torch/numpy, made the numbers."""
    from parity.report import _version

    out = {"flax_bart": _version("flax-bart") or "unknown", "flax_bart_commit": _git_commit()}
    if reference == "transformers":
        out["transformers"] = _version("transformers") or "unknown"
    return out


def _git_commit() -> str:
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):  # an installed copy: no commit of its own
        return "unknown"
    try:
        done = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = ""
    if done.returncode == 0:
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=False)
        dirty = "+changes" if status.returncode == 0 and status.stdout.strip() else ""
    return done.stdout.strip() + dirty if done.returncode == 0 and done.stdout.strip() else "unknown"
