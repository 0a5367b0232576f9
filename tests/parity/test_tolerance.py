"""parity.tolerance: verdicts per dtype, the low-precision floor and k, overrides."""

import argparse
import math

import ml_dtypes
import numpy as np
import pytest

from parity.metrics import compare
from parity.tolerance import (
    DEFAULT_POLICY, MACHINE_EPS, Policy, Verdict, add_cli_arguments, judge, normalize_dtype,
)

GOLD = np.array([1.0, -1.0, 1.0, -1.0])  # RMS 1


def _fp32(rel_err):
    return compare("h", GOLD, GOLD + np.array([rel_err, 0.0, 0.0, 0.0]))


def _lowp(torch_err, flax_err):
    ref = GOLD + np.array([torch_err, 0.0, 0.0, 0.0])
    cand = GOLD + np.array([0.0, flax_err, 0.0, 0.0])
    return compare("h", ref, cand, gold=GOLD)


def test_machine_eps_table_matches_ml_dtypes():
    for name, eps in MACHINE_EPS.items():
        dtype = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
        assert eps == float(ml_dtypes.finfo(dtype).eps)


def test_fp32_relative_error_rule():
    ok = judge(_fp32(1e-6), "float32")
    assert ok == Verdict(True, "max_rel_err", pytest.approx(1e-6), 1e-5, ok.rule)
    bad = judge(_fp32(2e-5), "fp32")
    assert not bad.passed and bad.metric == "max_rel_err" and bad.tolerance == 1e-5
    assert judge(_fp32(2e-5), "float32", DEFAULT_POLICY.with_overrides(rtol=1e-4)).passed


def test_fp32_outside_rtol_passes_when_as_close_to_the_gold_as_pytorch():
    """A long attention row: a few float32 ULPs of weights near 1, many times rtol x the map's small RMS."""
    from parity.tolerance import FP32_FLOOR_ULPS, FP32_K_FACTOR

    gold = np.full(1024, 1e-3)
    gold[0] = 1.0
    ulp = 2.0**-23
    torch_side, flax_side = gold.copy(), gold.copy()
    torch_side[0] += 2 * ulp
    flax_side[0] -= 2 * ulp                                   # |flax - torch| = 4 ulps, RMS ~3e-2
    alone = judge(compare("a", torch_side, flax_side), "float32")
    assert not alone.passed and alone.metric == "max_rel_err"  # no gold: rule 4 decides
    v = judge(compare("a", torch_side, flax_side, gold=gold), "float32")
    assert v.passed and v.metric == "gold_err_cand_max" and v.value == pytest.approx(2 * ulp)
    rms = float(np.sqrt(np.mean(gold ** 2)))
    assert v.tolerance == pytest.approx(FP32_K_FACTOR * 2.0 * 2 * ulp + FP32_FLOOR_ULPS * ulp * rms)
    wrong = flax_side.copy()
    wrong[0] = 1.0 + 1e-4                                     # a real error: further from exact than PyTorch
    bad = judge(compare("a", torch_side, wrong, gold=gold), "float32")
    assert not bad.passed and bad.metric == "max_rel_err" and "nor max |flax - gold|" in bad.rule
    inside = judge(compare("a", gold, gold + 1e-9, gold=gold), "float32")
    assert inside.passed and inside.metric == "max_rel_err"   # within rtol: rule 4 as before
    assert not judge(compare("a", torch_side, flax_side, gold=gold), "float64").passed  # float32 only


def test_low_precision_k_and_per_dtype_floor():
    m = _lowp(0.01, 0.025)
    # bfloat16: bound = 2 * 0.01 + 2**-7 * 1 = 0.0278125 -> passes
    v = judge(m, "bfloat16")
    assert v.passed and v.metric == "gold_err_cand_max"
    assert v.value == pytest.approx(0.025) and v.tolerance == pytest.approx(0.02 + 2.0**-7)
    # float16: bound = 0.02 + 2**-10 = 0.0209765625 -> fails
    v16 = judge(m, "float16")
    assert not v16.passed and v16.tolerance == pytest.approx(0.02 + 2.0**-10)
    assert not judge(_lowp(0.01, 0.03), "bfloat16").passed
    assert judge(_lowp(0.01, 0.03), "bfloat16", Policy(k=3.0)).passed
    assert m.gold_ratio == pytest.approx(2.5)  # always reported


def test_floor_rescues_an_exact_torch_result():
    eps = MACHINE_EPS["bfloat16"]
    assert judge(_lowp(0.0, 0.5 * eps), "bf16").passed
    assert not judge(_lowp(0.0, 2.0 * eps), "bf16").passed
    assert DEFAULT_POLICY.floor("bfloat16", 3.0) == 3.0 * eps
    no_floor = Policy(floor_ulps={"float16": 0.0, "bfloat16": 0.0})
    assert not judge(_lowp(0.0, 0.5 * eps), "bf16", no_floor).passed


def test_low_precision_without_gold_is_an_error():
    with pytest.raises(ValueError, match="h: judging bfloat16 needs a float64 gold run"):
        judge(_fp32(0.0), "bfloat16")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_nan_never_passes(dtype):
    ref = GOLD.copy()
    cand = GOLD.copy()
    cand[2] = np.nan
    m = compare("h", ref, cand, gold=GOLD)
    loose = Policy(rtol=1e30, k=1e30)
    v = judge(m, dtype, loose)
    assert not v.passed and v.metric == "nonfinite" and v.value == 1.0
    assert math.isinf(v.headroom)


