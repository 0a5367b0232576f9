"""Gradient checkpointing: compiled memory and time of one training gradient, with and without remat.

For each setting (no remat, then `enable_gradient_checkpointing(policy)` for each policy) the
gradient of a token cross-entropy (train mode, dropout on) w.r.t. all parameters of
FlaxBartForConditionalGeneration is lowered and compiled once; XLA's `memory_analysis()` gives
the temporary buffers the program needs besides its arguments and outputs (`temp_size_in_bytes`:
the activations kept for the backward pass live there). Then the compiled step is timed.

XLA:CPU removes the optimization barriers that `jax.checkpoint` lowers to, and then merges the
recomputation with the forward pass again: on CPU, remat changes neither the compiled memory nor
(beyond noise) the time. So each row also says whether the compiled program kept the barriers and
the recomputed matmuls, and gives a backend-independent figure: the bytes of the residuals JAX saves
from the forward for the backward pass (`jax.ad_checkpoint.saved_residuals`, parameters and inputs
excluded), which is what a backend that honours remat (GPU, TPU) holds between the two passes.

    python -m benchmarks.remat_bench [--quick] [--shape base] [--batch 4] [--length 256]
                                     [--repeats N] [--no-time] [--out reports/bench/remat.json]
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, environment, median_time, write_json

SETTINGS = ("none", "nothing_saveable", "dots_saveable")
MEMORY_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "generated_code_size_in_bytes")


def _inputs(batch: int, length: int, vocab: int, eos: int = 2):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(4, vocab, size=(batch, length)).astype(np.int32)
    ids[:, -1] = eos
    labels = rng.integers(4, vocab, size=(batch, length)).astype(np.int32)
    return ids, np.ones_like(ids), labels


def _loss_fn(model):
    """params, ids, mask, labels, rng -> token cross-entropy in train mode."""
    import jax
    import jax.numpy as jnp

    def loss(params, ids, mask, labels, rng):
        logits_BxTxV = model(ids, attention_mask=mask, decoder_input_ids=ids, params=params, train=True,
                             dropout_rng=rng).logits.astype(jnp.float32)
        logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp_BxTxV, labels[..., None], axis=-1))

    return loss


def residual_bytes(loss, *args) -> int:
    """Bytes JAX keeps from the forward for the backward pass of `loss` w.r.t. its first argument,
    the arguments themselves excluded. (The list `jax.ad_checkpoint.print_saved_residuals` prints;
    JAX exports only the printing function.)"""
    from jax._src.ad_checkpoint import saved_residuals

    return int(sum(aval.size * aval.dtype.itemsize for aval, why in saved_residuals(loss, *args)
                   if not why.startswith("from the argument")))


def measure(model, params, ids, mask, labels, repeats: int, time_it: bool) -> dict:
    import jax

    loss = _loss_fn(model)
    fn = jax.jit(jax.value_and_grad(loss))
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    lowered = fn.lower(params, ids, mask, labels, rng)
    compiled = lowered.compile()
    row = {"compile_s": round(time.perf_counter() - t0, 2)}
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f"this backend ({jax.default_backend()}) reports no memory_analysis()")
    row.update({f: int(getattr(stats, f)) for f in MEMORY_FIELDS if hasattr(stats, f)})
    hlo_in, hlo_out = lowered.as_text(), compiled.as_text()
    row["program"] = {"barriers_lowered": hlo_in.count("optimization_barrier"),
                      "barriers_compiled": hlo_out.count("opt-barrier("),
                      "dots_lowered": hlo_in.count("dot_general"), "dots_compiled": hlo_out.count(" dot(")}
    row["saved_residual_bytes"] = residual_bytes(loss, params, ids, mask, labels, rng)
    if time_it:
        row["step"] = median_time(lambda: jax.block_until_ready(compiled(params, ids, mask, labels, rng)), repeats)
    return row


def run(shape: str, batch: int, length: int, repeats: int, time_it: bool, settings=SETTINGS) -> dict:
    import jax

    from flax_bart import BartConfig, FlaxBartForConditionalGeneration

    cfg = BartConfig(**SHAPES[shape])
    model = FlaxBartForConditionalGeneration(cfg, seed=0)
    params = jax.device_put(model.params)
    ids, mask, labels = _inputs(batch, length, cfg.vocab_size)
    rows = {}
    for setting in settings:
        if setting == "none":
            model.disable_gradient_checkpointing()
        else:
            model.enable_gradient_checkpointing(policy=setting)
        rows[setting] = measure(model, params, ids, mask, labels, repeats, time_it)
        r = rows[setting]
        print(f"{setting:>18}: temp {r['temp_size_in_bytes'] / 2**20:9.1f} MiB  residuals "
              f"{r['saved_residual_bytes'] / 2**20:9.1f} MiB  compile {r['compile_s']:6.1f} s"
              + (f"  step {r['step']['median_s'] * 1e3:8.1f} ms" if "step" in r else ""), flush=True)
    base = rows.get("none")
    if base:
        for setting, r in rows.items():
            r["temp_vs_none"] = r["temp_size_in_bytes"] / max(base["temp_size_in_bytes"], 1)
            r["residuals_vs_none"] = r["saved_residual_bytes"] / max(base["saved_residual_bytes"], 1)
            if "step" in r and "step" in base:
                r["step_time_vs_none"] = r["step"]["median_s"] / base["step"]["median_s"]
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return {"shape": shape, "config": SHAPES[shape], "parameters": int(n_params), "batch": batch, "length": length,
            "dtype": "float32", "head": "lm", "loss": "token cross-entropy, train=True (dropout on)",
            "backend": jax.default_backend(), "settings": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.remat_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model smoke run")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: base (tiny with --quick)")
    p.add_argument("--batch", type=int, default=None, help="default: 4 (2 with --quick)")
    p.add_argument("--length", type=int, default=None, help="default: 256 (16 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per setting (default 3; 1 with --quick)")
    p.add_argument("--no-time", action="store_true", help="compiled memory only, no step timing")
    p.add_argument("--out", default="reports/bench/remat.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    shape = args.shape or ("tiny" if args.quick else "base")
    batch = args.batch or (2 if args.quick else 4)
    length = args.length or (16 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    result = run(shape, batch, length, repeats, not args.no_time)
    write_json(args.out, {"benchmark": "remat", "quick": args.quick, "repeats": repeats,
                          "command": "python -m benchmarks.remat_bench " + " ".join(argv or sys.argv[1:]),
                          "environment": environment(), "results": result})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
