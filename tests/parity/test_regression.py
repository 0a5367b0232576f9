"""parity.regression: baseline comparison in tolerance units, machine fingerprints, `report diff`."""

import json

import numpy as np
import pytest

from parity.metrics import compare
from parity.regression import (
    CROSS_MACHINE_FLOOR, POOLED_FACTOR, POOLED_MIN, SAME_MACHINE_FLOOR, TINY_COUNT, TINY_FLOOR, compare_to_baseline,
    format_diff, main_diff,
)
from parity.report import Environment, RunReport, write_json

N = 64  # elements per tensor: above TINY_COUNT
GOLD = np.where(np.arange(N) % 2 == 0, 1.0, -1.0)  # RMS 1: the absolute error is the relative error
ENV = Environment(python="3.11", platform="test")
TOL = 1e-5  # the default fp32 rtol
AVX2 = {"cpu_model": "AMD EPYC", "isa_flags": ["avx", "avx2", "fma"], "id": "a"}
AVX512 = {"cpu_model": "Intel Xeon", "isa_flags": ["avx", "avx2", "fma", "avx512f", "avx512_bf16"], "id": "b"}


def report(fractions, dtype="float32", machine=AVX2, n=N):
    """One fp32 tensor per (name, share of the 1e-5 tolerance) pair, in order."""
    rep = RunReport("r", ENV, machine=machine)
    gold = GOLD[:n]
    for i, (name, frac) in enumerate(fractions.items()):
        cand = gold.copy()
        cand[0] += frac * TOL
        rep.add(compare(name, gold, cand), group="encoder", layer=i, dtype=dtype)
    return rep


BASE = {"h[0]": 0.01, "h[1]": 0.05, "h[2]": 0.3, "h[3]": 0.9}


def test_identical_reports_pass():
    result = compare_to_baseline(report(BASE), report(BASE))
    assert result.passed and result.compared == 4 and result.mode == "same machine"
    assert not (result.regressions or result.improvements or result.new or result.missing)


def test_same_machine_counts_growth_past_the_low_floor():
    ulps = compare_to_baseline(report(BASE), report({**BASE, "h[0]": 0.05}))  # 5x, but 5% of the tolerance
    assert ulps.passed and ulps.floor == SAME_MACHINE_FLOOR and ulps.largest_move.name == "h[0]"
    worse = compare_to_baseline(report(BASE), report({**BASE, "h[1]": 0.15}))  # 3x and 15%
    assert not worse.passed and [c.name for c in worse.regressions] == ["h[1]"]
    change = worse.regressions[0]
    assert change.factor == pytest.approx(3, rel=1e-6) and change.current == pytest.approx(0.15, rel=1e-6)
    assert compare_to_baseline(report(BASE), report({**BASE, "h[1]": 0.09})).passed  # 1.8x: under the factor


def test_another_machine_tolerates_what_the_isa_moves_but_not_a_real_regression():
    # Measured between AVX-512 and AVX2 CPUs: 0.23 -> 0.65 of the tolerance (2.8x) on a 12288-value tensor,
    # and 0.45 -> 0.91 (2x) on a 2.5M-value one: across machines single tensors are judged by the tolerance.
    for share in (0.65, 0.95):
        moved = compare_to_baseline(report(BASE, machine=AVX512), report({**BASE, "h[2]": share}))
        assert moved.passed and moved.mode == "different machine" and moved.floor == CROSS_MACHINE_FLOOR == 1
    assert "isa_flags" in moved.machine_line() and "cpu_model" in moved.machine_line()
    assert "only by crossing their tolerance" in moved.machine_line()
    unknown = compare_to_baseline(report(BASE, machine=None), report({**BASE, "h[2]": 0.95}))
    assert unknown.passed and unknown.mode == "unknown machine" and "no machine fingerprint" in unknown.machine_line()


