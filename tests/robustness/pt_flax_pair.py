"""A PyTorch reference BART and the Flax model with the same (random, perturbed) weights, run on the
same inputs, and compared only where the comparison means something: unmasked query positions of
rows that attend to at least one token (outputs at padded positions carry no meaning)."""

from __future__ import annotations

import numpy as np

ATOL_FP32 = 1e-5  # the 4.x PT<->Flax equivalence tests' bound (REFERENCE-FACTS)
EOS, PAD = 2, 1


def build_pair(config, head: str, seed: int = 0, dtype: str = "float32", edit: dict | None = None):
    """(reference, flax model, flax params, state dict) for `head`; every weight, bias and LayerNorm
    perturbed so that a port that drops one shows. `edit`: {state-dict key: fn(array) -> array},
    applied last in float32 (then everything is cast to `dtype`)."""
    import jax.numpy as jnp
    import torch

    from convert import pt_to_flax
    from flax_bart.models import MODEL_CLASSES
    from parity.reference import build_reference

    ref = build_reference(config, head, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in list(ref.parameters()) + [b for b in ref.buffers() if b.is_floating_point()]:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    sd = {k: v.numpy().copy() for k, v in ref.hf_state_dict(tied_copies=False).items()}
    for key, fn in (edit or {}).items():
        sd[key] = np.asarray(fn(sd[key]), np.float32)
    if dtype != "float32":
        sd = {k: v.astype(np.float16) for k, v in sd.items()}
    ref = build_reference(config, head, state_dict=sd, dtype=dtype)
    params = pt_to_flax(sd, config, head)
    model = MODEL_CLASSES[head](config, _do_init=False, dtype=jnp.dtype(dtype))
    return ref, model, params, sd


def make_inputs(config, head: str, rng: np.random.Generator, batch: int, src_len: int, tgt_len: int,
                padded_row: bool = False, holes: bool = True) -> dict:
    """Token ids avoiding special tokens (one <eos> at the end of every row for "cls"), random
    binary masks (`holes`) or right padding, and optionally one fully padded row."""
    ordinary = np.arange(3, config.vocab_size)

    def ids(length):
        out = rng.choice(ordinary, size=(batch, length)).astype(np.int32)
        if head == "cls":
            out[:, -1] = EOS
        return out

    def mask(length):
        if holes:
            m = (rng.random((batch, length)) < 0.75).astype(np.int32)
        else:
            lengths = rng.integers(1, length + 1, size=batch)
            m = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        m[:, 0] |= rng.random(batch) < 0.5  # most rows keep a token
        if padded_row:
            m[rng.integers(batch)] = 0
        return m

    inputs = {"input_ids": ids(src_len), "attention_mask": mask(src_len)}
    if head in ("base", "lm"):
        inputs.update(decoder_input_ids=ids(tgt_len), decoder_attention_mask=mask(tgt_len))
    return inputs


def run_reference(ref, head: str, inputs: dict) -> dict[str, np.ndarray]:
    import torch

    from parity.reference import to_numpy

    t = {k: torch.as_tensor(np.asarray(v, np.int64)) for k, v in inputs.items()}
    out = ref(**t)
    names = _names(head)
    return {n: np.asarray(to_numpy(getattr(out, n)), np.float32) for n in names}


def run_flax(model, params, head: str, inputs: dict) -> dict[str, np.ndarray]:
    out = model(**inputs, params=params)
    return {n: np.asarray(getattr(out, n), np.float32) for n in _names(head)}


def _names(head: str) -> tuple[str, ...]:
    enc = ("encoder_last_hidden_state",)
    return {"base": ("last_hidden_state",) + enc, "lm": ("logits",) + enc, "cls": ("logits",) + enc,
            "qa": ("start_logits", "end_logits") + enc, "causal": ("logits",)}[head]


def compare_masks(head: str, inputs: dict) -> dict[str, np.ndarray]:
    """Boolean (batch, positions) masks of the entries worth comparing, per output."""
    enc = inputs["attention_mask"].astype(bool)
    if head == "causal":
        return {"logits": enc}
    live_row = enc.any(axis=1)[:, None]
    dec = inputs.get("decoder_attention_mask")
    dec = np.ones_like(enc) if dec is None else dec.astype(bool)
    masks = {"encoder_last_hidden_state": enc}
    if head == "cls":
        masks["logits"] = live_row
    else:
        for n in _names(head)[:-1]:
            masks[n] = dec & live_row
    return masks


def max_abs_diff(ref: dict, got: dict, masks: dict) -> dict[str, float]:
    out = {}
    for n, m in masks.items():
        sel = np.broadcast_to(m.reshape(m.shape + (1,) * (ref[n].ndim - m.ndim)), ref[n].shape)
        d = np.abs(ref[n] - got[n])[sel]
        out[n] = float(d.max()) if d.size else 0.0
    return out
