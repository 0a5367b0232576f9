"""float32 products on CPU: XLA's plain dot vs flax_bart's blocked contraction (`flax_bart.chunked_dot`,
what `precision="highest"` selects there) vs PyTorch, for time and for distance from float64; then a
whole BART forward built with the default precision and with "highest".

Products: for each shape, the max |error| / RMS of the float64 product, and the time of each way, timed
in interleaved rounds. Forward: the same weights and inputs in both models, timed in interleaved
rounds, and each output's max |error| / RMS against the parity reference run in float64.

    python -m benchmarks.chunked_dot_bench [--quick] [--repeats N] [--out reports/bench/chunked_dot.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import (HEAD_OUTPUT, SHAPES, environment, interleaved_times, ratios, rel_err,
                               write_json)

PRODUCTS = [  # (rows, K, N): BART-base attention/fc1/fc2 at 2 x 256 tokens, BART-large fc2, a decode step's fc1
    (512, 768, 768), (512, 768, 3072), (512, 3072, 768), (512, 4096, 1024), (4, 768, 3072),
]
QUICK_PRODUCTS = [(64, 768, 768), (64, 1024, 256)]
FORWARD = [("base", "qa", 4, 256), ("base", "lm", 2, 128)]
QUICK_FORWARD = [("tiny", "qa", 2, 16)]



def product_case(rows, k, n, repeats):
    import jax
    import jax.numpy as jnp
    import torch

    from flax_bart import chunked_dot

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    gold = x.astype(np.float64) @ w.astype(np.float64)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    outs, fns = {}, {}
    for name, precision in (("xla_plain", None), ("xla_blocked", "highest")):
        f = jax.jit(lambda a, b, p=precision: chunked_dot.matmul(a, b, precision=p)).lower(xj, wj).compile()
        outs[name] = np.asarray(f(xj, wj))
        fns[name] = (lambda f=f: jax.block_until_ready(f(xj, wj)))
    outs["torch"] = (xt @ wt).numpy()
    fns["torch"] = lambda: xt @ wt
    timings = interleaved_times(fns, repeats)
    return {"rows": rows, "k": k, "n": n, "chunks": chunked_dot.chunks(k),
            "rel_err_vs_float64": {name: rel_err(o, gold) for name, o in outs.items()},
            "timings": timings, **ratios(timings, "xla_blocked", "xla_plain", "blocked/plain")}


def forward_case(shape, head, batch, length, repeats):
    import jax
    import torch

    from convert import pt_to_flax
    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES
    from parity.reference import build_reference

    cfg = BartConfig(**SHAPES[shape])
    ref = build_reference(cfg, head, dtype=torch.float32, seed=0)
    state = ref.hf_state_dict(tied_copies=True)
    gold_model = build_reference(cfg, head, state, dtype=torch.float64)
    ids = np.random.default_rng(0).integers(4, cfg.vocab_size, size=(batch, length)).astype(np.int32)
    ids[:, -1] = 2
    mask = np.ones_like(ids)
    out_name = HEAD_OUTPUT[head]
    with torch.inference_mode():
        gold = getattr(gold_model.forward(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)),
                       out_name).numpy()
    params = jax.device_put(pt_to_flax({k: v.float().numpy() for k, v in state.items()}, cfg, head=head))
    errs, fns = {}, {}
    for name, precision in (("plain", None), ("blocked", "highest")):
        model = MODEL_CLASSES[head](cfg, _do_init=False, precision=precision)
        f = jax.jit(lambda p, i, m, model=model: getattr(model(i, attention_mask=m, params=p), out_name))
        f = f.lower(params, ids, mask).compile()
        errs[name] = rel_err(f(params, ids, mask), gold)
        fns[name] = (lambda f=f: jax.block_until_ready(f(params, ids, mask)))
    timings = interleaved_times(fns, repeats)
    return {"shape": shape, "head": head, "batch": batch, "length": length, "output": out_name,
            "rel_err_vs_float64": errs, "timings": timings, **ratios(timings, "blocked", "plain", "blocked/plain")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chunked_dot_bench")
    p.add_argument("--quick", action="store_true", help="small shapes, tiny model")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/chunked_dot.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    repeats = args.repeats or (3 if args.quick else 9)
    products = [product_case(*c, repeats) for c in (QUICK_PRODUCTS if args.quick else PRODUCTS)]
    for r in products:
        e = r["rel_err_vs_float64"]
        print(f"{r['rows']}x{r['k']} @ {r['k']}x{r['n']} ({r['chunks']} blocks): err plain {e['xla_plain']:.2e} "
              f"blocked {e['xla_blocked']:.2e} torch {e['torch']:.2e} | "
              + "  ".join(f"{k} {v['median_s'] * 1e3:.2f} ms" for k, v in r["timings"].items())
              + f" | blocked/plain {r['blocked/plain']:.2f} (paired {r['blocked/plain_paired']:.2f})", flush=True)
    forwards = [forward_case(*c, repeats) for c in (QUICK_FORWARD if args.quick else FORWARD)]
    for r in forwards:
        e = r["rel_err_vs_float64"]
        print(f"forward {r['shape']} {r['head']} {r['batch']}x{r['length']} {r['output']}: err plain {e['plain']:.2e} "
              f"blocked {e['blocked']:.2e} | plain {r['timings']['plain']['median_s'] * 1e3:.1f} ms blocked "
              f"{r['timings']['blocked']['median_s'] * 1e3:.1f} ms | blocked/plain {r['blocked/plain']:.2f} "
              f"(paired {r['blocked/plain_paired']:.2f})", flush=True)
    write_json(args.out, {"benchmark": "chunked_dot", "quick": args.quick, "repeats": repeats,
                          "environment": environment(), "products": products, "forwards": forwards})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