def test_a_column_that_got_worse_as_a_whole_regresses_on_any_machine():
    many = {f"h[{i}]": 0.01 + 0.01 * i for i in range(POOLED_MIN + 4)}
    base = report(many, machine=AVX512)
    noisy = {name: share * (2.5 if i % 2 else 1 / 2.5) for i, (name, share) in enumerate(many.items())}
    result = compare_to_baseline(base, report(noisy))  # single tensors 2.5x both ways: machine noise
    assert result.passed and result.columns[0].geomean == pytest.approx(1.0, rel=1e-6)
    worse = compare_to_baseline(base, report({name: 3 * share for name, share in many.items()}))
    assert not worse.passed and not worse.regressions and not worse.newly_failing
    assert worse.column_regressions[0].geomean == pytest.approx(3, rel=1e-6) and POOLED_FACTOR < 3
    assert "float32/cpu/cpu: its 20 tensors use 3x the share" in format_diff(worse)
    few = dict(list(many.items())[:POOLED_MIN - 1])  # too few tensors to judge the column's mean
    assert compare_to_baseline(report(few, machine=AVX512), report({n: 3 * v for n, v in few.items()})).passed


def test_newly_failing_regresses_on_any_machine_and_below_the_factor():
    for machine in (AVX2, AVX512, None):
        result = compare_to_baseline(report(BASE, machine=machine), report({**BASE, "h[3]": 1.1}))
        assert result.newly_failing == [("float32/cpu/cpu", "h[3]")] and not result.passed
    back = compare_to_baseline(report({**BASE, "h[3]": 1.1}), report(BASE))
    assert back.passed and back.fixed == [("float32/cpu/cpu", "h[3]")]


def test_tiny_tensors_need_half_their_tolerance_to_regress():
    small = TINY_COUNT // 2
    assert compare_to_baseline(report({"logits": 0.1}, n=small), report({"logits": 0.45}, n=small)).passed
    result = compare_to_baseline(report({"logits": 0.1}, n=small), report({"logits": 0.6}, n=small))
    assert not result.passed and result.regressions[0].count == small and TINY_FLOOR == 0.5


def test_cosine_and_other_derived_metrics_are_never_judged():
    base, cur = RunReport("r", ENV, machine=AVX2), RunReport("r", ENV, machine=AVX2)
    one = GOLD.copy()
    one[0] += 0.3 * TOL  # the same max error, spread over many more values: cosine and mean error move
    many = GOLD + np.where(np.arange(N) % 3 == 0, 0.3 * TOL, 0.0)
    base.add(compare("logits", GOLD, one, kind="logits"), group="heads")
    cur.add(compare("logits", GOLD, many, kind="logits"), group="heads")
    assert cur.columns[0].results[0].metrics.cosine != base.columns[0].results[0].metrics.cosine
    assert compare_to_baseline(base, cur).passed


def test_low_precision_fraction_follows_pytorchs_own_error():
    """bf16: when PyTorch's own error against the gold doubles with the machine, so may Flax's."""
    def bf16(torch_err, flax_err, machine):
        rep = RunReport("r", ENV, machine=machine)
        torch_out, flax_out = GOLD.copy(), GOLD.copy()
        torch_out[0] += torch_err
        flax_out[1] += flax_err
        rep.add(compare("h", torch_out, flax_out, gold=GOLD), group="encoder", layer=0, dtype="bfloat16")
        return rep
    base = bf16(0.004, 0.004, AVX512)
    assert compare_to_baseline(base, bf16(0.008, 0.008, AVX2)).passed
    assert compare_to_baseline(base, bf16(0.008, 0.008, AVX512)).passed  # same share on the same machine too
    assert not compare_to_baseline(base, bf16(0.004, 0.0085, AVX512)).passed  # Flax alone got worse


