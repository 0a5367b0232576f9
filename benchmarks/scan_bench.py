"""Run time of scanned vs unrolled layer stacks (flax_bart.layer_scan), side by side in one process:
the QA forward of BART-base at 1x128 and 4x256, fp32, medians of `repeats` calls after a warm-up,
the two variants alternated twice so that load from other processes hits both. `--generate` adds
greedy generation (BART-base, 4 x 128 source tokens, 32 new tokens, float32/bfloat16/float16) with
the decoding steps unrolled (`scan_layers=True`) and scanned (`scan_layers="all"`): the first call
(compiling included) and the warm median.

    python -m benchmarks.scan_bench [--quick] [--generate] [--repeats 5] [--out reports/bench/scan.json]
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


def run_generate(shape: str, batch: int, source: int, new: int, repeats: int) -> list[dict]:
    import time

    import jax
    import jax.numpy as jnp

    from flax_bart import BartConfig, FlaxBartForConditionalGeneration

    cfg = BartConfig(**SHAPES[shape])
    ids = np.random.default_rng(0).integers(4, cfg.vocab_size, (batch, source)).astype(np.int32)
    kw = dict(attention_mask=np.ones_like(ids), max_new_tokens=new, min_length=0, num_beams=1, do_sample=False,
              eos_token_id=None, forced_eos_token_id=None)
    rows = []
    for dtype in ("float32", "bfloat16", "float16"):
        jdtype = jnp.dtype(dtype)
        models = {"steps unrolled": FlaxBartForConditionalGeneration(cfg, dtype=jdtype, seed=0, scan_layers=True)}
        models["steps scanned"] = FlaxBartForConditionalGeneration(cfg, dtype=jdtype, _do_init=False,
                                                                   scan_layers="all")
        params = jax.tree_util.tree_map(lambda a: a.astype(jdtype), models["steps unrolled"].params)
        first, times, seqs = {}, {name: [] for name in models}, {}
        for name, model in models.items():
            t0 = time.perf_counter()
            seqs[name] = np.asarray(model.generate(ids, params=params, **kw).sequences)
            first[name] = time.perf_counter() - t0
        for _ in range(2):
            for name, model in models.items():
                fn = lambda m=model: jax.block_until_ready(m.generate(ids, params=params, **kw).sequences)  # noqa: E731
                times[name].append(median_time(fn, repeats, warmup=0)["median_s"])
        med = {name: float(np.median(t)) for name, t in times.items()}
        rows.append({"dtype": dtype, "batch": batch, "source": source, "new_tokens": new, "first_call_s": first,
                     "median_s": times, "tokens_per_s": {n: batch * new / m for n, m in med.items()},
                     "same_tokens": bool(np.array_equal(*seqs.values()))})
        print(f"generate {dtype} {batch}x{source}+{new}: first call "
              + ", ".join(f"{n} {first[n]:.2f} s" for n in models) + "; warm "
              + ", ".join(f"{n} {[round(t, 3) for t in times[n]]} s" for n in models), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scan_bench")
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--generate", action="store_true", help="also greedy generation, decoding steps unrolled vs scanned")
    p.add_argument("--out", default="reports/bench/scan.json")
    args = p.parse_args(argv)
    shape, sizes = ("tiny", [(1, 8)]) if args.quick else ("base", [(1, 128), (4, 256)])
    rows = run(shape, sizes, 2 if args.quick else args.repeats)
    data = {"benchmark": "scan", "quick": args.quick, "shape": shape, "results": rows}
    if args.generate:
        data["generate"] = run_generate(shape, *((2, 8, 3) if args.quick else (4, 128, 32)),
                                        2 if args.quick else 3)
    write_json(args.out, {**data, "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
