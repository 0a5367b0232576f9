"""float32 attention on CPU: softmax, then the values (4.x Flax BART's order, and PyTorch eager's) vs
flax_bart's post-normalised form (`flax_bart.modules._attend`: (e v) / sum(e)), for time and for
distance from float64; then whole BART forwards built each way, with transformers' PyTorch BART
(its default attention, SDPA) timed in the same interleaved rounds.

Attention cases (one of more than `modules.QUERY_BLOCK` queries also times the query-blocked form the
models use there on a CPU): random q, k, v (q scaled by 1/sqrt(head size)), half the keys of the first row
masked. Forwards: the same weights and inputs in every arm; each flax arm is compiled once, then all
arms run round by round (`benchmarks.common.interleaved_times`).

    python -m benchmarks.attention_bench [--quick] [--repeats N] [--out reports/bench/attention.json]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from benchmarks.common import (HEAD_OUTPUT, SHAPES, environment, interleaved_times, paired_ratio, ratios, rel_err,
                               write_json)

CORES = [  # (batch, heads, queries, keys, head size): BART-base / -large at 4 x 256, a decoding step, one long row
    (4, 12, 256, 256, 64), (4, 16, 256, 256, 64), (4, 12, 1, 256, 64), (1, 12, 1024, 1024, 64),
]
QUICK_CORES = [(2, 4, 16, 16, 8), (1, 2, 300, 300, 8)]
# A case of more than modules.QUERY_BLOCK queries adds the arm the models run on a CPU there,
# "query_blocked" (`modules._blocked_attention`: blocks of queries, probabilities first).
FORWARD = [("base", "qa", 4, 256), ("base", "lm", 2, 128), ("large", "qa", 4, 256)]
QUICK_FORWARD = [("tiny", "qa", 2, 16)]
ARMS = ("probs_first", "post_normalised")


@contextlib.contextmanager
def _attention_order(arm: str):
    """flax_bart traced with `arm`'s order (modules.post_normalised is read while tracing)."""
    from flax_bart import modules

    saved = modules.post_normalised
    if arm == "probs_first":
        modules.post_normalised = lambda dtype: False
    try:
        yield
    finally:
        modules.post_normalised = saved