def test_ids_exact_and_empty_selection():
    same = compare("ids", np.arange(4), np.arange(4), kind="ids")
    assert judge(same, "bfloat16").passed
    diff = compare("ids", np.arange(4), np.array([0, 1, 2, 9]), kind="ids")
    v = judge(diff, "float32")
    assert not v.passed and (v.metric, v.value, v.tolerance) == ("mismatches", 1.0, 0.0)
    empty = compare("h", GOLD, GOLD, mask=np.zeros(4, bool))
    assert judge(empty, "float32").metric == "count" and not judge(empty, "float32").passed


def test_dtype_names():
    assert normalize_dtype("bf16") == "bfloat16"
    assert normalize_dtype(np.float32) == "float32"
    assert normalize_dtype(np.dtype(ml_dtypes.bfloat16)) == "bfloat16"
    assert normalize_dtype("torch.float16") == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        normalize_dtype("int8")


def test_policy_validation_round_trip_and_cli():
    with pytest.raises(ValueError, match="rtol must be a positive finite number"):
        Policy(rtol=0.0)
    with pytest.raises(ValueError, match="k must be"):
        DEFAULT_POLICY.with_overrides(k=float("nan"))
    with pytest.raises(ValueError, match="floor_ulps: missing entry for float16"):
        Policy(floor_ulps={"bfloat16": 1.0})
    p = Policy(rtol=3e-5, k=1.5)
    assert Policy.from_dict(p.to_dict()) == p
    assert any("k = 1.5" in line for line in p.describe())
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert Policy.from_namespace(parser.parse_args(["--rtol", "1e-4"])) == Policy(rtol=1e-4)
    assert Policy.from_namespace(parser.parse_args([])) == DEFAULT_POLICY
    with pytest.raises(SystemExit):
        parser.parse_args(["--k", "-1"])


def test_a_small_gradient_gets_its_floor_from_the_scale_of_all_gradients():
    from parity.metrics import compare
    from parity.tolerance import GRAD_SCALE_FRACTION, judge_grad

    gold = np.full(16, 1e-7)
    torch_side, flax_side = gold + 1e-13, gold + 4e-12      # fp32 rounding of larger summands
    m = compare("g", torch_side, flax_side, kind="grad", gold=gold)
    assert not judge(m, "float32").passed                       # against its own RMS alone
    assert judge_grad(m, "float32", scale=1e-2).passed          # floor at 1e-3 x 1e-2 = 1e-5 of RMS, not 1e-7
    assert GRAD_SCALE_FRACTION * 1e-2 > 1e-7
    wrong = compare("g", torch_side, gold * 1.2, kind="grad", gold=gold)
    assert not judge_grad(wrong, "float32", scale=1e-2).passed  # a 20% error still fails


def test_float32_gradients_get_the_forward_fallbacks_multiple_of_k():
    """XLA's float32 GEMM errs 2-6x PyTorch's; the gradients are its sums too (measured: the demo's float32
    gradient rows at up to 3.58x PyTorch's error on an AVX2 EPYC), so float32 gets 4 k, low precision 2 k."""
    from parity.tolerance import DEFAULT_POLICY, judge_grad

    k = DEFAULT_POLICY.k
    assert DEFAULT_POLICY.grad_bound("float32", 1.0, 0.0) == 4 * k
    assert DEFAULT_POLICY.grad_bound("bfloat16", 1.0, 0.0) == 2 * k
    gold = np.linspace(-1.0, 1.0, 64)
    torch_side = gold + 1e-5
    for factor, passed in ((3.58, True), (7.5, True), (8.5, False)):
        flax_side = gold + factor * 1e-5
        m = compare("g", torch_side, flax_side, kind="grad", gold=gold)
        verdict = judge_grad(m, "float32", 0.0)
        assert verdict.passed is passed, (factor, verdict)
        assert "4 * k" in verdict.rule


def test_a_small_tensor_takes_pytorchs_error_over_every_case_of_its_head():
    from parity.tolerance import POOL_BELOW

    m = _lowp(0.01, 0.03)                      # 4 elements, Flax's error 3x PyTorch's: a single draw each
    assert not judge(m, "float16").passed
    v = judge(m, "float16", pooled_err_ref=0.02)   # the same output's PyTorch error over the head's cases
    assert v.passed and v.tolerance == pytest.approx(2 * 0.02 + 2.0**-10) and "every case" in v.rule
    # never tighter than the tensor's own yardstick, and a real fault still fails
    assert judge(m, "float16", pooled_err_ref=0.001).tolerance == pytest.approx(2 * 0.01 + 2.0**-10)
    assert not judge(_lowp(0.01, 0.2), "float16", pooled_err_ref=0.02).passed
    # a tensor of POOL_BELOW elements or more keeps its own max, and float32 has no pooling
    big_gold = np.tile(GOLD, POOL_BELOW // 4)
    ref, cand = big_gold.copy(), big_gold.copy()
    ref[0] += 0.01
    cand[1] += 0.03
    big = compare("h", ref, cand, gold=big_gold)
    assert big.count == POOL_BELOW and not judge(big, "float16", pooled_err_ref=0.02).passed
    assert judge(_fp32(1e-4), "float32", pooled_err_ref=1.0).metric == "max_rel_err"


def test_pooled_torch_errors_take_the_largest_finite_error_per_output():
    from types import SimpleNamespace

    from parity.judge import pooled_torch_errors

    def row(key, err):
        return SimpleNamespace(key=key), SimpleNamespace(has_gold=True, gold_err_ref_max=err)

    no_gold = (SimpleNamespace(key=("logits",)), SimpleNamespace(has_gold=False, gold_err_ref_max=None))
    per_case = [[row(("logits",), 1e-3), row(("hidden", 1), 5e-3)],
                [row(("logits",), 4e-3), row(("hidden", 1), float("nan")), no_gold]]
    assert pooled_torch_errors(per_case) == {("logits",): 4e-3, ("hidden", 1): 5e-3}
