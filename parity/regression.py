"""Baseline regression: compare a run's ``report.json`` with an earlier one.

A tensor regresses when, in the same column (dtype x devices) and under the
same name, one of its tracked metrics got worse than ``factor`` times the
baseline plus a small absolute slack, or when it passed in the baseline and
fails now ("newly failing"). Higher-is-better metrics (cosine, argmax
agreement, top-5 overlap) are compared through their deficit ``1 - value``.
The slack keeps zeros honest: a baseline error of exactly 0 would otherwise
turn any rounding noise into an infinite regression.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from parity.report import ReportError, RunReport, format_value, load_report

DEFAULT_FACTOR = 2.0
DEFAULT_SLACK = 1e-7

# metric -> (direction, slack scale). Absolute-error metrics scale their slack
# with the tensor's reference RMS; discrete ones allow one position to flip.
TRACKED: Mapping[str, tuple[str, str | None]] = {
    "max_abs_err": ("lower", "ref_rms"),
    "mean_abs_err": ("lower", "ref_rms"),
    "max_rel_err": ("lower", None),
    "cosine": ("higher", None),
    "mean_kl": ("lower", None),
    "argmax_agreement": ("higher", "positions"),
    "top5_overlap": ("higher", "positions"),
    "gold_err_cand_max": ("lower", "gold_rms"),
    "gold_err_cand_mean": ("lower", "gold_rms"),
    "mismatches": ("lower", None),
}


@dataclass(frozen=True)
class Change:
    column: str
    name: str
    metric: str
    baseline: float
    current: float

    @property
    def factor(self) -> float:
        """How many times worse (or better) the current badness is than the baseline's."""
        return _ratio(_badness(self.metric, self.current), _badness(self.metric, self.baseline))

    def describe(self) -> str:
        return (f"{self.column} {self.name} {self.metric}: {format_value(self.baseline)} -> "
                f"{format_value(self.current)} ({format_value(self.factor)}x)")

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "name": self.name, "metric": self.metric,
                "baseline": self.baseline, "current": self.current}


@dataclass
class RegressionResult:
    factor: float
    regressions: list[Change] = field(default_factory=list)
    improvements: list[Change] = field(default_factory=list)
    newly_failing: list[tuple[str, str]] = field(default_factory=list)
    fixed: list[tuple[str, str]] = field(default_factory=list)
    new: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    compared: int = 0

    @property
    def passed(self) -> bool:
        return not self.regressions and not self.newly_failing

    def to_dict(self) -> dict[str, Any]:
        from parity.schema import encode_floats
        return encode_floats({
            "passed": self.passed, "factor": self.factor, "compared": self.compared,
            "regressions": [c.to_dict() for c in self.regressions],
            "improvements": [c.to_dict() for c in self.improvements],
            "newly_failing": [list(t) for t in self.newly_failing], "fixed": [list(t) for t in self.fixed],
            "new": [list(t) for t in self.new], "missing": [list(t) for t in self.missing],
        })