def test_nan_is_newly_failing_and_changes_are_listed():
    rep = report(BASE)
    bad = GOLD.copy()
    bad[0] = np.nan
    rep.add(compare("logits", GOLD, bad, kind="logits"), group="heads")
    base = report({**BASE, "h[2]": 0.9, "gone": 0.01})
    base.add(compare("logits", GOLD, GOLD, kind="logits"), group="heads")
    result = compare_to_baseline(base, report({**BASE, "h[2]": 0.3, "fresh": 0.0}))
    assert result.new == [("float32/cpu/cpu", "fresh")]
    assert ("float32/cpu/cpu", "gone") in result.missing and ("float32/cpu/cpu", "logits") in result.missing
    assert [c.name for c in result.improvements] == ["h[2]"] and result.passed
    assert ("float32/cpu/cpu", "logits") in compare_to_baseline(base, rep).newly_failing


def test_columns_are_matched_by_dtype_and_devices():
    result = compare_to_baseline(report(BASE), report(BASE, dtype="float64"))
    assert len(result.new) == 4 and len(result.missing) == 4 and result.compared == 0


def test_format_diff_names_both_machines_and_the_rule():
    result = compare_to_baseline(report(BASE, machine=AVX512).to_dict(), report({**BASE, "h[2]": 1.5}).to_dict())
    text = format_diff(result, baseline_label="A.json", current_label="B.json")
    assert text.startswith("A.json -> B.json: REGRESSION (factor 2, floor 1 of a tolerance, 4 tensors compared; "
                           "different machine)")
    assert "baseline machine: Intel Xeon" in text and "current machine:  AMD EPYC" in text
    assert "newly failing (crossed their tolerance): 1\n  float32/cpu/cpu h[2]" in text
    same = format_diff(compare_to_baseline(report(BASE), report({**BASE, "h[2]": 0.95})))
    assert "float32/cpu/cpu h[2]: 0.3 -> 0.95 of its tolerance (3.17x; max_rel_err 3e-06 -> 9.5e-06)" in same
    assert "no regression" in format_diff(compare_to_baseline(report(BASE), report(BASE)))
    with pytest.raises(ValueError, match="factor must be a finite number >= 1"):
        compare_to_baseline(report(BASE), report(BASE), factor=0.5)
    with pytest.raises(ValueError, match="floor must be a share"):
        compare_to_baseline(report(BASE), report(BASE), floor=1.5)


def test_explicit_floor_overrides_the_machine_rule():
    cur = report({**BASE, "h[2]": 0.65}, machine=AVX2)
    assert compare_to_baseline(report(BASE, machine=AVX512), cur).passed
    assert not compare_to_baseline(report(BASE, machine=AVX512), cur, floor=0.5).passed


