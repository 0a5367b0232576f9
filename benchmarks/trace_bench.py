"""What building a program costs before XLA compiles it: tracing the Flax model, and `init_cache`.

BART-base shape, random weights, float32, `scan_layers` as the parity gate builds its models ("all").
Each figure is the median over `repeats` new shapes (a new shape is what makes JAX trace again):

- `forward trace`: `jax.jit(...).trace` of the `lm` forward with every hidden state and attention map
  (2 rows of 10, 11, ... tokens), tracing only, nothing lowered or compiled; `forward trace, unrolled`:
  the same with `scan_layers=False` (the models' default), which traces every layer;
- `init_cache lm` / `init_cache causal`: a whole `init_cache` call for a new `max_length` (tracing,
  lowering, compiling and running the program that creates the cache), `lm` with 2 x 30 encoder states.

    python -m benchmarks.trace_bench [--quick] [--repeats 5] [--out reports/bench/trace.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from benchmarks.common import SHAPES, environment, write_json


def _seconds(fn) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def run(shape: str, repeats: int) -> dict:
    import jax

    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES

    cfg = BartConfig(**SHAPES[shape])
    lm = MODEL_CLASSES["lm"](cfg, seed=0, scan_layers="all")
    unrolled = MODEL_CLASSES["lm"](cfg, _do_init=False, scan_layers=False)
    causal = MODEL_CLASSES["causal"](cfg, seed=0, scan_layers="all")
    enc = np.zeros((2, 30, cfg.d_model), np.float32)
    lm.init_cache(2, 3, enc)                       # the first call of each pays JAX's own start-up
    causal.init_cache(2, 3)
    lengths = [10 + i for i in range(repeats)]

    def trace(n, model=lm):
        ids = np.full((2, n), 5, np.int32)
        pos = np.broadcast_to(np.arange(n, dtype=np.int32), (2, n))
        fn = lambda p, a: model.module.apply({"params": p}, a, np.ones_like(ids), a, np.ones_like(ids), pos, pos,  # noqa: E731
                                          output_hidden_states=True, output_attentions=True)
        t0 = time.perf_counter()
        jax.jit(fn).trace(lm.params, ids)
        return time.perf_counter() - t0

    samples = {
        "forward trace": [trace(n) for n in lengths],
        "forward trace, unrolled": [trace(n, unrolled) for n in lengths],
        "init_cache lm": [_seconds(lambda n=n: lm.init_cache(2, n, enc)) for n in lengths],
        "init_cache causal": [_seconds(lambda n=n: causal.init_cache(2, n)) for n in lengths],
    }
    return {name: {"median_s": statistics.median(v), "samples_s": v} for name, v in samples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trace_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: the tiny config, 2 shapes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="reports/bench/trace.json")
    args = p.parse_args(argv)
    shape, repeats = ("tiny", 2) if args.quick else ("base", args.repeats)
    if repeats < 1:
        print(f"trace_bench: --repeats {repeats}; expected >= 1", file=sys.stderr)
        return 2
    results = run(shape, repeats)
    for name, r in results.items():
        print(f"{name}: median {r['median_s'] * 1000:.0f} ms over {repeats} new shapes ({shape})")
    write_json(args.out, {"benchmark": "trace", "quick": args.quick, "shape": shape, "environment": environment(),
                          "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
