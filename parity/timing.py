"""Where the gate's time goes: per head and dtype, PyTorch vs Flax, and on the Flax side compile vs the rest.

`CompileMeter` listens to JAX's own monitoring events while a block runs: the seconds spent tracing
(jaxpr), lowering (MLIR) and compiling (XLA backend), how many programs were compiled, and how many
came from the persistent compilation cache. Everything else the Flax side spent in that block is
running the programs and moving results to the host (`run_s`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclass
class CompileMeter:
    """Context manager: `trace_s`, `lower_s`, `compile_s`, `programs`, `cache_hits` and `total_s` of a block."""

    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    programs: int = 0
    cache_hits: int = 0
    total_s: float = 0.0
    _t0: float = field(default=0.0, repr=False)

    def _duration(self, event: str, seconds: float, **_kwargs) -> None:
        if event == _TRACE:
            self.trace_s += seconds
        elif event == _LOWER:
            self.lower_s += seconds
        elif event == _COMPILE:
            self.compile_s += seconds
            self.programs += 1

    def _event(self, event: str, **_kwargs) -> None:
        if event == _CACHE_HIT:
            self.cache_hits += 1

    def __enter__(self) -> "CompileMeter":
        import jax.monitoring as mon

        mon.register_event_duration_secs_listener(self._duration)
        mon.register_event_listener(self._event)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring as mon

        self.total_s += time.perf_counter() - self._t0
        mon.unregister_event_duration_listener(self._duration)
        mon.unregister_event_listener(self._event)

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


def summary_line(timings: dict) -> str:
    """'PyTorch 12.3 s (gold 4.1 s) · Flax 20.1 s = 15.2 s building 57 programs + 4.9 s running' for report.md."""
    steps = timings.get("steps", {})
    flax = sum(v.get("flax_s", 0.0) for v in steps.values())
    build = sum(v.get("flax_trace_s", 0.0) + v.get("flax_lower_s", 0.0) + v.get("flax_compile_s", 0.0)
                for v in steps.values())
    programs = sum(v.get("flax_programs", 0) for v in steps.values())
    hits = sum(v.get("flax_cache_hits", 0) for v in steps.values())
    torch_s = sum(v.get("torch_s", 0.0) for v in steps.values())
    gold = sum(v.get("torch_s", 0.0) for k, v in steps.items() if k.endswith("/float64 gold"))
    return (f"PyTorch {torch_s:.1f} s (float64 gold {gold:.1f} s) · Flax {flax:.1f} s = {build:.1f} s tracing, "
            f"lowering and compiling {programs} programs ({hits} from the persistent cache) + "
            f"{max(0.0, flax - build):.1f} s running and transfers · comparing {timings.get('compare_s', 0.0):.1f} s")
