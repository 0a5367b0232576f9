"""Every class equals transformers' PyTorch BART: fp32 max |diff| <= 1e-5 on every output, hidden
state and attention map (padded query positions excluded: they carry no meaning)."""

import jax
import numpy as np
import pytest
import torch

from tests.bart_helpers import HEADS, OUTPUT_NAMES, batch, flax_from_torch, torch_model

ATOL = 1e-5
CONFIGS = {
    "tiny": {},
    "untied-relu-noscale": dict(tie_word_embeddings=False, activation_function="relu", scale_embedding=False,
                                encoder_layers=1, decoder_layers=2, decoder_attention_heads=4, encoder_ffn_dim=8),
    "gelu_new-deep-dec": dict(activation_function="gelu_new", encoder_layers=3, decoder_layers=1,
                              encoder_attention_heads=2, decoder_ffn_dim=12),
}


def _max_err(a, b, mask=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if mask is not None:
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    return float(np.abs(a - b).max())


def _torch_forward(tm, head, ids, mask):
    with torch.no_grad():
        return tm(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  output_hidden_states=True, output_attentions=True, use_cache=False)


def _check_all(head, to, fo, mask):
    for name in OUTPUT_NAMES[head]:
        m = None if (head == "cls") else mask
        assert _max_err(getattr(fo, name), getattr(to, name).numpy(), m) <= ATOL, name
    if head == "causal":
        pairs = [("hidden_states", mask), ("attentions", None)]
    else:
        pairs = [("encoder_last_hidden_state", mask), ("encoder_hidden_states", mask),
                 ("decoder_hidden_states", mask), ("encoder_attentions", None), ("decoder_attentions", None),
                 ("cross_attentions", None)]
    for name, m in pairs:
        t, f = getattr(to, name), getattr(fo, name)
        if isinstance(t, torch.Tensor):
            t, f = [t], [f]
        assert len(t) == len(f), name
        for i, (ti, fi) in enumerate(zip(t, f)):
            if m is None:  # attention maps (B, H, T, S): compare rows whose query is not padding
                rows = mask.astype(bool)[:, None, :, None] & np.ones(ti.shape, bool)
                assert _max_err(fi, ti.numpy(), rows) <= ATOL, f"{name}[{i}]"
            else:
                assert _max_err(fi, ti.numpy(), m) <= ATOL, f"{name}[{i}]"


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_every_output_equals_pytorch(head, cfg):
    tm = torch_model(head, seed=3, **CONFIGS[cfg])
    fm, params = flax_from_torch(tm, head)
    ids, mask = batch(seed=1, b=3, t=9)
    to = _torch_forward(tm, head, ids, mask)
    fo = fm(ids, attention_mask=mask, params=params, output_hidden_states=True, output_attentions=True)
    _check_all(head, to, fo, mask)


@pytest.mark.parametrize("head", ["qa", "lm", "causal"])
def test_under_callers_jit_and_fully_padded_row(head):
    """A fully padded row stays finite; inside the caller's jit the numbers are the same."""
    tm = torch_model(head, seed=5)
    fm, params = flax_from_torch(tm, head)
    ids, mask = batch(seed=2, b=4, t=7)
    mask[3] = 0
    ids[3] = 1
    to = _torch_forward(tm, head, ids, mask)
    name = OUTPUT_NAMES[head][0]
    eager = getattr(fm(ids, attention_mask=mask, params=params), name)
    jitted = jax.jit(lambda p, i, m: getattr(fm(i, attention_mask=m, params=p), name))(params, ids, mask)
    assert np.isfinite(np.asarray(eager)).all()
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6, rtol=0)
    live = mask.copy()
    live[3] = 0
    assert _max_err(eager, getattr(to, name).numpy(), live) <= ATOL


