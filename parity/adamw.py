"""after_3_adamw_steps: three optimiser steps in both frameworks from the same weights, then every parameter.

`optax.adamw` and `torch.optim.AdamW` with the same hyper-parameters and Hugging Face's fine-tuning
weight-decay mask (no decay on biases and LayerNorm weights; PyTorch: two parameter groups), on the
same batch each step (the head's first input case and its drawn targets, `parity.grads`). Both
optimisers compute p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p). `final_logits_bias` is a
buffer in PyTorch, so it stays frozen on the Flax side too (`optax.set_to_zero`). One report row per
parameter (kind "param"), judged by the policy (`parity.tolerance`, rule 7). A parameter whose
gradient is zero in exact arithmetic (a key projection's bias, the QA bias) is moved by Adam's
normalised rounding noise, up to about lr per step in either direction in each framework: it is only
bounded, |flax - torch| <= 2 * STEPS * lr (`noisy_verdict`).
"""

from __future__ import annotations

import warnings

import numpy as np

STEPS = 3
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
NOTE = (f"after_{STEPS}_adamw_steps: {STEPS} steps of optax.adamw vs torch.optim.AdamW (lr {LR:g}, betas {BETAS}, "
        f"eps {EPS:g}, weight decay {WEIGHT_DECAY:g} except biases and LayerNorm weights, final_logits_bias frozen "
        "as the PyTorch buffer it is) on the first input case, repeated; every parameter compared (fp32 only).")
PREFIX = f"after_{STEPS}_adamw_steps"


def noisy_verdict(metrics):
    """The bound for a parameter whose gradient is zero in exact arithmetic (module doc)."""
    from parity.tolerance import Verdict

    bound = 2 * STEPS * LR
    value = float(metrics.max_abs_err)
    return Verdict(value <= bound, "max_abs_err", value, bound,
                   "zero gradient, AdamW steps driven by rounding noise: max |flax - torch| <= 2 * steps * lr")


def torch_decays(name: str) -> bool:
    """Hugging Face Trainer's rule on transformers names: decay everything but biases and LayerNorm weights."""
    return not (name.endswith("bias") or "layer_norm" in name or "layernorm" in name)


def flax_label(path: tuple[str, ...]) -> str:
    """The same rule on Flax paths (LayerNorm weights are `scale`); final_logits_bias is frozen."""
    if path[-1] == "final_logits_bias":
        return "frozen"
    return "no_decay" if path[-1] in ("bias", "scale") else "decay"


def flax_steps(model, head: str, params, inputs: dict, targets: dict, config) -> dict[str, np.ndarray]:
    """transformers name -> parameter after STEPS optax.adamw steps (float32 params)."""
    import jax
    import jax.numpy as jnp
    import optax

    from convert.tree import flatten, flax_to_pt, unflatten
    from parity.grads import flax_value_and_grad

    labels = unflatten({path: flax_label(path) for path in flatten(params)})
    adamw = dict(b1=BETAS[0], b2=BETAS[1], eps=EPS)
    tx = optax.multi_transform({"decay": optax.adamw(LR, weight_decay=WEIGHT_DECAY, **adamw),
                                "no_decay": optax.adamw(LR, weight_decay=0.0, **adamw),
                                "frozen": optax.set_to_zero()}, labels)
    # A copy of the caller's params, so that each update can donate the gradients, the optimizer state and
    # the params it consumes: its outputs take over their buffers instead of ~1.7 GB of fresh memory per
    # step. BART-base on the AVX2 EPYC, one update: 0.20-0.27 s donated, 0.58-0.92 s not (first call,
    # compile included: 2.3-2.8 vs 3.8-4.1 s). The outputs are smaller than the inputs, so some gradient
    # buffers go unused: JAX's warning about them is expected here and silenced.
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    step = flax_value_and_grad(model, head)
    # one program: eager optax dispatched ~8,700 ops (18 s on BART-base)
    update = jax.jit(_update_fn(tx), donate_argnums=(0, 1, 2))
    for _ in range(STEPS):
        _, grads = step(params, inputs, targets)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            params, state = update(grads, state, params)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    return flax_to_pt(unflatten(flat), config, head, tied="drop")


def _update_fn(tx):
    """(grads, state, params) -> (params after one step of `tx`, its new state)."""
    import optax

    def update(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return update


def torch_steps(model, head: str, case: dict, targets: dict) -> dict[str, np.ndarray]:
    """transformers name -> parameter after STEPS torch.optim.AdamW steps (two parameter groups)."""
    import torch

    from parity.grads import torch_loss, torch_outputs, trainable
    from parity.reference import to_numpy

    named = trainable(model)
    for p in named.values():
        p.requires_grad_(True)
    groups = [{"params": [p for n, p in named.items() if torch_decays(n)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named.items() if not torch_decays(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            torch_loss(head, torch_outputs(model, head, case), targets, model.config.num_labels).backward()
        opt.step()
    out = {n: to_numpy(p) for n, p in named.items()}
    if getattr(model, "final_logits_bias", None) is not None:  # a buffer, untouched
        out["final_logits_bias"] = to_numpy(model.final_logits_bias)
    return out
