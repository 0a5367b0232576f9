"""parity.metrics on hand-made arrays with known answers."""

import math

import ml_dtypes
import numpy as np
import pytest

from parity.metrics import TensorMetrics, compare, field_names

REF = np.array([[1.0, -1.0], [1.0, -1.0]])
CAND = np.array([[1.0, -1.0], [1.5, -1.0]])


def test_hidden_metrics_exact_values():
    m = compare("h", REF, CAND)
    assert m.count == 4 and m.shape == (2, 2) and m.kind == "hidden"
    assert m.ref_rms == 1.0
    assert m.max_abs_err == 0.5
    assert m.max_rel_err == 0.5
    assert m.mean_abs_err == 0.125
    assert m.cosine == pytest.approx(4.5 / (2.0 * math.sqrt(5.25)), rel=1e-15)
    assert m.nonfinite == 0 and not m.has_gold
    assert m.argmax_agreement is None and m.gold_ratio is None


def test_identical_and_zero_tensors():
    m = compare("same", REF, REF)
    assert (m.max_abs_err, m.max_rel_err, m.mean_abs_err, m.cosine) == (0.0, 0.0, 0.0, 1.0)
    z = compare("zeros", np.zeros(3), np.zeros(3))
    assert (z.max_rel_err, z.cosine) == (0.0, 1.0)
    off = compare("zero-ref", np.zeros(3), np.array([0.0, 1e-9, 0.0]))
    assert off.max_rel_err == math.inf and off.cosine == 0.0


def test_mask_excludes_padded_positions():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 3, 4))
    cand = ref.copy()
    cand[0, 1] += 0.25
    cand[1, 2] = np.nan  # padded: must not matter
    cand[1, 0] += 1000.0  # padded
    mask = np.array([[True, True, True], [False, True, False]])
    m = compare("h", ref, cand, mask=mask)
    assert m.count == 4 * 4
    assert m.nonfinite == 0
    assert m.max_abs_err == pytest.approx(0.25)
    assert m.mean_abs_err == pytest.approx(0.25 * 4 / 16)
    kept = ref[mask]
    assert m.ref_rms == pytest.approx(np.sqrt(np.mean(kept**2)))


def test_mask_accepts_full_shape_and_int_masks():
    m = compare("a", REF, CAND, mask=np.array([[1, 1], [0, 1]]))
    assert m.count == 3 and m.max_abs_err == 0.0
    attn = np.ones((2, 2, 3, 3))
    q_mask = np.array([[True, True, False], [True, False, False]])[:, None, :, None]
    assert compare("attn", attn, attn, mask=q_mask, kind="attention").count == (2 + 1) * 2 * 3


def test_logit_metrics_exact_values():
    ref = np.array([[math.log(3.0), 0.0], [1.0, 2.0]])
    cand = np.array([[0.0, math.log(3.0)], [1.0, 2.0]])
    m = compare("logits", ref, cand, kind="logits")
    # row 0: p = (3/4, 1/4), q = (1/4, 3/4): KL = 0.5 ln 3; row 1: KL 0.
    assert m.mean_kl == pytest.approx(0.25 * math.log(3.0), rel=1e-12)
    assert m.argmax_agreement == 0.5
    assert m.top5_overlap == 1.0  # only two classes: top-k is both
    assert m.positions == 2


def test_top5_overlap_exact():
    ref = np.arange(7.0)[None]  # top-5 = {2..6}
    cand = -np.arange(7.0)[None]  # top-5 = {0..4}
    m = compare("logits", ref, cand, kind="logits")
    assert m.top5_overlap == pytest.approx(3 / 5)
    assert m.argmax_agreement == 0.0


def test_logits_class_mask_for_qa_positions():
    ref = np.array([[0.0, 1.0, 2.0, -5.0]])
    cand = np.array([[0.0, 1.0, 2.0, 50.0]])  # last position is padding
    mask = np.array([[True, True, True, False]])
    m = compare("start_logits", ref, cand, mask=mask, kind="logits")
    assert m.argmax_agreement == 1.0 and m.mean_kl == pytest.approx(0.0, abs=1e-15)
    assert m.top5_overlap == 1.0 and m.max_abs_err == 0.0 and m.positions == 1


