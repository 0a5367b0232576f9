"""flax_bart's CPU time per compute dtype, side by side in one process: the LM forward and greedy
generation of one model in float32, bfloat16 and float16 (the parity gate runs all three).

    python -m benchmarks.dtype_bench [--quick] [--repeats N] [--out reports/bench/dtypes.json]

Same random weights (cast per dtype) and inputs for every dtype: batch 2 x 32 source tokens, 16 new
tokens (greedy, no early stop). First call (trace + compile + run) and the median of `repeats` calls
after it, the dtypes alternated call by call so that a change in the machine's load hits all alike.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, environment, interleaved_times, write_json

DTYPES = ("float32", "bfloat16", "float16")
FULL = dict(shape="base", batch=2, source_length=32, new_tokens=16, repeats=5)
QUICK = dict(shape="tiny", batch=2, source_length=8, new_tokens=4, repeats=2)


def run(shape: str, batch: int, source_length: int, new_tokens: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from flax_bart import BartConfig, FlaxBartForConditionalGeneration

    config = BartConfig(**SHAPES[shape])
    fp32 = FlaxBartForConditionalGeneration(config, seed=0)
    ids = np.random.default_rng(0).integers(4, config.vocab_size, (batch, source_length)).astype(np.int32)
    mask = np.ones_like(ids)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)
    calls = {}
    for dtype in DTYPES:
        model = FlaxBartForConditionalGeneration(config, dtype=getattr(jnp, dtype), _do_init=False)
        cast = {"float32": fp32.to_fp32, "bfloat16": fp32.to_bf16, "float16": fp32.to_fp16}[dtype]
        params = jax.block_until_ready(jax.device_put(cast(fp32.params)))

        def forward(model=model, params=params):
            return np.asarray(model(ids, attention_mask=mask, decoder_input_ids=ids, params=params).logits)

        def generate(model=model, params=params):
            return np.asarray(model.generate(ids, attention_mask=mask, params=params, **settings).sequences)

        calls[dtype] = {"forward": forward, "generate": generate}
    results = {d: {} for d in DTYPES}
    for what in ("forward", "generate"):
        for dtype in DTYPES:
            t0 = time.perf_counter()
            out = calls[dtype][what]()
            results[dtype][what] = {"first_call_s": time.perf_counter() - t0}
            if what == "generate":
                results[dtype]["generated_shape"] = list(out.shape)
        timed = interleaved_times({dtype: calls[dtype][what] for dtype in DTYPES}, repeats)
        for dtype in DTYPES:
            results[dtype][what].update(timed[dtype])
    return {"case": dict(shape=shape, batch=batch, source_length=source_length, new_tokens=new_tokens,
                         repeats=repeats), "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dtype_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/dtypes.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    case = dict(QUICK if args.quick else FULL)
    if args.repeats:
        case["repeats"] = args.repeats
    data = run(**case)
    for dtype, r in data["results"].items():
        print(f"{dtype:>8}: " + "  ".join(f"{w} {r[w]['median_s'] * 1e3:8.1f} ms (first {r[w]['first_call_s']:.2f} s)"
                                         for w in ("forward", "generate")), flush=True)
    write_json(args.out, {"benchmark": "dtypes", "quick": args.quick, **data, "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
