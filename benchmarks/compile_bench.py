"""Compile time, run time and output drift of one BART program under each XLA option set.

    python -m benchmarks.compile_bench [--quick] [--shapes quick,base] [--dtypes float32,bfloat16,float16]
                                       [--out reports/bench/compile.json]

The program is the parity gate's forward pass: the `lm` head over 3 x 64 tokens (3 x 32 for the tiny
config, whose positions stop at 40) with every hidden state and attention map. One child process per
shape and dtype lowers it once and compiles that same lowered module with each option set, after a
warm-up compile of a trivial program: `optimized` (XLA's default), `O0` (backend optimisation off,
the previous `flax_bart.FAST_COMPILE`) and `fast` (the current `FAST_COMPILE`: also XLA:CPU's older
elemental emitters instead of its fusion emitters). Compile seconds are wall time and CPU time (CPU
time above wall time means XLA compiled on several cores); run seconds are the median of `repeats`
calls after one warm-up call, the variants alternated. Drift is each variant's largest |difference|
from `optimized`, over the logits and every hidden state, divided by their RMS. `--quick`: the tiny
config in float32 only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import BART_BASE, environment, write_json

VARIANTS = {
    "optimized": None,
    "O0": {"xla_backend_optimization_level": 0},
    "fast": "FAST_COMPILE",
}


def _child(shape_name: str, dtype: str, repeats: int) -> dict:
    import resource
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from flax_bart import FAST_COMPILE, BartConfig, FlaxBartForConditionalGeneration
    from parity.demo import QUICK_SHAPE

    shape = QUICK_SHAPE if shape_name == "quick" else BART_BASE
    cfg = BartConfig(**shape)
    model = FlaxBartForConditionalGeneration(cfg, seed=0, dtype=getattr(jnp, dtype))
    length = min(64, cfg.max_position_embeddings - 8)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (3, length)).astype(np.int32)
    mask = np.ones_like(ids)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape)

    def forward(params, ids, mask):
        out = model.module.apply({"params": params}, ids, mask, ids, mask, pos, pos, output_hidden_states=True,
                                 output_attentions=True, deterministic=True)
        return out.logits, out.decoder_hidden_states + out.encoder_hidden_states

    lowered = jax.jit(forward).lower(model.params, ids, mask)
    jax.jit(lambda x: x * 2 + 1).lower(np.float32(1)).compile()   # LLVM's one-off start-up
    compiled, result = {}, {}
    for name, opts in VARIANTS.items():
        opts = FAST_COMPILE if opts == "FAST_COMPILE" else opts
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        compiled[name] = lowered.compile(opts) if opts else lowered.compile()
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        result[name] = {"compile_s": round(wall, 3), "compile_cpu_s": round(cpu, 3)}
    outputs, samples = {}, {name: [] for name in compiled}
    for name, fn in compiled.items():   # warm-up call, kept for the drift
        outputs[name] = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(
            jax.block_until_ready(fn(model.params, ids, mask)))]
    for _ in range(repeats):
        for name, fn in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(model.params, ids, mask))
            samples[name].append(time.perf_counter() - t0)
    ref = outputs["optimized"]
    for name in compiled:
        drift = max(float(np.max(np.abs(a - b)) / (np.sqrt(np.mean(b * b)) or 1.0))
                    for a, b in zip(outputs[name], ref))
        result[name].update(run_median_s=round(statistics.median(samples[name]), 4),
                            run_samples_s=[round(x, 4) for x in samples[name]], drift_rel_rms=drift)
    return {"shape": shape_name, "dtype": dtype, "tokens": f"3x{length}", "variants": result,
            "fast_compile": dict(FAST_COMPILE)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny config, float32 only")
    p.add_argument("--shapes", default="quick,base", help="comma-separated among quick (the demo's tiny config), base")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join("reports", "bench"))
    p.add_argument("--child", nargs=2, metavar=("SHAPE", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.repeats)))
        return 0
    shapes = ["quick"] if args.quick else [s.strip() for s in args.shapes.split(",") if s.strip()]
    dtypes = ["float32"] if args.quick else [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [s for s in shapes if s not in ("quick", "base")] + [d for d in dtypes if d not in
                                                               ("float32", "bfloat16", "float16")]
    if bad or not shapes or not dtypes:
        print(f"compile_bench: unknown shape or dtype {bad}; expected shapes quick,base and dtypes "
              "float32,bfloat16,float16", file=sys.stderr)
        return 2
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_bench", "--child", shape, dtype,
                                   "--repeats", str(1 if args.quick else args.repeats)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"compile_bench: {shape} {dtype} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            v = row["variants"]
            print(f"{shape} {dtype} {row['tokens']}: " + "; ".join(
                f"{n} compile {x['compile_s']:.2f} s (cpu {x['compile_cpu_s']:.2f} s) run {x['run_median_s']:.3f} s"
                f" drift {x['drift_rel_rms']:.1e}" for n, x in v.items()), flush=True)
    data = {"benchmark": "compile", "quick": args.quick, "environment": environment(), "results": rows}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "compile.json" if not args.quick else "compile-quick.json"), data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
