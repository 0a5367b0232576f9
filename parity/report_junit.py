"""``junit.xml``: one test case per dtype x device x output group.

One ``<testsuite>`` per column, one ``<testcase>`` per output group in that
column (``encoder``, ``decoder``, ``heads``, ...). A failing group carries a
``<failure>`` whose message names the first failing tensor and whose body
lists every failing tensor, so CI systems show parity failures natively.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from parity.report import Column, RunReport, describe_location, format_value
from parity.tolerance import METRIC_WORDS


def render_junit(report: RunReport) -> str:
    root = ET.Element("testsuites", name=f"parity {report.run_name}")
    total = failed = 0
    for col in report.columns:
        suite = _suite(col)
        root.append(suite)
        total += int(suite.get("tests"))
        failed += int(suite.get("failures"))
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(col: Column) -> ET.Element:
    classname = f"parity.{col.dtype}.flax_{_clean(col.flax_device)}.torch_{_clean(col.torch_device)}"
    suite = ET.Element("testsuite", name=f"parity[{col.key}]")
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


def _clean(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)
