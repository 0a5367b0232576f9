"""One verdict for a run, stated the same way by the exit code and every report.

PASS        every tensor within tolerance, and no baseline regression       exit 0
FAIL        a tensor out of tolerance (parity failure)                      exit 1
REGRESSION  within tolerance, but worse than the baseline                   exit 1
ERROR       bad input (e.g. weights holding NaN): parity cannot be judged   exit 2

A parity failure outranks a regression; an error outranks both.
"""

from __future__ import annotations

from typing import Any

STATUSES = ("PASS", "FAIL", "REGRESSION", "ERROR")
EXIT_CODES = {"PASS": 0, "FAIL": 1, "REGRESSION": 1, "ERROR": 2}
WORDS = {"PASS": "PASS", "FAIL": "FAIL (parity)", "REGRESSION": "REGRESSION (baseline)", "ERROR": "ERROR (bad input)"}
# Badge colours of the HTML report (also what the browser test looks for).
COLORS = {"PASS": "#17692c", "FAIL": "#b00020", "REGRESSION": "#b35c00", "ERROR": "#5b2a86"}


def status(report: Any) -> str:
    if report.error:
        return "ERROR"
    if not report.passed:
        return "FAIL"
    if report.baseline is not None and not report.baseline.get("passed", True):
        return "REGRESSION"
    return "PASS"


def headline(report: Any) -> str:
    """'PASS: ...' / 'FAIL (parity): ...' / 'REGRESSION (baseline): ...' / 'ERROR (bad input): ...'."""
    from parity.report import describe_location, format_value

    state = status(report)
    total = sum(len(c.results) for c in report.columns)
    if state == "ERROR":
        detail = report.error
    elif state == "FAIL":
        failed = sum(len(c.failures) for c in report.columns)
        col = next(c for c in report.columns if not c.passed)
        first = col.first_failure
        detail = (f"{failed} of {total} tensors out of tolerance; first in {col.key} at "
                  f"{describe_location(first.group, first.layer)}: {first.name} {first.metric} "
                  f"{format_value(first.value)} > {format_value(first.tolerance)}")
    elif state == "REGRESSION":
        b = report.baseline
        columns = len(b.get("column_regressions", ()))
        detail = (f"{len(b['regressions'])} tensors worse than the baseline, {len(b['newly_failing'])} newly failing"
                  + (f", {columns} columns worse as a whole" if columns else "")
                  + f" ({b['compared']} compared); worst: {b['worst']}")
    else:
        detail = f"{total} tensors within tolerance" + (
            "" if report.baseline is None else f"; no regression against the baseline ({report.baseline['compared']} "
                                               f"compared, {report.baseline['mode']})")
    return f"{WORDS[state]}: {detail}"


def check_consistency(data: dict[str, Any]) -> None:
    """Schema rule: a stored outcome agrees with the report's own fields."""
    from parity.schema import ReportSchemaError

    outcome = data.get("outcome")
    if outcome is None:
        return
    if data.get("error"):
        want = "ERROR"
    elif not data["passed"]:
        want = "FAIL"
    elif data.get("baseline") is not None and not data["baseline"].get("passed", True):
        want = "REGRESSION"
    else:
        want = "PASS"
    if outcome["status"] != want:
        raise ReportSchemaError("report.outcome.status", f"expected {want!r} from the report's fields, "
                                                         f"got {outcome['status']!r}")
