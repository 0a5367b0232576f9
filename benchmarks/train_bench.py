"""Training step side by side: flax_bart (one jitted step) vs transformers' PyTorch BART (eager).

BART-base shape (d_model 768, 6+6 layers, vocab 50265), random weights shared by both sides, fp32,
batch 4, source and target length 256, dropout 0.1 on (train mode), torch threads 2. One step is
forward + backward + AdamW update (lr 1e-4, weight decay 0.01 except on biases and LayerNorm
params on both sides: optax.adamw with a mask / torch.optim.AdamW with two param groups).
Tokens per step = batch * (source + target length). The two sides' timed steps are interleaved, so
that load from other processes hits both alike; medians after one warm-up step each. Flax's first
call (trace + compile + one step) and PyTorch's first step are reported separately.

    python -m benchmarks.train_bench [--quick] [--repeats N] [--out reports/bench/train.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, environment, interleaved_times, write_json

FULL = dict(shape="base", batch=4, length=256, repeats=5)
QUICK = dict(shape="tiny", batch=2, length=16, repeats=2)
LR, WEIGHT_DECAY = 1e-4, 0.01


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _torch_side(hf_config, state: dict, ids, labels):
    """A step function for transformers' model with AdamW (no decay on biases and LayerNorm)."""
    import torch
    import transformers

    model = transformers.BartForConditionalGeneration(hf_config)
    model.load_state_dict(state, strict=False)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "layer_norm" in name or "layernorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    ti, tl = torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
    losses = []

    def step():
        loss = model(input_ids=ti, labels=tl).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    return step, losses


def _flax_side(config, params, ids, labels):
    """A step function for flax_bart: the jitted train step of `flax_bart.finetune` with adamw."""
    import jax
    import optax

    from flax_bart.finetune import decay_mask, make_steps
    from flax_bart.models import FlaxBartForConditionalGeneration

    model = FlaxBartForConditionalGeneration(config, _do_init=False)
    optimizer = optax.adamw(LR, weight_decay=WEIGHT_DECAY, mask=decay_mask)
    train_step, _ = make_steps(model, optimizer)
    state = {"params": jax.device_put(params), "rng": jax.random.PRNGKey(0)}
    state["opt"] = optimizer.init(state["params"])
    batch = {"input_ids": jax.device_put(ids), "labels": jax.device_put(labels)}
    losses = []

    def step():
        state["params"], state["opt"], state["rng"], loss = train_step(state["params"], state["opt"], state["rng"],
                                                                       batch)
        losses.append(float(loss))  # waits for the step

    return step, losses


def run(shape: str, batch: int, length: int, repeats: int, torch_threads: int = 2) -> dict:
    import torch
    import transformers

    from convert import pt_to_flax
    from flax_bart import BartConfig

    torch.set_num_threads(torch_threads)
    torch.manual_seed(0)
    hf_config = transformers.BartConfig(**SHAPES[shape])
    state = transformers.BartForConditionalGeneration(hf_config).state_dict()
    params = pt_to_flax({k: v.numpy() for k, v in state.items()}, BartConfig(**SHAPES[shape]), head="lm")
    rng = np.random.default_rng(0)
    vocab = SHAPES[shape]["vocab_size"]
    ids = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    labels = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    sides = {"transformers": _torch_side(hf_config, state, ids, labels),
             "flax": _flax_side(BartConfig(**SHAPES[shape]), params, ids, labels)}
    del state, params
    first = {name: _timed(step) for name, (step, _) in sides.items()}  # flax: trace + compile + one step
    for step, _ in sides.values():  # warm-up
        step()
    timed = interleaved_times({name: step for name, (step, _) in sides.items()}, repeats)
    tokens = batch * 2 * length
    timings = {name: {**t, "first_step_s": first[name], "tokens_per_s": tokens / t["median_s"],
                      "losses": sides[name][1]}
               for name, t in timed.items()}
    for name, t in timings.items():
        if not all(np.isfinite(t["losses"])):
            raise RuntimeError(f"{name}: non-finite training loss {t['losses']}")
    return {"shape": shape, "batch": batch, "source_length": length, "target_length": length,
            "tokens_per_step": tokens, "dtype": "float32", "torch_threads": torch_threads,
            "timings": timings,
            "speedup": timings["flax"]["tokens_per_s"] / timings["transformers"]["tokens_per_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_bench")
    p.add_argument("--quick", action="store_true", help="tiny model smoke run")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side after warm-up")
    p.add_argument("--out", default="reports/bench/train.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    case = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        if args.repeats < 1:
            print(f"error: --repeats is {args.repeats}; expected >= 1", file=sys.stderr)
            return 2
        case["repeats"] = args.repeats
    apply_allocator(args.allocator)
    r = run(**case)
    for name, t in r["timings"].items():
        print(f"{name:>12}: {t['tokens_per_s']:8.1f} tokens/s (median step {t['median_s']:.3f} s, "
              f"first step {t['first_step_s']:.2f} s)", flush=True)
    print(f"flax / transformers tokens/s: {r['speedup']:.2f}")
    write_json(args.out, {"benchmark": "train", "quick": args.quick, "repeats": case["repeats"],
                          "environment": environment(), "results": r})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
