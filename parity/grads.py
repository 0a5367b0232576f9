"""Gradient parity: dLoss/dParam of every parameter, Flax (`jax.grad`) vs the PyTorch reference (autograd).

For each input case of a head, a loss on the head's output with labels drawn from the seed
(`draw_targets`) is differentiated in both frameworks, dropout off:

- lm, causal: `flax_bart.losses.lm_loss` on token labels (unshifted, as transformers v5 scores both),
  -100 at padded positions and at a quarter of the others;
- cls: `classification_loss` on class ids in [0, num_labels) (-100 for rows without tokens);
  regression (num_labels 1) on normal targets;
- qa: `qa_loss` on start/end positions drawn among each row's tokens (seq_len, ignored, for rows
  without tokens);
- base: the mean of `last_hidden_state`² over the compared (unpadded) decoder positions.

The Flax gradient tree goes through the converter (`convert.flax_to_pt`, the function used for
weights), so every gradient is compared under its PyTorch name and layout. One report row per
parameter (kind "grad"), in forward order: embeddings, encoder layers, decoder layers, head; judged by
the one tolerance policy (fp32: max error / RMS(PyTorch's gradient) <= rtol; fp16/bf16: k x
PyTorch's own error against the float64 gold gradient, plus the floor); a gradient zero in exact
arithmetic at the scale of all gradients (`parity.tolerance.judge_at_scale`). The float64 gold
gradient is computed in every dtype: it is what recognises those zero gradients. The PyTorch side is
the built-in reference whatever `--reference` says. `final_logits_bias` is a buffer in PyTorch, never
trained: its PyTorch gradient is zero, and the Flax head stops the gradient there too.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Callable

import numpy as np

from parity.collect import case_masks
from parity.metrics import compare
from parity.metrics import TensorMetrics
from parity.tolerance import ZERO_GRAD_RATIO, Verdict, judge_at_scale, judge_grad

IGNORE = -100
LABEL_DROP = 0.25  # share of real tokens whose label is -100

TIED_NOTE = ("Gradients: the word embedding is one parameter in both frameworks (PyTorch's `shared` tied to "
             "the encoder, decoder and LM-head uses; Flax's one `shared`): its gradient, the sum over every use, "
             "is compared once, as `model.shared.weight`.")
ORDER_NOTE = ("Gradient rows come in forward order. A fault in one layer's weight gradient fails that row alone; "
              "a fault in the backward pass through a layer also corrupts the gradient of every parameter before it, "
              "so then the layer at fault is the *last* failing gradient row.")


# ---- targets --------------------------------------------------------------------------------------
def draw_targets(config, head: str, case: dict, seed: int) -> dict[str, np.ndarray]:
    """The loss targets of `head` on `case`, drawn from `seed` (same values for both frameworks)."""
    rng = np.random.default_rng([seed, 15, "base lm cls qa causal".split().index(head)])
    m = case_masks(head, case)
    dec = np.asarray(m.dec, bool)
    if head in ("lm", "causal"):
        keep = dec & (rng.random(dec.shape) >= LABEL_DROP)
        if not keep.any():
            keep = dec
        labels = rng.integers(0, config.vocab_size, dec.shape)
        return {"labels": np.where(keep, labels, IGNORE).astype(np.int32)}
    if head == "base":
        return {"mask": dec}
    rows = np.asarray(m.rows, bool)
    if head == "cls":
        if config.num_labels == 1:
            return {"labels": rng.standard_normal(rows.shape).astype(np.float32), "rows": rows}
        labels = rng.integers(0, config.num_labels, rows.shape)
        return {"labels": np.where(rows, labels, IGNORE).astype(np.int32)}
    length = dec.shape[1]
    out = {}
    for key in ("start_positions", "end_positions"):
        pos = np.full(rows.shape, length, np.int32)  # seq_len: ignored
        for b in np.flatnonzero(dec.any(axis=1)):
            pos[b] = rng.choice(np.flatnonzero(dec[b]))
        out[key] = pos
    return out


# ---- PyTorch --------------------------------------------------------------------------------------
def torch_outputs(model, head: str, case: dict) -> dict:
    """The head's outputs with autograd on (the reference's own `forward` runs under no_grad)."""
    from parity.reference_modules import check_mask, check_token_ids

    dev, impl = model.device, model.attn_impl
    if head == "causal":
        ids = check_token_ids(case["input_ids"], "input_ids", model.config.vocab_size, dev)
        mask = check_mask(case["attention_mask"], "attention_mask", ids.shape, dev)
        dec = model.model.decoder(ids, model._side_embedding("decoder"), mask, None, None, None, False, False, False,
                                  impl)
        return {"logits": model._lm_logits(dec.last_hidden_state)}
    ids = check_token_ids(case["input_ids"], "input_ids", model.config.vocab_size, dev)
    mask = check_mask(case["attention_mask"], "attention_mask", ids.shape, dev)
    dec_ids = check_token_ids(case["decoder_input_ids"], "decoder_input_ids", model.config.vocab_size, dev)
    given = case.get("decoder_attention_mask")
    dec_mask = None if given is None else check_mask(given, "decoder_attention_mask", dec_ids.shape, dev)
    enc = model.model.encoder(ids, model._side_embedding("encoder"), mask, False, False, impl)
    h = model.model.decoder(dec_ids, model._side_embedding("decoder"), dec_mask, enc.last_hidden_state, mask, None,
                            False, False, False, impl).last_hidden_state
    if head == "base":
        return {"last_hidden_state": h}
    if head == "lm":
        return {"logits": model._lm_logits(h)}
    if head == "cls":
        return {"logits": model._classify(ids, h)}
    start, end = model.qa_outputs(h).split(1, dim=-1)
    return {"start_logits": start.squeeze(-1), "end_logits": end.squeeze(-1)}


def torch_loss(head: str, out: dict, targets: dict, num_labels: int):
    """The loss with PyTorch's own functions (float32 at least, as flax_bart.losses computes)."""
    import torch
    import torch.nn.functional as F

    def up(x):
        return x if x.dtype == torch.float64 else x.float()

    dev = next(iter(out.values())).device
    t = {k: torch.as_tensor(v, device=dev) for k, v in targets.items()}
    if head in ("lm", "causal"):
        logits = up(out["logits"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t["labels"].long().reshape(-1),
                               ignore_index=IGNORE)
    if head == "base":
        h = up(out["last_hidden_state"])
        mask = t["mask"].to(h.dtype)[..., None]
        return (h * h * mask).sum() / (mask.sum() * h.shape[-1])
    if head == "cls":
        logits = up(out["logits"])
        if num_labels == 1:
            rows = t["rows"]
            return F.mse_loss(logits.reshape(-1)[rows], t["labels"].to(logits.dtype)[rows])
        return F.cross_entropy(logits, t["labels"].long(), ignore_index=IGNORE)
    start, end = up(out["start_logits"]), up(out["end_logits"])
    length = start.shape[1]
    losses = [F.cross_entropy(x, t[k].long().clamp(0, length), ignore_index=length)
              for x, k in ((start, "start_positions"), (end, "end_positions"))]
    return (losses[0] + losses[1]) / 2


def trainable(model) -> dict:
    """transformers name -> parameter tensor (the tied word embedding once, as `shared`)."""
    from parity.reference import _KeyPlan

    plan = _KeyPlan(model)
    return {plan.external(k): p for k, p in model.named_parameters()}


def torch_grads(model, head: str, case: dict, targets: dict,
                masses: dict | None = None) -> dict[str, np.ndarray]:
    """transformers name -> dLoss/dParam (numpy in the model's dtype, `parity.reference.to_numpy`: no float64
    copy of BART-base's 140M values per case; the metrics widen in chunks) of `model` (which keeps no
    gradients after).

    With `masses` (a dict), it also receives, for every linear layer's bias, the largest over the bias's
    elements of the sum of |dLoss/dOutput| over every batch row and position: the total size of the terms
    whose sum is that bias's gradient (`bias_masses`)."""
    import torch

    from parity.reference import to_numpy

    params = trainable(model)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    with torch.enable_grad(), bias_masses(model, params, masses):
        loss = torch_loss(head, torch_outputs(model, head, case), targets, model.config.num_labels)
        loss.backward()
    out = {}
    for name, p in params.items():
        if p.grad is None:  # not used by this head's loss (the causal LM's cross-attention): dLoss/dParam = 0
            out[name] = np.zeros(tuple(p.shape))
        else:
            out[name] = to_numpy(p.grad)
        p.grad = None
    if getattr(model, "final_logits_bias", None) is not None:  # a buffer: no gradient, never trained
        out["final_logits_bias"] = np.zeros(tuple(model.final_logits_bias.shape))
    return out


@contextlib.contextmanager
def bias_masses(model, params: dict, masses: dict | None):
    """While active, sum |dLoss/dOutput| of every `nn.Linear` with a bias over all but the last axis, into
    `masses[bias name]` (the max over the bias's elements, float64), as the backward pass goes.

    A bias's gradient is the sum of those terms, so its float rounding scales with their absolute sum,
    not with the gradient: this is the yardstick of a gradient that is zero in exact arithmetic."""
    if masses is None:
        yield
        return
    import torch

    names = {id(p): n for n, p in params.items()}
    totals: dict[str, "torch.Tensor"] = {}

    def on_forward(module, _inputs, output):
        name = names.get(id(module.bias))
        if name is None or not output.requires_grad:
            return

        def on_grad(grad):
            term = grad.detach().abs().to(torch.float64).reshape(-1, grad.shape[-1]).sum(0)
            totals[name] = totals[name] + term if name in totals else term

        output.register_hook(on_grad)

    handles = [m.register_forward_hook(on_forward) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.bias is not None]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        masses.update({n: float(t.max()) for n, t in totals.items()})


# ---- Flax -----------------------------------------------------------------------------------------
_GRAD_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> jitted (loss, grads)


def flax_outputs(model, head: str, params, inputs: dict) -> dict:
    if head == "causal":
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"], params=params)
    else:
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    decoder_input_ids=inputs["decoder_input_ids"],
                    decoder_attention_mask=inputs.get("decoder_attention_mask"), params=params)
    names = {"base": ("last_hidden_state",), "lm": ("logits",), "causal": ("logits",), "cls": ("logits",),
             "qa": ("start_logits", "end_logits")}[head]
    return {n: getattr(out, n) for n in names}


