"""The parity gate's preparation per head, outside both frameworks' runs: the head's PyTorch weights
(`Checkpoint.reference_weights`, drawing head weights the checkpoint lacks), its Flax params
(`Checkpoint.flax_weights`), the float32 reference and its bf16/fp16/float64 copies
(`parity.harness._reference`, `_cast_reference`) and the Flax params cast per dtype (`_cast_params`).

    python -m benchmarks.gate_prep_bench [--quick] [--heads qa,lm,cls] [--repeats 3] [--out reports/bench/gate_prep.json]

Each repeat opens the checkpoint afresh (so a drawn head pays for its draws again) and times each call
in the order the gate makes them; medians per (call, head) and of the whole preparation. The
checkpoint is the demo's (BART-base-shaped; `--quick`: the tiny config), built on first use. An A/B
against older code: put that checkout's root first on sys.path and run this file with runpy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks.common import environment, write_json

DTYPES = ("float32", "bfloat16", "float16")


def prepare_once(path: str, heads: list[str]) -> dict[str, float]:
    """Seconds per `call/head` for one preparation of `heads`, as the gate makes it."""
    import torch

    from parity import harness
    from parity.checkpoint import open_checkpoint
    from parity.harness import _cast_reference, _reference, flax_model
    from parity.options import Options

    def cast_reference(base, dtype, ckpt, head, sd, opts):
        try:
            return _cast_reference(base, dtype, torch.device("cpu"), ckpt, head, sd, opts)
        except TypeError:   # the code before commit 3483759 (an A/B run: its parity on sys.path first)
            return _cast_reference(base, dtype, torch.device("cpu"))

    def cast_params(model, params, dtype):
        if hasattr(harness, "_cast_params"):
            return harness._cast_params(model, params, dtype)
        return {"float32": model.to_fp32, "float16": model.to_fp16, "bfloat16": model.to_bf16}[dtype](params)

    opts = Options()
    times: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        return out

    ckpt = timed("open_checkpoint", lambda: open_checkpoint(path))
    for head in heads:
        sd = timed(f"reference_weights/{head}", lambda: ckpt.reference_weights(head, opts.seed))
        params = timed(f"flax_weights/{head}", lambda: ckpt.flax_weights(head, sd))
        base = timed(f"reference/{head}", lambda: _reference(ckpt, head, sd, opts))
        for dtype in ("bfloat16", "float16", "float64"):
            timed(f"cast_reference/{head}", lambda: cast_reference(base, dtype, ckpt, head, sd, opts))
        for dtype in DTYPES:
            model = flax_model(ckpt.config, head, dtype)
            timed(f"cast_params/{head}", lambda: cast_params(model, params, dtype))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate_prep_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny config, one repeat")
    p.add_argument("--heads", default="qa,lm,cls", help="comma-separated heads, in the gate's order")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default=None, help="demo checkpoint cache (default: the demo's)")
    p.add_argument("--out", default=os.path.join("reports", "bench", "gate_prep.json"))
    args = p.parse_args(argv)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    from parity.options import HEADS

    bad = [h for h in heads if h not in HEADS]
    if not heads or bad or args.repeats < 1:
        print(f"gate_prep_bench: --heads {args.heads!r} (expected some of {', '.join(HEADS)}) and --repeats >= 1 "
              f"(got {args.repeats})", file=sys.stderr)
        return 2
    from pathlib import Path

    from parity.demo import default_cache, ensure_checkpoint

    cache = Path(args.cache_dir) if args.cache_dir else default_cache()
    path = str(ensure_checkpoint(args.quick, cache, log=lambda msg: print(msg, file=sys.stderr)))
    repeats = 1 if args.quick else args.repeats
    runs = [prepare_once(path, heads) for _ in range(repeats)]
    medians = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    totals = [round(sum(r.values()), 3) for r in runs]
    for k, v in medians.items():
        print(f"{k:<28} {v:7.3f} s")
    print(f"{'total (median)':<28} {statistics.median(totals):7.3f} s  (runs: {totals})")
    write_json(args.out, {"benchmark": "gate_prep", "quick": args.quick, "checkpoint": path, "heads": heads,
                          "repeats": repeats, "environment": environment(), "median_s": medians,
                          "total_s": totals})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