def core_case(b, h, t, s, k, repeats):
    import jax
    import torch

    from flax_bart import modules

    rng = np.random.default_rng(0)
    q = (rng.standard_normal((b, h, t, k)) / np.sqrt(k)).astype(np.float32)
    kk, v = (rng.standard_normal((b, h, s, k)).astype(np.float32) for _ in range(2))
    bias = np.zeros((b, 1, 1, s), np.float32)
    bias[0, ..., s // 2:] = np.finfo(np.float32).min
    scores = np.einsum("bhtk,bhsk->bhts", q.astype(np.float64), kk.astype(np.float64)) + bias
    e = np.exp(scores - scores.max(-1, keepdims=True))
    gold = np.einsum("bhts,bhsk->bhtk", e / e.sum(-1, keepdims=True), v.astype(np.float64))
    args = [jax.numpy.asarray(a) for a in (q, kk, v, bias)]
    outs, fns = {}, {}
    fn = {"probs_first": lambda q, k, v, m: modules._values(modules._probs(q, k, m, np.float32, None), v, None),
          "post_normalised": lambda q, k, v, m: modules._attend(q, k, v, m, np.float32, None)[0]}
    arms = ARMS
    if t > modules.QUERY_BLOCK:
        fn["query_blocked"] = lambda q, k, v, m: modules._blocked_attention(q, k, v, m, np.float32, None)[0]
        arms = (*ARMS, "query_blocked")
    for arm in arms:
        f = jax.jit(fn[arm]).lower(*args).compile()
        outs[arm] = np.asarray(f(*args)).transpose(0, 2, 1, 3)   # back to (B, H, T, K)
        fns[arm] = (lambda f=f: jax.block_until_ready(f(*args)))
    tq, tk, tv, tm = (torch.from_numpy(a) for a in (q, kk, v, bias))
    outs["torch_eager"] = (torch.softmax(tq @ tk.transpose(-1, -2) + tm, dim=-1) @ tv).numpy()
    fns["torch_eager"] = lambda: torch.softmax(tq @ tk.transpose(-1, -2) + tm, dim=-1) @ tv
    fns["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, scale=1.0)
    timings = interleaved_times(fns, repeats)
    return {"batch": b, "heads": h, "queries": t, "keys": s, "head_size": k,
            "rel_err_vs_float64": {name: rel_err(o, gold) for name, o in outs.items()}, "timings": timings,
            **ratios(timings, "post_normalised", "probs_first", "post/probs_first")}


def forward_case(shape, head, batch, length, repeats):
    import jax
    import torch
    import transformers

    from benchmarks.forward_bench import HEADS_PT, _inputs
    from convert import pt_to_flax
    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES
    from parity.reference import build_reference

    cfg = BartConfig(**SHAPES[shape])
    state = build_reference(cfg, head, dtype=torch.float32, seed=0).hf_state_dict(tied_copies=True)
    gold_model = build_reference(cfg, head, state, dtype=torch.float64)
    ids, mask = _inputs(batch, length, cfg.vocab_size)
    ti, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
    out_name = HEAD_OUTPUT[head]
    with torch.inference_mode():
        gold = getattr(gold_model.forward(ti, attention_mask=tm), out_name).numpy()
    del gold_model
    hf = getattr(transformers, HEADS_PT[head])(transformers.BartConfig(**SHAPES[shape]))
    hf.load_state_dict(dict(state), strict=False)
    hf = hf.eval()
    params = jax.device_put(pt_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg, head=head))
    del state
    errs, fns, outs = {}, {}, {}
    for arm in ARMS:
        model = MODEL_CLASSES[head](cfg, _do_init=False)   # one per arm: a model keeps its compiled programs
        with _attention_order(arm):
            f = jax.jit(lambda p, i, m, model=model: getattr(model(i, attention_mask=m, params=p), out_name))
            f = f.lower(params, ids, mask).compile()
        outs[arm] = np.asarray(f(params, ids, mask))
        errs[arm] = rel_err(outs[arm], gold)
        fns[arm] = (lambda f=f: jax.block_until_ready(f(params, ids, mask)))
    if np.array_equal(*outs.values()):
        raise RuntimeError(f"{shape} {head}: both attention orders gave identical outputs: the arms did not differ")

    def t_transformers():
        with torch.inference_mode():
            return getattr(hf(input_ids=ti, attention_mask=tm, use_cache=False), out_name)

    errs["transformers"] = rel_err(t_transformers().numpy(), gold)
    fns["transformers"] = t_transformers
    timings = interleaved_times(fns, repeats)
    return {"shape": shape, "head": head, "batch": batch, "length": length, "output": out_name,
            "rel_err_vs_float64": errs, "timings": timings,
            "ratios": {f"{a}/transformers": timings[a]["median_s"] / timings["transformers"]["median_s"] for a in ARMS},
            "paired_ratios": {**{f"{a}/transformers": paired_ratio(timings[a], timings["transformers"]) for a in ARMS},
                              "post/probs_first": paired_ratio(timings["post_normalised"], timings["probs_first"])}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_bench")
    p.add_argument("--quick", action="store_true", help="small shapes, tiny model")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/attention.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    repeats = args.repeats or (3 if args.quick else 9)
    cores = []
    for c in (QUICK_CORES if args.quick else CORES):
        r = core_case(*c, repeats)
        cores.append(r)
        e, tm = r["rel_err_vs_float64"], r["timings"]
        print(f"attention {r['batch']}x{r['heads']}x{r['queries']}x{r['keys']}x{r['head_size']}: err "
              + " ".join(f"{k} {v:.2e}" for k, v in e.items()) + " | "
              + "  ".join(f"{k} {v['median_s'] * 1e3:.2f} ms" for k, v in tm.items())
              + f" | post/probs_first {r['post/probs_first']:.2f} (paired {r['post/probs_first_paired']:.2f})",
              flush=True)
    forwards = []
    for c in (QUICK_FORWARD if args.quick else FORWARD):
        r = forward_case(*c, repeats)
        forwards.append(r)
        e, tm, pr = r["rel_err_vs_float64"], r["timings"], r["paired_ratios"]
        print(f"forward {r['shape']} {r['head']} {r['batch']}x{r['length']} {r['output']}: err "
              + " ".join(f"{k} {v:.2e}" for k, v in e.items()) + " | "
              + "  ".join(f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in tm.items()) + " | "
              + "  ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())
              + " | paired: " + "  ".join(f"{k} {v:.2f}" for k, v in pr.items()), flush=True)
    write_json(args.out, {"benchmark": "attention", "quick": args.quick, "repeats": repeats,
                          "environment": environment(), "cores": cores, "forwards": forwards})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