def flax_loss(head: str, out: dict, targets: dict, num_labels: int):
    import jax.numpy as jnp

    from flax_bart import losses

    if head in ("lm", "causal"):
        return losses.lm_loss(out["logits"], targets["labels"])
    if head == "base":
        h = out["last_hidden_state"].astype(jnp.float32)
        mask = targets["mask"].astype(jnp.float32)[..., None]
        return (h * h * mask).sum() / (mask.sum() * h.shape[-1])
    if head == "cls":
        if num_labels == 1:
            rows = targets["rows"].astype(jnp.float32)
            err = out["logits"].reshape(-1).astype(jnp.float32) - targets["labels"]
            return (err * err * rows).sum() / rows.sum()
        return losses.classification_loss(out["logits"], targets["labels"], "single_label_classification")
    return losses.qa_loss(out["start_logits"], out["end_logits"], targets["start_positions"], targets["end_positions"])


def flax_value_and_grad(model, head: str):
    """`fn(params, inputs, targets) -> (loss, grads)`, jitted once per model and head (shapes: jax's cache)."""
    import jax

    fns = _GRAD_FNS.setdefault(model, {})
    if head not in fns:
        num_labels = model.config.num_labels

        def loss(params, inputs, targets):
            return flax_loss(head, flax_outputs(model, head, params, inputs), targets, num_labels)

        fns[head] = jax.jit(jax.value_and_grad(loss))
    return fns[head]


