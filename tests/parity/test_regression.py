"""parity.regression: baseline comparison, diff text and the `report diff` exit codes."""

import json

import numpy as np
import pytest

from parity.metrics import compare
from parity.regression import compare_to_baseline, format_diff, main_diff
from parity.report import Environment, RunReport, write_json

GOLD = np.array([1.0, -1.0, 1.0, -1.0])  # RMS 1: the absolute error is the relative error
ENV = Environment(python="3.11", platform="test")


def report(errors, dtype="float32"):
    """One tensor per (name, rel_err) pair, in order."""
    rep = RunReport("r", ENV)
    for i, (name, err) in enumerate(errors.items()):
        cand = GOLD + np.array([err, 0.0, 0.0, 0.0])
        rep.add(compare(name, GOLD, cand), group="encoder", layer=i, dtype=dtype)
    return rep


BASE = {"h[0]": 1e-7, "h[1]": 2e-7, "h[2]": 9e-6}


def test_identical_reports_pass():
    result = compare_to_baseline(report(BASE), report(BASE))
    assert result.passed and result.compared == 3
    assert not (result.regressions or result.improvements or result.new or result.missing)


def test_metric_worse_by_more_than_factor_regresses():
    result = compare_to_baseline(report(BASE), report({**BASE, "h[1]": 5e-7}))
    assert not result.passed and not result.newly_failing
    metrics = {(c.name, c.metric) for c in result.regressions}
    assert ("h[1]", "max_rel_err") in metrics and ("h[1]", "max_abs_err") in metrics
    change = next(c for c in result.regressions if c.metric == "max_rel_err")
    assert change.factor == pytest.approx(2.5)


def test_noise_below_factor_and_zero_baseline_do_not_regress():
    assert compare_to_baseline(report(BASE), report({**BASE, "h[1]": 3.9e-7})).passed
    zero = {"h[0]": 0.0}
    assert compare_to_baseline(report(zero), report({"h[0]": 1e-12})).passed  # absolute slack
    assert not compare_to_baseline(report(zero), report({"h[0]": 1e-6})).passed
    assert not compare_to_baseline(report(BASE), report(BASE), factor=1.0).regressions


def test_newly_crossing_the_tolerance_regresses_even_below_factor():
    result = compare_to_baseline(report(BASE), report({**BASE, "h[2]": 1.1e-5}))
    assert result.newly_failing == [("float32/cpu/cpu", "h[2]")]
    assert not result.regressions and not result.passed
    back = compare_to_baseline(report({**BASE, "h[2]": 1.1e-5}), report(BASE))
    assert back.passed and back.fixed == [("float32/cpu/cpu", "h[2]")]


def test_nan_is_a_regression_and_changes_are_listed():
    rep = report(BASE)
    bad = GOLD.copy()
    bad[0] = np.nan
    rep.add(compare("logits", GOLD, bad, kind="logits"), group="heads")
    base = report({**BASE, "h[0]": 1e-6, "gone": 1e-7})
    base.add(compare("logits", GOLD, GOLD, kind="logits"), group="heads")
    result = compare_to_baseline(base, report({"h[0]": 1e-9, "h[1]": 2e-7, "h[2]": 9e-6, "fresh": 0.0}))
    assert result.new == [("float32/cpu/cpu", "fresh")]
    assert ("float32/cpu/cpu", "gone") in result.missing and ("float32/cpu/cpu", "logits") in result.missing
    assert {c.name for c in result.improvements} == {"h[0]"}
    assert result.passed
    nan_result = compare_to_baseline(base, rep)
    assert ("float32/cpu/cpu", "logits") in nan_result.newly_failing
    assert any(c.name == "logits" and c.metric == "mean_kl" for c in nan_result.regressions)


def test_columns_are_matched_by_dtype_and_devices():
    result = compare_to_baseline(report(BASE), report(BASE, dtype="float64"))
    assert len(result.new) == 3 and len(result.missing) == 3 and result.compared == 0


def test_format_diff_and_dict_inputs():
    result = compare_to_baseline(report(BASE).to_dict(), report({**BASE, "h[1]": 5e-7}).to_dict())
    text = format_diff(result, baseline_label="A.json", current_label="B.json")
    assert text.startswith("A.json -> B.json: REGRESSION (factor 2, 3 tensors compared)")
    assert "float32/cpu/cpu h[1] max_rel_err: 2e-07 -> 5e-07 (2.5x)" in text
    assert "no regression" in format_diff(compare_to_baseline(report(BASE), report(BASE)))
    with pytest.raises(ValueError, match="factor must be a finite number >= 1"):
        compare_to_baseline(report(BASE), report(BASE), factor=0.5)


def test_main_diff_exit_codes(tmp_path, capsys):
    a = write_json(report(BASE), tmp_path / "a.json")
    b = write_json(report({**BASE, "h[1]": 5e-7}), tmp_path / "b.json")
    assert main_diff([str(a), str(a)]) == 0
    assert main_diff([str(a), str(b)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main_diff([str(a), str(b), "--factor", "3"]) == 0
    capsys.readouterr()

    assert main_diff([str(a), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json: no such file" in err and "Traceback" not in err

    broken = json.loads(a.read_text())
    del broken["columns"][0]["results"][0]["verdict"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert main_diff([str(tmp_path / "broken.json"), str(a)]) == 2
    err = capsys.readouterr().err
    assert "report.columns[0].results[0].verdict: required field is missing" in err and err.count("\n") == 1

    assert main_diff([str(a)]) == 2  # argparse: missing argument


def test_noise_fraction_ignores_ulp_noise_far_inside_tolerance_only():
    worse = report({**BASE, "h[1]": 5e-7})  # 2.5x worse, but 5% of the 1e-5 tolerance
    assert not compare_to_baseline(report(BASE), worse).passed  # strict by default
    assert compare_to_baseline(report(BASE), worse, noise_fraction=0.1).passed
    big = report({**BASE, "h[1]": 4e-6})  # 20x worse and 40% of the tolerance: a real regression
    assert not compare_to_baseline(report(BASE), big, noise_fraction=0.1).passed
    crossing = compare_to_baseline(report(BASE), report({**BASE, "h[2]": 1.1e-5}), noise_fraction=0.1)
    assert crossing.newly_failing and not crossing.passed
    with pytest.raises(ValueError, match="noise_fraction"):
        compare_to_baseline(report(BASE), worse, noise_fraction=1.5)
