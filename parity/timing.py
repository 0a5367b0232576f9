"""Where the gate's time goes: per head and dtype, PyTorch vs Flax, and on the Flax side compile vs the rest.

`CompileMeter` listens to JAX's own monitoring events while a block runs: the seconds spent tracing
(jaxpr), lowering (MLIR) and compiling (XLA backend), how many programs were compiled, and how many
came from the persistent compilation cache. Everything else the Flax side spent in that block is
running the programs and moving results to the host (`run_s`). JAX reports an event in the thread that
traced or compiled, so a meter counts only its own thread's events: Flax jobs that run side by side
(`--flax-jobs`) each get their own figures.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


_ACTIVE: dict[int, list] = {}   # thread id -> the meters open in that thread
_REGISTERED = threading.Lock()
_listening = False


def _on_duration(event: str, seconds: float, **_kwargs) -> None:
    for meter in _ACTIVE.get(threading.get_ident(), ()):
        meter._duration(event, seconds)


def _on_event(event: str, **_kwargs) -> None:
    for meter in _ACTIVE.get(threading.get_ident(), ()):
        meter._event(event)


def _listen() -> None:
    """Register one pair of JAX listeners for the process (JAX's listener lists are not meant to change
    while another thread reports through them)."""
    global _listening
    with _REGISTERED:
        if not _listening:
            import jax.monitoring as mon

            mon.register_event_duration_secs_listener(_on_duration)
            mon.register_event_listener(_on_event)
            _listening = True


@dataclass
class CompileMeter:
    """Context manager: `trace_s`, `lower_s`, `compile_s`, `programs`, `cache_hits` and `total_s` of a block
    (this thread's events only)."""

    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    programs: int = 0
    cache_hits: int = 0
    total_s: float = 0.0
    _t0: float = field(default=0.0, repr=False)

    def _duration(self, event: str, seconds: float) -> None:
        if event == _TRACE:
            self.trace_s += seconds
        elif event == _LOWER:
            self.lower_s += seconds
        elif event == _COMPILE:
            self.compile_s += seconds
            self.programs += 1

    def _event(self, event: str) -> None:
        if event == _CACHE_HIT:
            self.cache_hits += 1

    def __enter__(self) -> "CompileMeter":
        _listen()
        _ACTIVE.setdefault(threading.get_ident(), []).append(self)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total_s += time.perf_counter() - self._t0
        mine = _ACTIVE.get(threading.get_ident(), [])
        if self in mine:
            mine.remove(self)

    @property
    def build_s(self) -> float:
        """Tracing + lowering + compiling."""
        return self.trace_s + self.lower_s + self.compile_s

    @property
    def run_s(self) -> float:
        """The rest of the block: running the programs, host transfers, Python."""
        return max(0.0, self.total_s - self.build_s)

    def to_dict(self) -> dict:
        return {"flax_s": round(self.total_s, 3), "flax_trace_s": round(self.trace_s, 3),
                "flax_lower_s": round(self.lower_s, 3), "flax_compile_s": round(self.compile_s, 3),
                "flax_run_s": round(self.run_s, 3), "flax_programs": self.programs,
                "flax_cache_hits": self.cache_hits}


# The parts of a --grads check (parity.grad_check.GradCheck.judge), as report.md names them.
GRAD_PARTS = (("gold", "float64 gold"), ("torch", "PyTorch"), ("flax", "Flax"), ("compare", "comparing"),
              ("adamw", "AdamW steps"))


def summary_line(timings: dict) -> str:
    """'PyTorch 12.3 s (gold 4.1 s) · Flax 20.1 s = 15.2 s building 57 programs + 4.9 s running' for report.md;
    with Flax runs side by side (parity.jobs), also how long the main thread waited for them."""
    steps = timings.get("steps", {})
    flax = sum(v.get("flax_s", 0.0) for v in steps.values())
    build = sum(v.get("flax_trace_s", 0.0) + v.get("flax_lower_s", 0.0) + v.get("flax_compile_s", 0.0)
                for v in steps.values())
    programs = sum(v.get("flax_programs", 0) for v in steps.values())
    hits = sum(v.get("flax_cache_hits", 0) for v in steps.values())
    torch_s = sum(v.get("torch_s", 0.0) for v in steps.values())
    gold = sum(v.get("torch_s", 0.0) for k, v in steps.items() if k.endswith("/float64 gold"))
    waited = timings.get("flax_wait_s")
    side = "" if waited is None or waited >= 0.95 * flax else \
        f" (side by side with PyTorch: the main thread waited {waited:.1f} s for it)"
    grads = sum(v.get("grads_s", 0.0) for v in steps.values())
    tail = f" · gradient checks (--grads, both frameworks) {grads:.1f} s" if grads > 0 else ""
    parts = {name: sum(v.get(f"grads_{part}_s", 0.0) for v in steps.values()) for part, name in GRAD_PARTS}
    if grads > 0 and any(parts.values()):
        tail += " (" + ", ".join(f"{name} {sec:.1f} s" for name, sec in parts.items()) + ")"
    if "seconds" in timings:
        tail += f" · {timings['seconds']:.1f} s in all"
    return (f"PyTorch {torch_s:.1f} s (float64 gold {gold:.1f} s) · Flax {flax:.1f} s = {build:.1f} s tracing, "
            f"lowering and compiling {programs} programs ({hits} from the persistent cache) + "
            f"{max(0.0, flax - build):.1f} s running and transfers{side} · comparing "
            f"{timings.get('compare_s', 0.0):.1f} s{tail}")