def flax_grads(model, params, head: str, case: dict, targets: dict, config) -> dict[str, np.ndarray]:
    """transformers name -> dLoss/dParam of the Flax model, through the converter's name map and layouts."""
    from convert.tree import flatten, flax_to_pt, unflatten

    inputs = {k: v for k, v in case.items() if v is not None}
    _, grads = flax_value_and_grad(model, head)(params, inputs, targets)
    flat = {k: np.asarray(v.astype("float32")) for k, v in flatten(grads).items()}
    return flax_to_pt(unflatten(flat), config, head, tied="drop")


# ---- order and rows -------------------------------------------------------------------------------
_LAYER_ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "self_attn_layer_norm", "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj",
                "encoder_attn.out_proj", "encoder_attn_layer_norm", "fc1", "fc2", "final_layer_norm")


def locate(name: str) -> tuple[tuple, str, int | None]:
    """(forward-order sort key, report group, layer) of a transformers parameter name."""
    parts = name.removeprefix("model.").split(".")
    if parts[0] == "shared" or (parts[0] == "decoder" and parts[1] == "embed_tokens"):
        return (0,), "embeddings", None
    if parts[0] in ("encoder", "decoder"):
        stack = 0 if parts[0] == "encoder" else 2
        if parts[1] == "layers":
            module = ".".join(parts[3:-1])
            within = _LAYER_ORDER.index(module) if module in _LAYER_ORDER else len(_LAYER_ORDER)
            return (2 + stack, int(parts[2]), within), parts[0], int(parts[2])
        return (1 + stack,), "embeddings", None
    return (5,), "heads", None