@pytest.mark.parametrize("where", ["reference", "candidate"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inside_mask_makes_metrics_nan(where, bad):
    ref, cand = REF.copy(), CAND.copy()
    (ref if where == "reference" else cand)[0, 1] = bad
    m = compare("h", ref, cand, kind="logits")
    assert (m.nonfinite_ref, m.nonfinite_cand) == ((1, 0) if where == "reference" else (0, 1))
    for name in ("max_abs_err", "max_rel_err", "mean_abs_err", "cosine", "mean_kl", "argmax_agreement"):
        assert math.isnan(getattr(m, name)), name


def test_nonfinite_gold_counts_and_nans():
    gold = REF.copy()
    gold[1, 1] = np.nan
    m = compare("h", REF, CAND, gold=gold)
    assert m.nonfinite_gold == 1 and m.nonfinite == 1
    assert math.isnan(m.gold_err_cand_max) and math.isnan(m.max_abs_err)


def test_gold_error_summaries_and_ratio():
    gold = np.array([1.0, -1.0, 1.0, -1.0])
    ref = gold + np.array([0.125, -0.25, 0.0, 0.0])
    cand = gold + np.array([0.375, 0.0, 0.0, 0.0])
    m = compare("h", ref, cand, gold=gold)
    assert m.gold_rms == 1.0
    assert (m.gold_err_ref_max, m.gold_err_cand_max) == (0.25, 0.375)
    assert (m.gold_err_ref_mean, m.gold_err_cand_mean) == (0.375 / 4, 0.375 / 4)
    assert m.gold_ratio == 1.5
    assert compare("same", gold, gold, gold=gold).gold_ratio == 1.0  # 0/0
    assert compare("x/0", gold, ref, gold=gold).gold_ratio == math.inf


def test_low_precision_inputs_are_converted_exactly():
    ref = np.array([1.5, -2.0, 0.25], dtype=ml_dtypes.bfloat16)
    cand = np.array([1.5, -2.0, 0.5], dtype=np.float16)
    m = compare("bf16", ref, cand, gold=np.array([1.5, -2.0, 0.25]))
    assert m.max_abs_err == 0.25 and m.gold_err_ref_max == 0.0 and m.gold_err_cand_max == 0.25


def test_ids_exact_with_mask():
    ref = np.array([[5, 6, 7, 1], [5, 9, 1, 1]])
    cand = np.array([[5, 6, 8, 1], [5, 9, 1, 3]])
    m = compare("ids", ref, cand, kind="ids")
    assert (m.mismatches, m.count, m.match_fraction) == (2, 8, 0.75)
    masked = compare("ids", ref, cand, kind="ids", mask=np.array([[1, 1, 0, 1], [1, 1, 1, 0]]))
    assert masked.mismatches == 0 and masked.max_abs_err is None
    with pytest.raises(ValueError, match="integer"):
        compare("ids", ref.astype(float), cand, kind="ids")


def test_empty_mask_gives_nan_and_zero_count():
    m = compare("h", REF, CAND, mask=np.zeros((2,), bool))
    assert m.count == 0 and math.isnan(m.max_abs_err)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"h: candidate shape \(3,\) differs from reference shape \(2, 2\)"):
        compare("h", REF, np.zeros(3))
    with pytest.raises(ValueError, match="kind must be one of"):
        compare("h", REF, CAND, kind="probs")
    with pytest.raises(ValueError, match=r"mask shape \(3,\) does not align"):
        compare("h", REF, CAND, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="gold shape"):
        compare("h", REF, CAND, gold=np.zeros(4))
    with pytest.raises(ValueError, match="mask must be boolean"):
        compare("h", REF, CAND, mask=np.full((2, 2), 0.5))


def test_dict_round_trip_and_field_list():
    m = compare("logits", REF, CAND, kind="logits", gold=REF)
    assert TensorMetrics.from_dict(m.to_dict()) == m
    assert set(m.to_dict()) == set(field_names())
    with pytest.raises(ValueError, match="unknown field"):
        TensorMetrics.from_dict({**m.to_dict(), "bogus": 1})


def test_leading_mask_and_full_mask_agree():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 3, 6))
    cand = ref + 1e-3 * rng.normal(size=ref.shape)
    gold = ref + 1e-4 * rng.normal(size=ref.shape)
    lead = np.array([[True, False, True], [True, True, False]])
    full = np.broadcast_to(lead[:, :, None], ref.shape)
    for kind in ("hidden", "logits"):
        a = compare("x", ref, cand, gold=gold, mask=lead, kind=kind)
        b = compare("x", ref, cand, gold=gold, mask=full, kind=kind)
        for key, value in a.to_dict().items():
            expected = b.to_dict()[key]
            if isinstance(value, float):
                assert value == pytest.approx(expected, rel=1e-12), (kind, key)
            else:
                assert value == expected, (kind, key)
        assert a.count == 4 * 6 and (kind != "logits" or a.positions == 4)


def test_logit_metrics_in_row_blocks_equal_one_piece():
    """Rows are reduced in blocks of about CHUNK elements (a 1024 x 50265 max_length row set in one piece
    made 400 MB float64 temporaries); the per-row values, averaged once, equal the one-piece result."""
    from parity.metrics import CHUNK, _logit_metrics, _logit_rows

    rng = np.random.default_rng(3)
    r = rng.normal(size=(80, 10000)).astype(np.float32)
    c = r + rng.normal(scale=0.05, size=r.shape).astype(np.float32)
    classes = rng.random(r.shape) > 0.2
    assert r.size > 2 * CHUNK   # several blocks
    for cls in (None, classes):
        kl, agree, overlap = _logit_rows(r.astype(np.float64), c.astype(np.float64), cls)
        got = _logit_metrics(r, c, cls)
        assert got == {"positions": 80, "argmax_agreement": float(agree.mean()),
                       "top5_overlap": float(overlap.mean()), "mean_kl": float(max(kl.mean(), 0.0))}
        assert 0 < got["mean_kl"] and got["argmax_agreement"] < 1   # the noise is visible
