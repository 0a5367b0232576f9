"""The parity metrics' float64 reductions (`parity.metrics.compare`) at several chunk sizes.

A gradient check compares BART-base's 140M gradient values per case and dtype, against a float64 gold,
and a forward check compares logits rows of 50,265 classes: both stream through `parity.metrics` in
float64 chunks of `CHUNK` elements. This times one comparison of each kind per chunk size, in
interleaved rounds, and checks that every size gives the same metrics (sums to 1e-9, maxima exactly).

    python -m benchmarks.metrics_bench [--quick] [--repeats N] [--out reports/bench/metrics.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import environment, interleaved_times, write_json

CHUNKS = (1 << 18, 1 << 16, 1 << 14)


def _cases(quick: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 200_000 if quick else 20_000_000
    ref = rng.standard_normal(n, dtype=np.float32)
    cand = ref + 1e-6 * rng.standard_normal(n, dtype=np.float32)
    rows = (4, 999) if quick else (256, 50265)
    logits = rng.standard_normal(rows, dtype=np.float32)
    return {"grad (ref, cand, float64 gold)": dict(reference=ref, candidate=cand, gold=ref.astype(np.float64),
                                                   kind="grad"),
            "logits rows": dict(reference=logits, candidate=logits + 1e-5 * rng.standard_normal(rows, dtype=np.float32),
                                kind="logits")}


def run_case(name: str, arrays: dict, repeats: int) -> dict:
    from parity import metrics

    def compare_at(chunk):
        def fn():
            saved, metrics.CHUNK = metrics.CHUNK, chunk
            try:
                return metrics.compare("x", arrays["reference"], arrays["candidate"], gold=arrays.get("gold"),
                                       kind=arrays["kind"])
            finally:
                metrics.CHUNK = saved
        return fn

    fns = {str(c): compare_at(c) for c in CHUNKS}
    results = {k: f() for k, f in fns.items()}       # warm, and the values to check
    first = results[str(CHUNKS[0])]
    for k, m in results.items():
        assert m.max_abs_err == first.max_abs_err, (name, k)
        assert abs(m.mean_abs_err - first.mean_abs_err) <= 1e-9 * abs(first.mean_abs_err), (name, k)
    timings = interleaved_times(fns, repeats)
    size = int(arrays["reference"].size)
    return {"case": name, "elements": size, "timings": timings,
            "ns_per_element": {k: v["median_s"] / size * 1e9 for k, v in timings.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metrics_bench")
    p.add_argument("--quick", action="store_true", help="small arrays")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/metrics.json")
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    results = [run_case(name, arrays, repeats) for name, arrays in _cases(args.quick).items()]
    for r in results:
        print(f"{r['case']} ({r['elements']:,} elements): " + "  ".join(
            f"CHUNK {k}: {v['median_s'] * 1e3:.1f} ms" for k, v in r["timings"].items()), flush=True)
    from parity.metrics import CHUNK

    write_json(args.out, {"benchmark": "metrics", "quick": args.quick, "repeats": repeats, "chunk_in_use": CHUNK,
                          "environment": environment(), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