def test_sequence_classification_uses_last_eos_under_jit_too():
    tm = torch_model("cls", seed=7)
    fm, params = flax_from_torch(tm, "cls")
    ids, mask = batch(seed=4, b=2, t=10)
    ids[:, 3] = 2  # a second <eos> in every row: the last one must be used (4.x summed them under jit)
    ids[:, 5] = 2
    to = _torch_forward(tm, "cls", ids, mask).logits.numpy()
    eager = np.asarray(fm(ids, attention_mask=mask, params=params).logits)
    jitted = np.asarray(jax.jit(lambda p, i, m: fm(i, attention_mask=m, params=p).logits)(params, ids, mask))
    assert _max_err(eager, to) <= ATOL and _max_err(jitted, to) <= ATOL


def test_sequence_classification_uneven_or_missing_eos():
    from flax_bart import InputError

    tm = torch_model("cls", seed=7)
    fm, params = flax_from_torch(tm, "cls")
    ids, mask = batch(seed=4, b=2, t=10)
    uneven = ids.copy()
    uneven[0, 3] = 2
    none = ids.copy()
    none[none == 2] = 5
    for bad, counts in ((uneven, "[2, 1]"), (none, "[0, 0]")):
        with pytest.raises(InputError, match=r"counts per row " + counts.replace("[", r"\[").replace("]", r"\]")):
            fm(bad, attention_mask=mask, params=params)
        # Under the caller's jit it cannot raise: the logits are NaN, never a plausible number.
        out = jax.jit(lambda p, i, m: fm(i, attention_mask=m, params=p).logits)(params, bad, mask)
        assert np.isnan(np.asarray(out)).all()


def test_sequence_classification_needs_decoder_ids_of_the_source_length():
    """PyTorch fails on the <eos> mask's shape; here an explicit error, eager and under jit (shapes are
    static), never NaN logits from positions past the decoder's end."""
    from flax_bart import InputError

    tm = torch_model("cls", seed=7)
    fm, params = flax_from_torch(tm, "cls")
    ids, mask = batch(seed=4, b=2, t=10)
    for length in (6, 12):
        dec = np.full((2, length), 5, np.int32)
        with pytest.raises(InputError, match=rf"decoder_input_ids has length {length}, input_ids has 10"):
            fm(ids, attention_mask=mask, decoder_input_ids=dec, params=params)
        with pytest.raises(InputError, match="same length"):
            jax.jit(lambda p, i, m, d: fm(i, attention_mask=m, decoder_input_ids=d, params=p).logits)(
                params, ids, mask, dec)


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_cached_decoding_equals_full_pass_and_pytorch(head):
    tm = torch_model(head, seed=9)
    fm, params = flax_from_torch(tm, head)
    ids, mask = batch(seed=6, b=2, t=8)
    dec = np.random.default_rng(1).integers(4, 99, size=(2, 6)).astype(np.int32)
    with torch.no_grad():
        if head == "lm":
            ref = tm(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask),
                     decoder_input_ids=torch.tensor(dec).long(), use_cache=False).logits.numpy()
        else:
            ref = tm(input_ids=torch.tensor(dec).long(), use_cache=False).logits.numpy()
    steps, splits = [], [(0, 1), (1, 3), (3, 4), (4, 6)]  # uneven chunks: 1, 2, 1, 2 tokens
    if head == "lm":
        enc = fm.encode(ids, attention_mask=mask, params=params)
        past = fm.init_cache(2, 10, enc, params=params)
        for a, b in splits:
            out = fm.decode(dec[:, a:b], enc, encoder_attention_mask=mask, past_key_values=past, params=params)
            past = out.past_key_values
            steps.append(np.asarray(out.logits))
    else:
        past = fm.init_cache(2, 10, params=params)
        for a, b in splits:
            out = fm(dec[:, a:b], past_key_values=past, params=params)
            past = out.past_key_values
            steps.append(np.asarray(out.logits))
    assert _max_err(np.concatenate(steps, axis=1), ref) <= ATOL
