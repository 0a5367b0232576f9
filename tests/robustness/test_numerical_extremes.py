"""Inputs at the extremes: sequence length 1 and `max_position_embeddings`, batch 1 and 64, rows and
batches that are all padding, and fp16 overflow. Flax gives finite results that match the PyTorch
reference (fp32: 1e-5 at unmasked positions), or, in fp16, the same overflow PyTorch gives, and the
parity metrics flag it (a failing `nonfinite` verdict) instead of hiding it."""

from __future__ import annotations

import numpy as np
import pytest

from flax_bart.config import BartConfig
from parity.metrics import compare
from parity.tolerance import judge

from pt_flax_pair import ATOL_FP32, build_pair, compare_masks, make_inputs, max_abs_diff, run_flax, run_reference

CONFIG = BartConfig.from_dict(dict(
    vocab_size=48, d_model=16, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=24, decoder_ffn_dim=20,
    encoder_attention_heads=4, decoder_attention_heads=2, max_position_embeddings=12, scale_embedding=True,
    tie_word_embeddings=False,
))
FP16_MAX = float(np.finfo(np.float16).max)


@pytest.fixture(scope="module")
def lm_pair():
    return build_pair(CONFIG, "lm", seed=7)


def _check(pair, head, inputs):
    ref, model, params, _ = pair
    want, got = run_reference(ref, head, inputs), run_flax(model, params, head, inputs)
    for name in want:
        assert np.isfinite(want[name]).all() and np.isfinite(got[name]).all(), name
    diffs = max_abs_diff(want, got, compare_masks(head, inputs))
    assert max(diffs.values()) <= ATOL_FP32, diffs
    return want, got


@pytest.mark.parametrize("src_len,tgt_len", [(1, 1), (12, 12)])
def test_length_1_and_max_position_embeddings(lm_pair, src_len, tgt_len):
    inputs = make_inputs(CONFIG, "lm", np.random.default_rng(src_len * 100 + tgt_len), 2, src_len, tgt_len,
                         holes=False)
    inputs["attention_mask"][:] = 1
    _check(lm_pair, "lm", inputs)


def test_one_past_max_position_embeddings_is_refused(lm_pair):
    from flax_bart.validation import InputError

    _, model, params, _ = lm_pair
    ids = np.full((1, CONFIG.max_position_embeddings + 1), 5, np.int32)
    with pytest.raises(InputError, match="max_position_embeddings"):
        model(ids, params=params)


@pytest.mark.parametrize("batch", [1, 64])
def test_batch_1_and_64(lm_pair, batch):
    inputs = make_inputs(CONFIG, "lm", np.random.default_rng(batch), batch, 7, 5, padded_row=batch > 1)
    _check(lm_pair, "lm", inputs)


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_all_padding_rows_stay_finite(lm_pair, head):
    pair = lm_pair if head == "lm" else build_pair(CONFIG, head, seed=3)
    ref, model, params, _ = pair
    inputs = make_inputs(CONFIG, head, np.random.default_rng(5), 3, 6, 6)
    inputs["attention_mask"][:] = 0  # every row fully padded
    if "decoder_attention_mask" in inputs:
        inputs["decoder_attention_mask"][:] = 0
    want, got = run_reference(ref, head, inputs), run_flax(model, params, head, inputs)
    for name in want:
        assert np.isfinite(want[name]).all() and np.isfinite(got[name]).all(), name
    # mixed batch: the live rows still match (the padded one is left out of the comparison)
    inputs = make_inputs(CONFIG, head, np.random.default_rng(6), 3, 6, 6, padded_row=True)
    _check(pair, head, inputs)


# ---- fp16 overflow ----------------------------------------------------------------------------------
def _gold_and_fp16(head: str, edit: dict, inputs: dict):
    """fp32 run of the fp16-rounded weights (the gold), and fp16 runs of both frameworks."""
    from parity.reference import build_reference

    ref16, model16, params16, sd16 = build_pair(CONFIG, head, seed=9, dtype="float16", edit=edit)
    sd32 = {k: v.astype(np.float32) for k, v in sd16.items()}
    gold = run_reference(build_reference(CONFIG, head, state_dict=sd32), head, inputs)
    return gold, run_reference(ref16, head, inputs), run_flax(model16, params16, head, inputs)


def test_fp16_logits_overflow_exactly_where_pytorch_overflows():
    # lm_head rows ~1e4: |logits| spread around fp16's max, some overflow, most do not
    edit = {"lm_head.weight": lambda w: w * 1e5}
    inputs = make_inputs(CONFIG, "lm", np.random.default_rng(1), 4, 6, 6, holes=False)
    gold, want, got = _gold_and_fp16("lm", edit, inputs)
    g, t, f = gold["logits"], want["logits"], got["logits"]
    must_overflow = np.abs(g) > 1.1 * FP16_MAX   # well past fp16's range in exact arithmetic
    must_fit = np.abs(g) < 0.9 * FP16_MAX
    assert must_overflow.sum() > 10 and must_fit.sum() > 10  # the scenario does what it says
    clear = must_overflow | must_fit  # within 10% of the limit, fp16 rounding may go either way
    assert np.isinf(t[must_overflow]).all() and (np.sign(t[must_overflow]) == np.sign(g[must_overflow])).all()
    assert np.array_equal(np.isinf(f)[clear], np.isinf(t)[clear])  # inf exactly where PyTorch has inf
    assert (np.sign(f[must_overflow]) == np.sign(t[must_overflow])).all()
    assert np.isfinite(f[must_fit]).all() and np.isfinite(t[must_fit]).all()
    # finite entries: Flax's fp16 error is of the size of PyTorch's own (vs the fp32 gold)
    err_t = np.abs(t[must_fit] - g[must_fit]).max()
    err_f = np.abs(f[must_fit] - g[must_fit]).max()
    assert err_f <= 2 * err_t + 1e-3 * FP16_MAX, (err_f, err_t)
    # and the parity metrics flag the overflow: counted, and a failing verdict
    m = compare("lm/logits", t, f, gold=g, kind="logits")
    assert m.nonfinite_ref == int(np.isinf(t).sum()) > 0 and m.nonfinite_cand == int(np.isinf(f).sum()) > 0
    verdict = judge(m, "float16")
    assert not verdict.passed and verdict.metric == "nonfinite"


def test_fp16_encoder_overflow_is_clamped_like_pytorch():
    # the last encoder layer's LayerNorm scale at 6e4: its output overflows fp16 unless clamped
    edit = {"model.encoder.layers.1.final_layer_norm.weight": lambda w: np.full_like(w, 6e4)}
    inputs = make_inputs(CONFIG, "lm", np.random.default_rng(2), 3, 6, 5, holes=False)
    inputs["attention_mask"][:] = 1
    gold, want, got = _gold_and_fp16("lm", edit, inputs)
    g, t, f = gold["encoder_last_hidden_state"], want["encoder_last_hidden_state"], got["encoder_last_hidden_state"]
    assert (np.abs(g) > FP16_MAX).any()  # in exact arithmetic the output is out of fp16's range
    clamp = float(np.float16(FP16_MAX - 1000))  # finfo(fp16).max - 1000, as an fp16 value
    assert np.isfinite(t).all() and np.abs(t).max() == clamp  # PyTorch clamps ...
    assert np.isfinite(f).all() and np.array_equal(np.abs(f) == clamp, np.abs(t) == clamp)  # ... Flax too
    assert np.isfinite(want["logits"]).all() == np.isfinite(got["logits"]).all()
