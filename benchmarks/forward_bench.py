"""Forward latency side by side: flax_bart vs transformers' PyTorch BART vs the parity reference.

Same random weights and inputs for all three, warm-up then the median of several runs, ratios
reported as flax time / PyTorch time (< 1 means flax is faster).

    python -m benchmarks.forward_bench [--quick] [--repeats N] [--out reports/bench/forward.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, environment, median_time, write_json

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
    timings = {}

    def t_reference():
        with torch.inference_mode():
            ref.forward(ti, attention_mask=tm)

    timings["reference"] = median_time(t_reference, repeats)
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

            timings["transformers"] = median_time(t_transformers, repeats)
            del hf
    params = pt_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg, head=head)
    model = MODEL_CLASSES[head](cfg, dtype=getattr(jnp, dtype), _do_init=False)
    params = jax.device_put(model.to_bf16(params) if dtype == "bfloat16" else params)
    name = {"qa": "start_logits", "cls": "logits", "lm": "logits"}[head]

    def t_flax():
        jax.block_until_ready(getattr(model(ids, attention_mask=mask, params=params), name))

    import time

    t0 = time.perf_counter()
    t_flax()
    compile_s = time.perf_counter() - t0
    timings["flax"] = median_time(t_flax, repeats, warmup=0)
    timings["flax"]["first_call_s"] = compile_s
    ratios = {f"flax/{k}": timings["flax"]["median_s"] / v["median_s"] for k, v in timings.items() if k != "flax"}
    return {"shape": shape, "head": head, "dtype": dtype, "batch": batch, "length": length,
            "timings": timings, "ratios": ratios}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.forward_bench")
    p.add_argument("--quick", action="store_true", help="tiny model smoke run")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/forward.json")
    p.add_argument("--no-transformers", action="store_true")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    import torch

    torch.set_num_threads(2)
    matrix = QUICK_MATRIX if args.quick else FULL_MATRIX
    repeats = args.repeats or (2 if args.quick else 5)
    results = []
    for case in matrix:
        r = run_case(*case, repeats=repeats, with_transformers=not args.no_transformers)
        results.append(r)
        t = r["timings"]
        print(f"{r['shape']:>5} {r['head']:>3} {r['dtype']:>8} {r['batch']}x{r['length']:<4} "
              + "  ".join(f"{k} {v['median_s'] * 1e3:8.1f} ms" for k, v in t.items())
              + "  " + "  ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()), flush=True)
    write_json(args.out, {"benchmark": "forward", "quick": args.quick, "repeats": repeats,
                          "environment": environment(), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