def forward_order(names) -> list[str]:
    return sorted(names, key=lambda n: locate(n)[0])


def check_names(torch_side: dict, flax_side: dict, head: str) -> None:
    missing, extra = sorted(set(torch_side) - set(flax_side)), sorted(set(flax_side) - set(torch_side))
    if missing or extra:
        raise RuntimeError(f"gradients of head {head!r}: PyTorch and Flax name different parameters "
                           f"(PyTorch only: {missing}; Flax only: {extra})")


def zero_gradients(gold: dict) -> tuple[set[str], float]:
    """(names of the gradients zero in exact arithmetic, RMS of all gradients), from float64 gold gradients."""
    squares = {n: _sum_of_squares(g) for n, g in gold.items()}
    count = sum(g.size for g in gold.values())
    scale = float(np.sqrt(sum(squares.values()) / max(count, 1)))
    zero = {n for n, g in gold.items() if g.size and math.sqrt(squares[n] / g.size) <= ZERO_GRAD_RATIO * scale}
    return zero, scale


def _sum_of_squares(g: np.ndarray) -> float:
    """sum(g ** 2) without a temporary as large as `g` (BART-base's word embedding: 38.6M values)."""
    flat = np.ascontiguousarray(g).reshape(-1)
    return float(np.dot(flat, flat))


def add_grad_rows(report, col: dict, prefix: str, torch_side: dict, flax_side: dict, gold: dict,
                  masses: dict | None = None) -> list[str]:
    """One row per gradient, in forward order, named `{prefix}/{transformers name}`; fp32 rows also carry the
    gold metrics. A zero gradient with an entry in `masses` (`bias_masses` of the gold run) is judged with
    it. Returns the names of the gradients zero in exact arithmetic."""
    zero, scale = zero_gradients(gold)
    masses = masses or {}
    for name in forward_order(torch_side):
        _, group, layer = locate(name)
        m = compare(f"{prefix}/{name}", torch_side[name], flax_side[name], kind="grad", gold=gold[name])
        if name in zero:
            verdict = judge_at_scale(m, col["dtype"], scale, report.policy, mass=masses.get(name, 0.0))
        else:
            verdict = judge_grad(m, col["dtype"], scale, report.policy)
        report.add(m, group=group, layer=layer, verdict=verdict, **col)
    return sorted(zero, key=lambda n: locate(n)[0])


def add_param_rows(report, col: dict, prefix: str, torch_side: dict, flax_side: dict, noisy: set,
                   noisy_verdict: Callable[[TensorMetrics], Verdict]):
    """One row per parameter after optimiser steps (kind "param"), in forward order; the parameters in
    `noisy` (gradient zero in exact arithmetic) are judged by `noisy_verdict` instead of the policy."""
    for name in forward_order(torch_side):
        _, group, layer = locate(name)
        m = compare(f"{prefix}/{name}", torch_side[name], flax_side[name], kind="param")
        report.add(m, group=group, layer=layer, verdict=noisy_verdict(m) if name in noisy else None, **col)
