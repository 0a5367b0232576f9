"""The reports of a gate that stopped before it could judge anything: bad input found before or during
the run (exit 2), a bug (exit 3), an interrupt.

An earlier run's reports in the same `--out` folder must not outlive such a run: a CI step that
publishes `junit.xml` after a failed gate would show the earlier PASS. So `junit.xml` and `report.md`
are replaced by ones that state the error, and the earlier `report.json` and `report.html` (which
describe tensors this run never compared) are removed. Only those four names are touched, each
atomically, and only in a folder that exists already (bad input never creates one); a folder that
cannot be written is left as it is (the exit code and stderr still say it).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from parity.report import FILE_NAMES
from parity.report_junit import xml_safe

KINDS = {  # exit code -> (words, JUnit error type)
    2: ("ERROR (bad input)", "BadInput"),
    3: ("ERROR (internal error)", "InternalError"),
    130: ("ERROR (interrupted)", "Interrupted"),
}


def replace_with_error(out_dir: os.PathLike | str, run_name: str, exit_code: int, message: str) -> list[Path]:
    """Write the error's `junit.xml` and `report.md` into `out_dir`, remove the other reports there;
    returns the files written (none when the folder cannot be written)."""
    from flax_bart.io_utils import atomic_write_text

    words, kind = KINDS.get(exit_code, KINDS[3])
    if not str(out_dir).strip():   # Path("") is the working directory: never that by accident
        return []
    out = Path(out_dir)
    if not out.is_dir():
        return []
    try:
        for fmt in ("json", "html"):
            try:
                os.remove(out / FILE_NAMES[fmt])
            except FileNotFoundError:
                pass
        junit, md = out / FILE_NAMES["junit"], out / FILE_NAMES["md"]
        atomic_write_text(junit, render_junit_error(run_name, words, kind, message))
        atomic_write_text(md, render_markdown_error(run_name, words, message, exit_code))
    except OSError:
        return []
    return [junit, md]


def render_junit_error(run_name: str, words: str, kind: str, message: str) -> str:
    root = ET.Element("testsuites", name=xml_safe(f"parity {run_name}: ERROR"), tests="1", failures="0",
                      errors="1", skipped="0", time="0")
    suite = ET.SubElement(root, "testsuite", name="input", tests="1", failures="0", errors="1", skipped="0",
                          time="0")
    case = ET.SubElement(suite, "testcase", classname="parity.input", name="gate", time="0")
    ET.SubElement(case, "error", message=xml_safe(message), type=kind).text = xml_safe(f"{words}: {message}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_markdown_error(run_name: str, words: str, message: str, exit_code: int) -> str:
    return (f"## ERROR · parity report `{xml_safe(run_name)}`\n\n**{words}: {xml_safe(message)}**\n\n"
            f"The gate stopped (exit code {exit_code}) before it compared any tensor; no verdict on parity. "
            f"The reports of an earlier run in this folder were removed or replaced.\n")
