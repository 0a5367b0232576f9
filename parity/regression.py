"""Baseline regression: compare a run's ``report.json`` with an earlier one, in tolerance units.

Each tensor is judged on the share of its tolerance it uses, ``share = value / tolerance`` of its
verdict (fp32: relative error / rtol; fp16/bf16: error against the float64 gold / (k * PyTorch's own
error + floor), which already scales with what the machine's kernels do). The comparison regresses when

- a tensor passed in the baseline and fails now ("newly failing"), on any machine;
- a tensor's share grew by more than ``factor`` **and** now reaches the floor. The floor is
  ``SAME_MACHINE_FLOOR`` when both reports carry the same machine fingerprint (runs there are
  bit-reproducible, so growth is the code's), at least ``TINY_FLOOR`` for tensors of under
  ``TINY_COUNT`` values (their maximum is the error of a handful of numbers), and
  ``CROSS_MACHINE_FLOOR`` = 1 (the tolerance itself) when the fingerprints differ or one is unknown:
  between CPU types single tensors were measured moving 2.8x and up to 0.91 of their tolerance with
  no change in the code (README, `python -m parity.cross_isa`), so no floor below the tolerance
  separates a regression from the machine there;
- (a tensor judged by another rule than in the baseline (a float32 tensor that passes by the float64
  gold fallback now and by rtol then, or the reverse; a baseline from an older flax-bart whose gradient
  rules differed), or any tensor when the baseline was recorded under another tolerance policy
  (``--rtol``, ``--k``), is judged on its current bound: the baseline's share is its value of this run's
  verdict metric over this run's tolerance ("rescored"). Where the baseline lacks that metric the
  tensor is checked for newly failing only, and the diff counts it as "rule changed")
- a whole column got worse: the geometric mean of its tensors' share ratios (columns of at least
  ``POOLED_MIN`` tensors of ``TINY_COUNT`` values or more) exceeds
  ``POOLED_FACTOR``, on any machine (measured between CPU types: 0.72 to 1.39). Machine noise
  moves single tensors both ways; a change in the code moves the column.

Raw metrics (max/mean absolute error, cosine, KL, argmax agreement) are reported, never judged:
they move with the machine, and derived ones such as cosine print equal when they differ.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from parity import machine
from parity.report import ReportError, RunReport, format_value, load_report, utf8_text

DEFAULT_FACTOR = 2.0
SAME_MACHINE_FLOOR = 0.1
CROSS_MACHINE_FLOOR = 1.0
TINY_COUNT = 32
TINY_FLOOR = 0.5
POOLED_FACTOR = 2.0
POOLED_MIN = 16  # tensors a column needs before its mean is judged


def fraction(verdict) -> float | None:
    """Share of the tolerance a passing verdict uses; None where it is not a ratio (ids, zero tolerance) or
    not a share at all (a negative or non-finite value: parity.schema refuses such reports, but a report
    built in memory is not validated)."""
    value, tol = verdict.value, verdict.tolerance
    if tol is None or value is None or not (math.isfinite(tol) and tol > 0 and math.isfinite(value) and value >= 0):
        return None
    return value / tol


@dataclass(frozen=True)
class Change:
    """One tensor's move between two runs, in tolerance fractions."""

    column: str
    name: str
    metric: str
    count: int
    baseline: float
    current: float
    baseline_value: float
    current_value: float

    @property
    def factor(self) -> float:
        if self.baseline == 0:
            return 1.0 if self.current == 0 else math.inf
        return self.current / self.baseline

    def describe(self) -> str:
        return (f"{self.column} {self.name}: {format_value(self.baseline)} -> {format_value(self.current)} "
                f"of its tolerance ({format_value(self.factor)}x; {self.metric} "
                f"{format_value(self.baseline_value)} -> {format_value(self.current_value)})")

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "name": self.name, "metric": self.metric, "count": self.count,
                "baseline_fraction": self.baseline, "current_fraction": self.current,
                "baseline_value": self.baseline_value, "current_value": self.current_value}


