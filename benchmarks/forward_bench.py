"""Forward latency side by side: flax_bart vs transformers' PyTorch BART vs the parity reference.

Same random weights and inputs for all three; each warmed up once, then timed in interleaved rounds
(reference, transformers, flax, reference, ...) so that a shared machine's load falls on all three
alike. Ratios are flax time / PyTorch time (< 1 means flax is faster): the ratio of the medians, and
the median of the per-round ratios ("paired").

    python -m benchmarks.forward_bench [--quick] [--repeats N] [--dtype float32] [--out reports/bench/forward.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import (HEAD_OUTPUT, SHAPES, add_allocator_flag, apply_allocator, environment, interleaved_times,
                               paired_ratio, write_json)

HEADS_PT = {"qa": "BartForQuestionAnswering", "cls": "BartForSequenceClassification",
            "lm": "BartForConditionalGeneration"}
FULL_MATRIX = [
    # (shape, head, dtype, batch, length)
    *[("base", h, d, 4, 256) for h in ("qa", "cls", "lm") for d in ("float32", "bfloat16")],
    ("base", "qa", "float32", 1, 128),
    ("base", "qa", "float32", 1, 1024),   # one long sequence: the query-blocked attention on CPU
    ("large", "qa", "float32", 4, 256),
    ("large", "qa", "bfloat16", 4, 256),
]
QUICK_MATRIX = [("tiny", "qa", "float32", 2, 16), ("tiny", "cls", "bfloat16", 2, 16), ("tiny", "lm", "float32", 2, 16)]


def _inputs(batch, length, vocab, eos=2):
    ids = np.random.default_rng(0).integers(4, vocab, size=(batch, length)).astype(np.int32)
    ids[:, -1] = eos  # one <eos> per row (sequence classification reads it)
    return ids, np.ones_like(ids)


def run_case(shape, head, dtype, batch, length, repeats, with_transformers=True):
    """One case: build the three (parity reference, transformers if installed, flax_bart), warm each
    once (flax_bart's first call, trace + compile + run, is recorded), then time them in `repeats`
    interleaved rounds. Ratios: the medians' ratio, and the median of the per-round ratios."""
    import time

    import jax
    import jax.numpy as jnp
    import torch

    from convert import pt_to_flax
    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES
    from parity.reference import build_reference

    cfg = BartConfig(**SHAPES[shape])
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    ref = build_reference(cfg, head, dtype=torch.float32, seed=0)
    state = ref.hf_state_dict(tied_copies=True)
    ref = build_reference(cfg, head, state, dtype=tdtype)
    ids, mask = _inputs(batch, length, cfg.vocab_size)
    ti, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def t_reference():
        with torch.inference_mode():
            ref.forward(ti, attention_mask=tm)

    fns = {"reference": t_reference}
    transformers = None
    if with_transformers:
        try:
            import transformers
        except ImportError:
            transformers = None
    if transformers is not None:
        hf = getattr(transformers, HEADS_PT[head])(transformers.BartConfig(**SHAPES[shape]))
        hf.load_state_dict({k: v for k, v in state.items()}, strict=False)
        hf = hf.to(tdtype).eval()

        def t_transformers():
            with torch.inference_mode():
                hf(input_ids=ti, attention_mask=tm, use_cache=False)

        fns["transformers"] = t_transformers
    params = pt_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg, head=head)
    del state
    model = MODEL_CLASSES[head](cfg, dtype=getattr(jnp, dtype), _do_init=False)
    params = jax.device_put(model.to_bf16(params) if dtype == "bfloat16" else params)
    name = HEAD_OUTPUT[head]

    def t_flax():
        jax.block_until_ready(getattr(model(ids, attention_mask=mask, params=params), name))

    fns["flax"] = t_flax
    first_call = {}
    for key, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first_call[key] = time.perf_counter() - t0
    timings = interleaved_times(fns, repeats)
    timings["flax"]["first_call_s"] = first_call["flax"]
    ratios = {f"flax/{k}": timings["flax"]["median_s"] / v["median_s"] for k, v in timings.items() if k != "flax"}
    paired = {f"flax/{k}": paired_ratio(timings["flax"], v) for k, v in timings.items() if k != "flax"}
    return {"shape": shape, "head": head, "dtype": dtype, "batch": batch, "length": length,
            "timings": timings, "ratios": ratios, "paired_ratios": paired}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forward_bench")
    p.add_argument("--quick", action="store_true", help="tiny model smoke run")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/forward.json")
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="only the matrix's cases in this dtype")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    import torch

    torch.set_num_threads(2)
    matrix = QUICK_MATRIX if args.quick else FULL_MATRIX
    if args.dtype:
        matrix = [case for case in matrix if case[2] == args.dtype]
    repeats = args.repeats or (2 if args.quick else 5)
    results = []
    for case in matrix:
        r = run_case(*case, repeats=repeats, with_transformers=not args.no_transformers)
        results.append(r)
        t = r["timings"]
        print(f"{r['shape']:>5} {r['head']:>3} {r['dtype']:>8} {r['batch']}x{r['length']:<4} "
              + "  ".join(f"{k} {v['median_s'] * 1e3:8.1f} ms" for k, v in t.items())
              + "  " + "  ".join(f"{k} {v:.2f} (paired {r['paired_ratios'][k]:.2f})" for k, v in r["ratios"].items()),
              flush=True)
    write_json(args.out, {"benchmark": "forward", "quick": args.quick, "repeats": repeats,
                          "environment": environment(), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
