"""``junit.xml``: one test case per dtype x device x output group.

One ``<testsuite>`` per column, one ``<testcase>`` per output group in that
column (``encoder``, ``decoder``, ``heads``, ...). A failing group carries a
``<failure>`` whose message names the first failing tensor and whose body
lists every failing tensor, so CI systems show parity failures natively.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from parity.report import Column, RunReport, describe_location, format_value
from parity.tolerance import METRIC_WORDS


def render_junit(report: RunReport) -> str:
    """The testsuites element is named after the run's outcome (PASS/FAIL/REGRESSION/ERROR), and its
    failure and error counts agree with it: a baseline regression is a failing ``baseline`` suite, bad
    input an ``<error>`` in an ``input`` suite."""
    root = ET.Element("testsuites", name=f"parity {report.run_name}: {report.status}")
    per_dtype = {c.dtype: sum(o.dtype == c.dtype for o in report.columns) for c in report.columns}
    # a dtype's share of the run's seconds, split between its columns (several devices): the suites' times
    # add up to the run's
    shares = _dtype_seconds(report, list(per_dtype))
    suites = [_suite(col, shares[col.dtype] / per_dtype[col.dtype]) for col in report.columns]
    if report.baseline is not None:
        suites.append(_baseline_suite(report))
    if report.error:
        suite = ET.Element("testsuite", name="input", tests="1", failures="0", errors="1", skipped="0", time="0")
        case = ET.SubElement(suite, "testcase", classname="parity.input", name="checkpoint", time="0")
        ET.SubElement(case, "error", message=report.error, type="BadInput").text = report.headline
        suites.append(suite)
    for suite in suites:
        root.append(suite)
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr)) for s in suites)))
    root.set("time", _format_seconds(sum(float(s.get("time")) for s in suites)))
    _make_safe(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _baseline_suite(report: RunReport) -> ET.Element:
    from parity.report import baseline_lines

    b = report.baseline
    suite = ET.Element("testsuite", name="baseline", tests="1", errors="0", skipped="0", time="0")
    case = ET.SubElement(suite, "testcase", classname="parity.baseline", name="regression", time="0")
    lines = baseline_lines(report, limit=1000)
    if not b["passed"]:
        ET.SubElement(case, "failure", message=report.headline, type="BaselineRegression").text = "\n".join(lines)
    ET.SubElement(case, "system-out").text = "\n".join(lines)
    suite.set("failures", "0" if b["passed"] else "1")
    return suite


def _suite(col: Column, seconds: float) -> ET.Element:
    classname = f"parity.{col.dtype}.flax_{_clean(col.flax_device)}.torch_{_clean(col.torch_device)}"
    suite = ET.Element("testsuite", name=f"parity[{col.key}]", time=_format_seconds(seconds))
    groups = col.groups()
    failures = 0
    for group in groups:
        rows = [r for r in col.results if r.group == group]
        case = ET.SubElement(suite, "testcase", classname=classname, name=group, time="0")
        bad = [r for r in rows if not r.verdict.passed]
        lines = [_line(r) for r in rows]
        if bad:
            failures += 1
            first = bad[0]
            message = (f"{len(bad)} of {len(rows)} tensors out of tolerance; first at "
                       f"{describe_location(first.group, first.layer)}: {_line(first)}")
            failure = ET.SubElement(case, "failure", message=message, type="ParityFailure")
            failure.text = "\n".join(_line(r) for r in bad)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(lines)
    suite.set("tests", str(len(groups)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    return suite


def _line(r) -> str:
    v = r.verdict
    words = METRIC_WORDS.get(v.metric, v.metric)
    status = "ok" if v.passed else "FAIL"
    return f"{status} {r.name}: {words} = {format_value(v.value)} (tolerance {format_value(v.tolerance)})"


def _dtype_seconds(report: RunReport, dtypes: list[str]) -> dict[str, float]:
    """Each dtype's part of the run's wall time (report.timings; 0 when not measured), in proportion to the
    PyTorch and Flax seconds its steps took, all heads: steps of dtypes run side by side overlap, and the
    float64 gold run, which serves every dtype, is shared out the same way. Per output group nothing is
    timed: the test cases keep time="0"."""
    timings = report.timings or {}
    work = dict.fromkeys(dtypes, 0.0)
    for key, step in (timings.get("steps") or {}).items():
        dtype = key.rsplit("/", 1)[-1]
        if isinstance(step, dict) and dtype in work:
            work[dtype] += sum(float(step.get(k) or 0) for k in ("torch_s", "flax_s"))
    total, wall = sum(work.values()), float(timings.get("seconds") or 0)
    if total <= 0 or not wall > 0:
        return dict.fromkeys(dtypes, 0.0)
    return {d: wall * w / total for d, w in work.items()}


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}"


# Characters XML 1.0 cannot hold, even escaped (C0 controls other than tab, newline, carriage return;
# lone surrogates; U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` with the characters XML 1.0 forbids written as \\xNN (a run name or message may hold them)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _make_safe(element: ET.Element) -> None:
    for el in element.iter():
        el.attrib.update({k: xml_safe(v) for k, v in el.attrib.items()})
        if el.text:
            el.text = xml_safe(el.text)


def _clean(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)