def compare_to_baseline(baseline: RunReport | Mapping[str, Any], current: RunReport | Mapping[str, Any],
                        factor: float = DEFAULT_FACTOR, *, slack: float = DEFAULT_SLACK,
                        noise_fraction: float = 0.0) -> RegressionResult:
    """Compare ``current`` with ``baseline`` (reports or their validated JSON dicts).

    ``noise_fraction`` (default 0: strict) ignores metrics that got worse on tensors whose judged
    value still uses less than that fraction of their tolerance (e.g. 0.1: under 10% of the budget).
    A baseline recorded on another CPU type differs at the ulp level; this keeps such noise from
    failing the gate while any real regression, and any newly crossed tolerance, still fails it."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    if not (isinstance(noise_fraction, (int, float)) and 0 <= noise_fraction < 1):
        raise ValueError(f"noise_fraction must be a number in [0, 1), got {noise_fraction!r}")
    if not (isinstance(slack, (int, float)) and math.isfinite(slack) and slack >= 0):
        raise ValueError(f"slack must be a finite number >= 0, got {slack!r}")
    base = _as_report(baseline, "baseline")
    cur = _as_report(current, "current")
    result = RegressionResult(factor=float(factor))
    base_index = {(c.key, r.name): r for c in base.columns for r in c.results}
    cur_keys = set()
    for col in cur.columns:
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
            elif not old.verdict.passed and r.verdict.passed:
                result.fixed.append(key)
            for metric in TRACKED:
                change = _compare_metric(col.key, r.name, metric, old.metrics, r.metrics, factor, slack)
                if change is None:
                    continue
                kind, item = change
                if kind == "worse" and _within_noise(r.verdict, noise_fraction):
                    continue
                (result.regressions if kind == "worse" else result.improvements).append(item)
    result.missing = [key for key in base_index if key not in cur_keys]
    return result


def _compare_metric(column, name, metric, old_m, new_m, factor, slack):
    old_v, new_v = getattr(old_m, metric), getattr(new_m, metric)
    if old_v is None or new_v is None:
        return None
    old_v, new_v = float(old_v), float(new_v)
    old_b, new_b = _badness(metric, old_v), _badness(metric, new_v)
    if math.isnan(old_b) and math.isnan(new_b):
        return None
    change = Change(column, name, metric, old_v, new_v)
    if math.isnan(new_b):
        return "worse", change
    if math.isnan(old_b):
        return "better", change
    allowance = _slack(metric, old_m, new_m, slack)
    if new_b > factor * old_b + allowance:
        return "worse", change
    if old_b > factor * new_b + allowance:
        return "better", change
    return None


def _within_noise(verdict, noise_fraction: float) -> bool:
    """The tensor passes with its judged value under `noise_fraction` of a positive tolerance."""
    if noise_fraction <= 0 or not verdict.passed:
        return False
    value, tol = verdict.value, verdict.tolerance
    if value is None or tol is None or not (math.isfinite(value) and math.isfinite(tol)) or tol <= 0:
        return False
    return value <= noise_fraction * tol


def _badness(metric: str, value: float) -> float:
    return 1.0 - value if TRACKED[metric][0] == "higher" else value


def _slack(metric: str, old_m, new_m, slack: float) -> float:
    scale = TRACKED[metric][1]
    if scale is None:
        return slack
    if scale == "positions":
        positions = max(old_m.positions or 0, new_m.positions or 0)
        return max(slack, 1.0 / positions) if positions else slack
    sizes = [float(v) for v in (getattr(old_m, scale), getattr(new_m, scale)) if v is not None]
    sizes = [v for v in sizes if math.isfinite(v)]
    return slack * max(sizes, default=1.0)


def _ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


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
        f"(factor {format_value(result.factor)}, {result.compared} tensors compared)",
    ]
    sections = [
        ("newly failing (crossed their tolerance)", [f"{c} {n}" for c, n in result.newly_failing]),
        (f"regressions (worse by more than {format_value(result.factor)}x)", [c.describe() for c in result.regressions]),
        ("fixed (failed in the baseline, pass now)", [f"{c} {n}" for c, n in result.fixed]),
        (f"improvements (better by more than {format_value(result.factor)}x)", [c.describe() for c in result.improvements]),
        ("new tensors (not in the baseline)", [f"{c} {n}" for c, n in result.new]),
        ("missing tensors (in the baseline only)", [f"{c} {n}" for c, n in result.missing]),
    ]
    for title, items in sections:
        if items:
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  {item}" for item in items)
    return "\n".join(lines) + "\n"


def check_baseline(baseline_path: str | Path, current: RunReport, factor: float = DEFAULT_FACTOR,
                   noise_fraction: float = 0.0) -> RegressionResult:
    """Load ``baseline_path`` (ReportError on a bad file) and compare ``current`` with it."""
    return compare_to_baseline(load_report(baseline_path), current, factor, noise_fraction=noise_fraction)


def main_diff(argv: Sequence[str] | None = None) -> int:
    """``flax-bart report diff A.json B.json``: 0 no regression, 1 regression, 2 bad input."""
    parser = argparse.ArgumentParser(prog="flax-bart report diff",
                                     description="Compare a parity report with a baseline report.")
    parser.add_argument("baseline", help="earlier report.json (the baseline)")
    parser.add_argument("current", help="new report.json")
    parser.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                        help=f"allowed worsening factor per metric (default {DEFAULT_FACTOR:g})")
    parser.add_argument("--slack", type=float, default=DEFAULT_SLACK,
                        help=f"absolute slack added to the allowance, in units of the tensor's scale "
                             f"(default {DEFAULT_SLACK:g})")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return 0 if exc.code == 0 else 2
    try:
        result = compare_to_baseline(load_report(args.baseline), load_report(args.current), args.factor,
                                     slack=args.slack)
    except (ReportError, ValueError) as exc:
        print(f"flax-bart report diff: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_diff(result, baseline_label=args.baseline, current_label=args.current))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main_diff())
