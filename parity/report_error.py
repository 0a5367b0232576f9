"""The reports of a gate that stopped before it could judge anything: bad input found before or during
the run (exit 2), a bug (exit 3), an interrupt.

An earlier run's reports in the same `--out` folder must not outlive such a run: a CI step that
publishes `junit.xml` after a failed gate would show the earlier PASS. So `junit.xml` and `report.md`
are replaced by ones that state the error, and the earlier `report.json` and `report.html` (which
describe tensors this run never compared) are removed. Only those four names are touched, each
atomically, and only in a folder that exists already (bad input never creates one) and is either empty
or holds an earlier parity run's reports: a `report.json` or a `junit.xml` that the gate wrote
(`earlier_output_problem`). Any other folder, say the checkpoint's own given as `--out` by mistake, is
left as it is, as is one that cannot be written (the exit code and stderr still say it).
"""

from __future__ import annotations

import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

from parity.report import FILE_NAMES
from parity.report_junit import xml_safe
from parity.schema import REPORT_KIND

HEAD_BYTES = 4096   # how much of a report.json / junit.xml is read to recognise the gate's own
# What parity.report.write_json (and the demo's compact baselines) write first: the schema version, then
# the kind; and parity.report_junit / render_junit_error's root element, named after the outcome.
_REPORT_JSON_HEAD = re.compile(r'\A\s*\{\s*"schema_version"\s*:\s*\d+\s*,\s*"kind"\s*:\s*"'
                               + re.escape(REPORT_KIND) + '"')
_JUNIT_HEAD = re.compile(r'\A\s*(<\?xml[^>]*\?>\s*)?<testsuites\s+name="parity [^"]*: '
                         r'(PASS|FAIL|REGRESSION|ERROR)"')

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
    if not out.is_dir() or earlier_output_problem(out) is not None:
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


def earlier_output_problem(out_dir: os.PathLike | str) -> str | None:
    """Why the error reports must not go into the existing folder `out_dir`, in words; None when they may:
    the folder is empty, or its `report.json` or `junit.xml` is the gate's (a report of any outcome, or
    an earlier error report)."""
    out = Path(out_dir)
    try:
        with os.scandir(out) as entries:
            if next(entries, None) is None:
                return None
    except OSError as e:
        return f"it cannot be listed ({e.strerror or e})"
    if _starts_like(out / FILE_NAMES["json"], _REPORT_JSON_HEAD) or _starts_like(out / FILE_NAMES["junit"],
                                                                                  _JUNIT_HEAD):
        return None
    return (f"it holds other files and no earlier parity reports (no {FILE_NAMES['json']} or "
            f"{FILE_NAMES['junit']} written by the gate)")


def _starts_like(path: Path, head: re.Pattern) -> bool:
    """Whether `path` is a regular file whose first HEAD_BYTES match `head` (a FIFO or a device is never
    read: opened without waiting, then refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        text = os.read(fd, HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    finally:
        os.close(fd)
    return head.match(text) is not None


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
