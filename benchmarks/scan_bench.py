"""Run time of scanned vs unrolled layer stacks (flax_bart.layer_scan), side by side in one process:
the QA forward of BART-base at 1x128 and 4x256, fp32, medians of `repeats` calls after a warm-up,
the two variants alternated twice so that load from other processes hits both.

    python -m benchmarks.scan_bench [--quick] [--repeats 5] [--out reports/bench/scan.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import SHAPES, environment, median_time, write_json


def run(shape: str, sizes, repeats: int) -> list[dict]:
    import jax

    from flax_bart import BartConfig, FlaxBartForQuestionAnswering
    from flax_bart.host_memory import tune_host_allocator

    tune_host_allocator()
    cfg = BartConfig(**SHAPES[shape])
    models = {"scan": FlaxBartForQuestionAnswering(cfg, seed=0, scan_layers=True)}
    models["unrolled"] = FlaxBartForQuestionAnswering(cfg, _do_init=False, scan_layers=False)
    params = models["scan"].params
    rows = []
    for batch, length in sizes:
        ids = np.random.default_rng(0).integers(4, cfg.vocab_size, (batch, length)).astype(np.int32)
        mask = np.ones_like(ids)
        times = {"scan": [], "unrolled": []}
        for _ in range(2):
            for name, model in models.items():
                fn = lambda m=model: jax.block_until_ready(m(ids, attention_mask=mask, params=params).start_logits)  # noqa: E731
                times[name].append(median_time(fn, repeats)["median_s"])
        rows.append({"batch": batch, "length": length, "median_s": times,
                     "scan/unrolled": float(np.median(times["scan"]) / np.median(times["unrolled"]))})
        print(f"{shape} {batch}x{length}: scan {[round(t * 1e3) for t in times['scan']]} ms, unrolled "
              f"{[round(t * 1e3) for t in times['unrolled']]} ms", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scan_bench")
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="reports/bench/scan.json")
    args = p.parse_args(argv)
    shape, sizes = ("tiny", [(1, 8)]) if args.quick else ("base", [(1, 128), (4, 256)])
    rows = run(shape, sizes, 2 if args.quick else args.repeats)
    write_json(args.out, {"benchmark": "scan", "quick": args.quick, "shape": shape, "results": rows,
                          "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