def test_main_diff_exit_codes(tmp_path, capsys):
    a = write_json(report(BASE), tmp_path / "a.json")
    b = write_json(report({**BASE, "h[1]": 0.2}), tmp_path / "b.json")
    assert main_diff([str(a), str(a)]) == 0
    capsys.readouterr()
    assert main_diff([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "baseline machine: AMD EPYC" in out and "current machine:  AMD EPYC" in out
    assert main_diff([str(a), str(b), "--factor", "5"]) == 0
    assert main_diff([str(a), str(b), "--floor", "0.5"]) == 0
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


def _with_rule(rep, name, rule):
    import dataclasses

    for col in rep.columns:
        col.results[:] = [dataclasses.replace(r, verdict=dataclasses.replace(r.verdict, rule=rule))
                          if r.name == name else r for r in col.results]
    return rep


def _with_verdict(rep, name, **changes):
    import dataclasses

    for col in rep.columns:
        col.results[:] = [dataclasses.replace(r, verdict=dataclasses.replace(r.verdict, **changes))
                          if r.name == name else r for r in col.results]
    return rep


def test_a_tensor_judged_by_another_rule_is_judged_on_its_current_bound():
    """A baseline whose rule for a tensor differed (an older flax-bart's multiple of k): its value of the
    metric that decides the tensor now is measured against this run's tolerance ("rescored")."""
    from parity.regression import rule_key

    base = _with_rule(report(BASE), "h[1]", "an older rule")
    grown = compare_to_baseline(base, report({**BASE, "h[1]": 0.5}))  # 10x on the same machine
    assert not grown.passed and [c.name for c in grown.regressions] == ["h[1]"]
    assert grown.regressions[0].baseline == pytest.approx(0.05, rel=1e-6) and not grown.rule_changed
    assert [name for _, name in grown.rescored] == ["h[1]"] and grown.to_dict()["rescored"][0][1] == "h[1]"
    assert "judged by another rule or policy than in the baseline" in format_diff(grown)
    assert compare_to_baseline(base, report({**BASE, "h[1]": 0.06})).passed
    failing = compare_to_baseline(base, report({**BASE, "h[1]": 1.5}))
    assert not failing.passed and failing.newly_failing[0][1] == "h[1]"
    sum_rule = "zero gradient: ... + 32 ulps of its terms' absolute sum ({})"
    assert rule_key(sum_rule.format("0.966")) == rule_key(sum_rule.format("1.2e-07")) != rule_key("other")
    assert rule_key("x <= 4 * k") != rule_key("x <= 2 * k")


def test_a_rule_whose_metric_the_baseline_lacks_is_checked_for_failing_only():
    base = _with_rule(report(BASE), "h[1]", "another rule")
    cur = _with_verdict(report({**BASE, "h[1]": 0.5}), "h[1]", metric="gold_err_cand_max")  # no gold run here
    grown = compare_to_baseline(base, cur)
    assert grown.passed and [name for _, name in grown.rule_changed] == ["h[1]"] and not grown.rescored
    assert "whose metrics lack this run's (checked for newly failing only)" in format_diff(grown)
    failing = compare_to_baseline(base, report({**BASE, "h[1]": 1.5}))
    assert not failing.passed and failing.newly_failing[0][1] == "h[1]"


def test_a_float32_tensor_newly_passing_by_the_gold_fallback_is_judged_on_the_gold_bound():
    """Within rtol then (rule 4); now outside it, passing by the float64 gold fallback with a Flax error
    against the gold 3.1x the baseline's: a regression on the same machine, not a skipped rule change."""
    def run(flax_err):
        rep = RunReport("r", ENV, machine=AVX2)
        torch_out, flax_out = GOLD.copy(), GOLD.copy()
        torch_out[0] += 4e-5     # PyTorch itself 4e-5 off the gold: the fallback's bound is 8x that
        flax_out[0] += 4e-5 + flax_err
        rep.add(compare("h", torch_out, flax_out, gold=GOLD), group="encoder", layer=0, dtype="float32")
        return rep
    base, cur = run(5e-6), run(1e-4)
    assert base.columns[0].results[0].verdict.metric == "max_rel_err"
    assert cur.columns[0].results[0].verdict.metric == "gold_err_cand_max" and cur.passed
    result = compare_to_baseline(base, cur)
    assert not result.passed and result.rescored == [("float32/cpu/cpu", "h")]
    assert result.regressions[0].factor == pytest.approx(1.4e-4 / 4.5e-5, rel=1e-4)
    assert compare_to_baseline(base, run(3e-5)).passed   # gold error 7e-5: 1.6x


def test_a_baseline_under_another_policy_is_measured_on_this_runs_tolerance():
    import dataclasses

    from parity.report import baseline_lines
    from parity.tolerance import Policy, judge

    def run(shares, rtol):
        rep = report(shares)
        rep.policy = Policy(rtol=rtol)
        for col in rep.columns:   # judged again under `rtol`
            col.results[:] = [dataclasses.replace(r, verdict=judge(r.metrics, "float32", rep.policy))
                              for r in col.results]
        return rep
    loose, tight = run(BASE, 1e-4), run(BASE, 2e-5)   # the same errors, another --rtol
    same = compare_to_baseline(loose, tight)
    assert same.passed and not same.regressions and len(same.rescored) == 4
    assert "another tolerance policy (rtol 0.0001 -> 2e-05)" in same.policy_line()
    tight.baseline = {"path": "b.json", **same.to_dict()}
    assert any("another tolerance policy" in line for line in baseline_lines(tight))
    worse = compare_to_baseline(run(BASE, 1e-4), run({**BASE, "h[1]": 0.5}, 1e-4 / 2))
    assert not worse.passed and [c.name for c in worse.regressions] == ["h[1]"]
    assert compare_to_baseline(report(BASE), report(BASE)).policy_line() is None


@pytest.mark.parametrize("edit, words", [
    (lambda t: "[" * 100000 + "]" * 100000, "RecursionError"),                     # nesting past Python's limit
    (lambda t: t.replace('"schema_version": 2', '"schema_version": 2, "x": ' + "9" * 5000), "digits"),
    (lambda t: t.replace('"rtol": 1e-05', '"rtol": ' + "9" * 400), "rtol"),          # past the float range
    (lambda t: t.replace('"rtol": 1e-05', '"rtol": 1e999'), "rtol"),                 # read as inf
    (lambda t: t.replace('"rtol": 1e-05', '"rtol": NaN'), "bare NaN"),               # not strict JSON
])
def test_a_hostile_baseline_is_bad_input_naming_the_file(tmp_path, capsys, edit, words):
    a = write_json(report(BASE), tmp_path / "a.json")
    text = a.read_text()
    assert '"schema_version": 2' in text and '"rtol": 1e-05' in text
    bad = tmp_path / "bad.json"
    bad.write_text(edit(text))
    assert main_diff([str(bad), str(a)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and words in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("tolerance, passed, words", [
    ("NaN", True, "expected a finite number >= 0"),
    (-1.0, True, "expected a finite number >= 0"),
    (1e-9, True, "is not within its tolerance"),      # a share above 1 that claims to pass
])
def test_a_self_contradictory_verdict_is_refused(tmp_path, capsys, tolerance, passed, words):
    a = write_json(report(BASE), tmp_path / "a.json")
    data = json.loads(a.read_text())
    for res in data["columns"][0]["results"]:
        res["verdict"]["tolerance"], res["verdict"]["passed"] = tolerance, passed
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main_diff([str(tmp_path / "bad.json"), str(a)]) == 2
    assert words in capsys.readouterr().err


def test_a_baseline_sharing_no_tensor_is_bad_input(tmp_path, capsys):
    from parity.regression import check_overlap
    from parity.schema import ReportError

    a = write_json(report(BASE, dtype="float64"), tmp_path / "a.json")
    b = write_json(report(BASE), tmp_path / "b.json")
    assert main_diff([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "no tensor in common" in err and "float64/cpu/cpu" in err and "float32/cpu/cpu" in err
    result = compare_to_baseline(report(BASE), report({"other": 0.1}))
    with pytest.raises(ReportError, match="e.g. h\\[0\\] against other"):
        check_overlap(result, "base.json")
    check_overlap(compare_to_baseline(report(BASE), report({"h[0]": 0.1})), "base.json")   # one shared: fine


def test_missing_new_and_changed_weights_reach_the_report_lines():
    from parity.report import baseline_lines

    base = report(BASE)
    base.checkpoint_hash, base.config_hash = "sha256:aaa", "sha256:c"
    base.add(compare("only_in_base", GOLD, GOLD), group="heads", dtype="float64")
    cur = report({**BASE, "h[9]": 0.1})
    cur.checkpoint_hash, cur.config_hash = "sha256:bbb", "sha256:c"
    result = compare_to_baseline(base, cur)
    assert result.checkpoint_changed is True and result.config_changed is False
    cur.baseline = {"path": "b.json", **result.to_dict()}
    text = "\n".join(baseline_lines(cur))
    assert "1 tensors in the baseline, not checked by this run (1 in float64/cpu/cpu), e.g. `only_in_base`" in text
    assert "1 tensors checked by this run, not in the baseline (1 in float32/cpu/cpu), e.g. `h[9]`" in text
    assert "recorded on other weights (its hash differs)" in text
    assert "other weights" in format_diff(result)


def test_the_more_line_counts_what_is_not_listed():
    from parity.report import baseline_lines

    base = {f"h[{i}]": 0.05 for i in range(13)}
    cur = report({k: 0.5 for k in base})
    cur.baseline = {"path": "b.json", **compare_to_baseline(report(base), cur).to_dict()}
    lines = baseline_lines(cur, limit=10)
    assert sum(line.startswith("worse:") for line in lines) == 10
    assert "... and 3 more (report.json lists all)" in lines


@pytest.mark.parametrize("field, value, words", [
    ("value", -5.0, 'verdict.value: expected a number >= 0 (or "NaN" or "Infinity"), got -5.0'),
    ("value", "-Infinity", "verdict.value: expected a number >= 0"),
    ("tolerance", "Infinity", "verdict.tolerance: expected a finite number >= 0, got 'Infinity'"),
    ("metric", "bogus_metric", "verdict.metric: expected one of ['count', "),
])
def test_an_impossible_verdict_is_bad_input_naming_the_file_and_field(tmp_path, capsys, field, value, words):
    """A schema-valid baseline whose verdicts no gate writes once exited 3 from the gate (math.log of a
    negative share) and 2 with a bare "math domain error" from `report diff`."""
    a = write_json(report(BASE), tmp_path / "a.json")
    data = json.loads(a.read_text())
    for res in data["columns"][0]["results"]:
        res["verdict"][field] = value
    (tmp_path / "bad.json").write_text(json.dumps(data))
    assert main_diff([str(tmp_path / "bad.json"), str(a)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "report.columns[0].results[0]." + words in err, err
    assert "math domain" not in err and err.count("\n") == 1


def test_shares_of_impossible_in_memory_verdicts_are_skipped_not_a_math_error():
    """Reports built in memory are not validated: a negative or zero value is no share, never math.log's."""
    import dataclasses

    shares = {f"h[{i}]": 0.5 for i in range(POOLED_MIN)}
    base, cur = report(shares), report(shares)
    for col in base.columns:
        col.results[:] = [dataclasses.replace(r, verdict=dataclasses.replace(r.verdict, value=-r.verdict.value))
                          for r in col.results]
    result = compare_to_baseline(base, cur)
    assert result.compared == POOLED_MIN and result.passed and result.columns == []
    for col in cur.columns:
        col.results[:] = [dataclasses.replace(r, verdict=dataclasses.replace(r.verdict, value=0.0))
                          for r in col.results]
    assert compare_to_baseline(report(shares), cur).columns == []
    from parity.regression import fraction
    from parity.tolerance import Verdict

    assert fraction(Verdict(True, "max_rel_err", -1e-6, 1e-5, "")) is None
    assert fraction(Verdict(True, "max_rel_err", 5e-6, 1e-5, "")) == pytest.approx(0.5)


def test_a_policy_change_still_judges_computed_metrics_and_leaves_ids_alone():
    """A baseline recorded with another --k: a parameter row (mean_rel_err, computed, no metrics field) keeps
    its growth check through its own verdict value; an ids tensor (tolerance 0) is no "rule change"."""
    from parity.tolerance import Policy

    def run(param_err, k):
        rep = RunReport("r", ENV, machine=AVX2)
        rep.policy = Policy(k=k)
        cand = GOLD + param_err   # mean |err| / RMS = param_err
        rep.add(compare("p", GOLD, cand, kind="param"), group="params", layer=0, dtype="float32")
        rep.add(compare("ids", np.arange(10), np.arange(10), kind="ids"), group="generate", dtype="float32")
        return rep
    result = compare_to_baseline(run(5e-6, 3.0), run(5e-5, Policy().k))   # 10x, same rule, same rtol
    assert not result.passed and [c.name for c in result.regressions] == ["p"]
    assert result.rescored == [("float32/cpu/cpu", "p")] and not result.rule_changed