@dataclass(frozen=True)
class ColumnShift:
    """How a column's tensors moved as a whole: geometric mean of their share ratios."""

    column: str
    tensors: int
    geomean: float

    def describe(self) -> str:
        return (f"{self.column}: its {self.tensors} tensors use {format_value(self.geomean)}x the share of their "
                f"tolerance they used in the baseline (geometric mean)")

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "tensors": self.tensors, "geomean": self.geomean}


@dataclass
class RegressionResult:
    factor: float
    floor: float
    mode: str  # "same machine" | "different machine" | "unknown machine"
    baseline_machine: Mapping[str, Any] | None = None
    current_machine: Mapping[str, Any] | None = None
    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)
    largest_move: Change | None = None  # the biggest growth that stayed under the floor
    newly_failing: list[tuple[str, str]] = field(default_factory=list)
    columns: list[ColumnShift] = field(default_factory=list)
    fixed: list[tuple[str, str]] = field(default_factory=list)
    new: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    rule_changed: list[tuple[str, str]] = field(default_factory=list)  # shares not comparable
    rescored: list[tuple[str, str]] = field(default_factory=list)  # baseline share taken on this run's bound
    # the two runs' tolerance policies, when they differ (None: the same policy)
    policy_change: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None
    compared: int = 0
    # whether the baseline was recorded on other weights or another config (None: a report lacks the hash)
    checkpoint_changed: bool | None = None
    config_changed: bool | None = None

    @property
    def column_regressions(self) -> list[ColumnShift]:
        return [c for c in self.columns if c.geomean > POOLED_FACTOR]

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.newly_failing and not self.column_regressions

    def machine_line(self) -> str:
        """One line on whether the two runs share a machine fingerprint, and what that means."""
        if self.mode == "same machine":
            return (f"baseline and this run share the machine fingerprint {self.current_machine.get('id')}: "
                    f"growth past {format_value(self.floor)} of a tolerance counts")
        if self.mode == "different machine":
            diffs = machine.differences(self.baseline_machine, self.current_machine)
            return (f"baseline recorded on another machine ({'; '.join(diffs)}): judged in tolerance units; "
                    f"single tensors only by {_floor_words(self.floor)}, columns by their mean growth")
        return (f"the {'baseline' if not self.baseline_machine else 'current run'} has no machine fingerprint: "
                f"judged as for another machine (single tensors only by {_floor_words(self.floor)}, "
                f"columns by their mean growth)")

    def worst(self) -> str | None:
        """The worst offender, in words: the first newly failing tensor, else the largest growth."""
        if self.newly_failing:
            column, name = self.newly_failing[0]
            return f"{column} {name} crossed its tolerance"
        if self.regressions:
            return max(self.regressions, key=lambda c: (c.current, c.factor)).describe()
        if self.column_regressions:
            return max(self.column_regressions, key=lambda c: c.geomean).describe()
        return None

    def to_dict(self) -> dict[str, Any]:
        from parity.schema import encode_floats
        return encode_floats({
            "passed": self.passed, "factor": self.factor, "floor": self.floor, "mode": self.mode,
            "compared": self.compared, "machine_line": self.machine_line(), "worst": self.worst(),
            "regressions": [c.to_dict() for c in self.regressions],
            "improvements": [c.to_dict() for c in self.improvements],
            "largest_move": None if self.largest_move is None else self.largest_move.to_dict(),
            "newly_failing": [list(t) for t in self.newly_failing],
            "columns": [c.to_dict() for c in self.columns],
            "column_regressions": [c.to_dict() for c in self.column_regressions], "fixed": [list(t) for t in self.fixed],
            "new": [list(t) for t in self.new], "missing": [list(t) for t in self.missing],
            "rule_changed": [list(t) for t in self.rule_changed], "rescored": [list(t) for t in self.rescored],
            "policy_changed": self.policy_change is not None, "policy_line": self.policy_line(),
            "checkpoint_changed": self.checkpoint_changed, "config_changed": self.config_changed,
        })

    def subject_line(self) -> str | None:
        """Whether the baseline checked the same weights and config (None when it did, or cannot say)."""
        what = [name for name, changed in (("weights", self.checkpoint_changed), ("config", self.config_changed))
                if changed]
        if not what:
            return None
        return (f"the baseline was recorded on other {' and '.join(what)} (its checkpoint/config hash differs): "
                "shares are compared all the same")

    def policy_line(self) -> str | None:
        """What differs between the baseline's tolerance policy and this run's (None when nothing)."""
        if self.policy_change is None:
            return None
        old, new = self.policy_change
        diffs = [f"{name} {_policy_value(old.get(name))} -> {_policy_value(new.get(name))}"
                 for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
        return (f"the baseline was judged under another tolerance policy ({'; '.join(diffs)}): each baseline "
                "value is measured against this run's tolerance")


def compare_to_baseline(baseline: RunReport | Mapping[str, Any], current: RunReport | Mapping[str, Any],
                        factor: float = DEFAULT_FACTOR, *, floor: float | None = None) -> RegressionResult:
    """Compare ``current`` with ``baseline`` (reports or their validated JSON dicts).

    ``floor`` (a fraction of the tolerance) overrides the automatic choice between
    ``SAME_MACHINE_FLOOR`` and ``CROSS_MACHINE_FLOOR``; tiny tensors never go below ``TINY_FLOOR``."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    if floor is not None and not (isinstance(floor, (int, float)) and 0 <= floor <= 1):
        raise ValueError(f"floor must be a share of the tolerance in [0, 1], got {floor!r}")
    base = _as_report(baseline, "baseline")
    cur = _as_report(current, "current")
    same = machine.same_machine(base.machine, cur.machine)
    mode = {True: "same machine", False: "different machine", None: "unknown machine"}[same]
    if floor is None:
        floor = SAME_MACHINE_FLOOR if same else CROSS_MACHINE_FLOOR
    result = RegressionResult(factor=float(factor), floor=float(floor), mode=mode,
                              baseline_machine=base.machine, current_machine=cur.machine,
                              checkpoint_changed=_differs(base.checkpoint_hash, cur.checkpoint_hash),
                              config_changed=_differs(base.config_hash, cur.config_hash))
    if base.policy != cur.policy:
        result.policy_change = (base.policy.to_dict(), cur.policy.to_dict())
    base_index = {(c.key, r.name): r for c in base.columns for r in c.results}
    cur_keys = set()
    for col in cur.columns:
        logs = []
        for r in col.results:
            key = (col.key, r.name)
            cur_keys.add(key)
            old = base_index.get(key)
            if old is None:
                result.new.append(key)
                continue
            result.compared += 1
            if old.verdict.passed and not r.verdict.passed:
                result.newly_failing.append(key)
                continue
            if not old.verdict.passed and r.verdict.passed:
                result.fixed.append(key)
            if not (old.verdict.passed and r.verdict.passed):
                continue
            f_old, old_value = fraction(old.verdict), old.verdict.value
            if (fraction(r.verdict) is not None and (result.policy_change is not None
                                                     or rule_key(old.verdict.rule) != rule_key(r.verdict.rule))):
                old_value = rescore_value(old, r)
                if old_value is None:
                    result.rule_changed.append(key)
                    continue
                f_old = old_value / r.verdict.tolerance
                result.rescored.append(key)
            _judge_move(result, col.key, old, r, factor, floor, f_old, old_value)
            f_new = fraction(r.verdict)
            if (f_old is not None and f_new is not None and f_old > 0 and f_new > 0
                    and min(old.metrics.count, r.metrics.count) >= TINY_COUNT):
                logs.append(math.log(f_new / f_old))
        if len(logs) >= POOLED_MIN:
            mean = sum(logs) / len(logs)   # shares of tiny and huge tolerances: exp can overflow
            result.columns.append(ColumnShift(col.key, len(logs), math.exp(mean) if mean < 700 else math.inf))
    result.missing = [key for key in base_index if key not in cur_keys]
    return result


def _differs(a: str | None, b: str | None) -> bool | None:
    return None if a is None or b is None else a != b


_NUMBER_IN_PARENS = re.compile(r"\(\s*[-+]?[0-9][0-9.eE+-]*\s*\)")


def rule_key(rule: str | None) -> str:
    """A verdict's rule without the per-tensor numbers some rules print in parentheses (a zero bias
    gradient's terms' sum): two verdicts with the same key measured their shares against the same bound."""
    return _NUMBER_IN_PARENS.sub("()", rule or "")


def rescore_value(old, new) -> float | None:
    """The baseline tensor's value of the metric that decides `new` now: its verdict's value when that
    verdict was decided on the same metric (a value does not depend on the policy), else the baseline's
    metrics field of that name; None where there is no finite value >= 0 (the metric is computed, such as
    `mean_rel_err`, or absent)."""
    if old.verdict.metric == new.verdict.metric:
        value = old.verdict.value
    else:
        value = getattr(old.metrics, new.verdict.metric, None)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _policy_value(value) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} {_policy_value(v)}" for k, v in sorted(value.items())) + "}"
    return format_value(value) if isinstance(value, (int, float)) else str(value)


def _judge_move(result: RegressionResult, column: str, old, new, factor: float, floor: float,
                f_old: float | None, old_value: float) -> None:
    f_new = fraction(new.verdict)
    if f_old is None or f_new is None:
        return
    count = min(int(old.metrics.count), int(new.metrics.count))
    need = max(floor, TINY_FLOOR) if count < TINY_COUNT else floor
    change = Change(column, new.name, new.verdict.metric, count, f_old, f_new,
                    float(old_value), float(new.verdict.value))
    if f_new > factor * f_old and f_new >= need:
        result.regressions.append(change)
    elif f_old > factor * f_new and f_old >= need:
        result.improvements.append(change)
    elif f_new > f_old and (result.largest_move is None or
                            (f_new - f_old) > (result.largest_move.current - result.largest_move.baseline)):
        result.largest_move = change


def _floor_words(floor: float) -> str:
    return "crossing their tolerance" if floor >= 1 else f"growth past {format_value(floor)} of their tolerance"


def _as_report(value: RunReport | Mapping[str, Any], label: str) -> RunReport:
    if isinstance(value, RunReport):
        return value
    if isinstance(value, Mapping):
        return RunReport.from_dict(value)
    raise TypeError(f"{label}: expected a RunReport or a report dict, got {type(value).__name__}")


def format_diff(result: RegressionResult, *, baseline_label: str = "baseline",
                current_label: str = "current") -> str:
    """Human-readable comparison, as printed by ``flax-bart report diff``."""
    verdict = "no regression" if result.passed else "REGRESSION"
    lines = [
        f"{baseline_label} -> {current_label}: {verdict} "
        f"(factor {format_value(result.factor)}, floor {format_value(result.floor)} of a tolerance, "
        f"{result.compared} tensors compared; {result.mode})",
        f"  baseline machine: {machine.describe(result.baseline_machine)}",
        f"  current machine:  {machine.describe(result.current_machine)}",
        f"  {result.machine_line()}",
    ]
    for extra in (result.subject_line(), result.policy_line()):
        if extra:
            lines.append(f"  {extra}")
    sections = [
        ("newly failing (crossed their tolerance)", [f"{c} {n}" for c, n in result.newly_failing]),
        (f"regressions (tolerance share grew more than {format_value(result.factor)}x and reached the floor)",
         [c.describe() for c in result.regressions]),
        ("fixed (failed in the baseline, pass now)", [f"{c} {n}" for c, n in result.fixed]),
        (f"columns worse as a whole (geometric mean share ratio above {format_value(POOLED_FACTOR)})",
         [c.describe() for c in result.column_regressions]),
        (f"improvements (tolerance share shrank more than {format_value(result.factor)}x)",
         [c.describe() for c in result.improvements]),
        ("new tensors (not in the baseline)", [f"{c} {n}" for c, n in result.new]),
        ("missing tensors (in the baseline only)", [f"{c} {n}" for c, n in result.missing]),
    ]
    for title, items in sections:
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  {item}" for item in items)
    for items, title in ((result.rescored, "judged by another rule or policy than in the baseline (the baseline's "
                                           "value measured against this run's tolerance)"),
                         (result.rule_changed, "judged by another rule than in the baseline, whose metrics lack "
                                               "this run's (checked for newly failing only)")):
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  {c} {n}" for c, n in items[:5])
            if len(items) > 5:
                lines.append(f"  ... and {len(items) - 5} more")
    if result.columns:
        lines.append("column shifts (geometric mean of share ratios): " +
                     ", ".join(f"{c.column} {format_value(c.geomean)}x" for c in result.columns))
    if result.largest_move is not None:
        lines.append(f"largest single-tensor growth that is not a regression: {result.largest_move.describe()}")
    return "\n".join(lines) + "\n"


def check_overlap(result: RegressionResult, baseline_label) -> None:
    """A baseline that shares no tensor with the run proves nothing: ReportError (bad input), naming the
    columns on each side (e.g. a baseline of another head, or of dtypes this run does not check)."""
    if result.compared:
        return

    def columns(keys) -> str:
        found = sorted({c for c, _ in keys})
        return ", ".join(found) if found else "none"

    raise ReportError(f"baseline {baseline_label}: no tensor in common with this run, nothing could be compared "
                      f"(baseline columns: {columns(result.missing)}; this run's: {columns(result.new)}; "
                      f"e.g. {result.missing[0][1] if result.missing else '-'} against "
                      f"{result.new[0][1] if result.new else '-'})")


def check_baseline(baseline: str | Path | RunReport, current: RunReport, factor: float = DEFAULT_FACTOR,
                   floor: float | None = None) -> RegressionResult:
    """Compare ``current`` with a baseline report or the path of one (ReportError on a bad file)."""
    base = baseline if isinstance(baseline, RunReport) else load_report(baseline)
    return compare_to_baseline(base, current, factor, floor=floor)


def main_diff(argv: Sequence[str] | None = None) -> int:
    """``flax-bart report diff A.json B.json``: 0 no regression, 1 regression, 2 bad input."""
    parser = argparse.ArgumentParser(prog="flax-bart report diff",
                                     description="Compare a parity report with a baseline report, in units of "
                                                 "each tensor's tolerance.")
    parser.add_argument("baseline", help="earlier report.json (the baseline)")
    parser.add_argument("current", help="new report.json")
    parser.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                        help=f"allowed growth of a tensor's tolerance share (default {DEFAULT_FACTOR:g})")
    parser.add_argument("--floor", type=float, default=None, metavar="FRACTION",
                        help=f"a tensor's growth counts only once it uses this share of its tolerance (default: "
                             f"{SAME_MACHINE_FLOOR:g} on the same machine, {CROSS_MACHINE_FLOOR:g} = only crossing "
                             f"the tolerance, across machines)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return 0 if exc.code == 0 else 2
    try:
        result = compare_to_baseline(load_report(args.baseline), load_report(args.current), args.factor,
                                     floor=args.floor)
        check_overlap(result, args.baseline)
    except (ReportError, ValueError) as exc:
        print(f"flax-bart report diff: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(utf8_text(format_diff(result, baseline_label=args.baseline, current_label=args.current)))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main_diff())
