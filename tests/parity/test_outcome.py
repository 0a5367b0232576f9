"""One verdict: report.md's first line, the HTML title and badge, the JUnit summary and report.json
state the same outcome (PASS / FAIL / REGRESSION / ERROR) as the exit code would."""

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from parity.metrics import compare
from parity.outcome import EXIT_CODES, WORDS
from parity.regression import compare_to_baseline
from parity.report import Environment, ReportSchemaError, RunReport, load_report, write_reports

GOLD = np.where(np.arange(64) % 2 == 0, 1.0, -1.0)
MACHINE = {"cpu_model": "AMD EPYC", "isa_flags": ["avx2"], "id": "m"}


def _report(share):
    rep = RunReport("run", Environment(python="3.11", platform="test"), machine=MACHINE)
    for i in range(2):
        cand = GOLD.copy()
        cand[0] += (share if i == 1 else 0.01) * 1e-5
        rep.add(compare(f"decoder_hidden_states[{i}]", GOLD, cand), group="decoder", layer=i)
    return rep


def make(outcome):
    if outcome == "PASS":
        rep = _report(0.05)
        rep.baseline = {"path": "b.json", **compare_to_baseline(_report(0.05), rep).to_dict()}
    elif outcome == "FAIL":
        rep = _report(3.0)
    elif outcome == "REGRESSION":
        rep = _report(0.6)
        rep.baseline = {"path": "b.json", **compare_to_baseline(_report(0.05), rep).to_dict()}
    else:
        rep = _report(0.05)
        rep.error = "the checkpoint's weights hold NaN (model.shared.weight: 3 NaN): parity cannot be judged"
    return rep


@pytest.mark.parametrize("outcome", ["PASS", "FAIL", "REGRESSION", "ERROR"])
def test_every_report_states_the_outcome_first(outcome, tmp_path):
    rep = make(outcome)
    assert rep.status == outcome and EXIT_CODES[outcome] == {"PASS": 0, "FAIL": 1, "REGRESSION": 1, "ERROR": 2}[outcome]
    paths = write_reports(rep, tmp_path)
    word = WORDS[outcome]

    first_md = paths["md"].read_text().splitlines()[0]
    assert first_md.startswith(f"## {word} · parity report")
    others = [w for s, w in WORDS.items() if s != outcome]
    assert not any(w.split()[0] in first_md for w in others)

    page = paths["html"].read_text()
    assert re.search(r"<title>(.*?)</title>", page).group(1).startswith(f"{outcome}: parity report")
    badge = re.search(r'<span id="verdict"[^>]*>(.*?)</span>', page).group(1)
    assert badge == word
    # The verdict comes before any table.
    assert page.index('id="verdict"') < page.index("<table")

    root = ET.parse(paths["junit"]).getroot()
    assert root.get("name").endswith(f": {outcome}")
    failures, errors = int(root.get("failures")), int(root.get("errors"))
    assert (failures > 0, errors > 0) == {"PASS": (False, False), "FAIL": (True, False),
                                          "REGRESSION": (True, False), "ERROR": (False, True)}[outcome]

    data = json.loads(paths["json"].read_text())
    assert data["outcome"]["status"] == outcome and data["outcome"]["exit_code"] == EXIT_CODES[outcome]
    assert data["outcome"]["headline"].startswith(word)
    assert load_report(paths["json"]).status == outcome


def test_regression_headline_names_count_and_worst_offender():
    rep = make("REGRESSION")
    assert rep.headline.startswith("REGRESSION (baseline): 1 tensors worse than the baseline, 0 newly failing")
    assert "decoder_hidden_states[1]: 0.05 -> 0.6 of its tolerance" in rep.headline


def test_a_stored_outcome_that_contradicts_the_fields_is_refused(tmp_path):
    data = make("REGRESSION").to_dict()
    data["outcome"]["status"] = "PASS"
    with pytest.raises(ReportSchemaError, match="report.outcome.status: expected 'REGRESSION'"):
        RunReport.from_dict(data)


def test_version_1_reports_still_load():
    data = make("PASS").to_dict()
    for key in ("machine", "baseline", "error", "outcome"):
        del data[key]
    data["schema_version"] = 1
    rep = RunReport.from_dict(data)
    assert rep.status == "PASS" and rep.machine is None
