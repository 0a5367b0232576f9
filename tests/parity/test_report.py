"""parity.report (+ schema, HTML, JUnit): first failure, schema validation, writers."""

import base64
import copy
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from parity.metrics import compare, field_names
from parity.report import (
    Environment, ReportError, ReportSchemaError, RunReport, checkpoint_hash, config_hash,
    load_report, render_markdown, validate_report, write_json, write_reports,
)
from parity.schema import json_schema

GOLD = np.array([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
MASK = np.array([True, True])


def _hidden(name, rel_err, gold=False):
    cand = GOLD.copy()
    cand[0, 0] += rel_err
    return compare(name, GOLD, cand, gold=GOLD if gold else None, mask=MASK)


def build_report():
    """float32/cpu/cpu fails first at decoder layer 2; bfloat16/cpu/cpu passes."""
    rep = RunReport("unit", Environment.collect(devices=["TFRT_CPU_0"], matmul_precision="highest"),
                    config_hash=config_hash({"d_model": 16, "layers": 2}))
    for i in range(3):
        rep.add(_hidden(f"encoder_hidden_states[{i}]", 1e-7), group="encoder", layer=i)
    for i in range(4):
        rep.add(_hidden(f"decoder_hidden_states[{i}]", 1e-7 if i < 2 else 1e-3 * i), group="decoder", layer=i)
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
    rep.add(compare("logits", logits, logits, kind="logits"), group="heads")
    for i in range(3):
        rep.add(_hidden(f"encoder_hidden_states[{i}]", 1e-3, gold=True), group="encoder", layer=i,
                dtype="bf16")
    rep.add(compare("greedy_ids", np.arange(5), np.arange(5), kind="ids"), group="generate", dtype="bfloat16")
    return rep


def test_first_failure_names_the_first_failing_layer():
    rep = build_report()
    assert not rep.passed
    assert [c.key for c in rep.columns] == ["float32/cpu/cpu", "bfloat16/cpu/cpu"]
    failures = rep.first_failures()
    assert list(failures) == ["float32/cpu/cpu"]
    first = failures["float32/cpu/cpu"]
    assert (first.name, first.group, first.layer, first.metric) == ("decoder_hidden_states[2]", "decoder", 2,
                                                                    "max_rel_err")
    assert first.value == pytest.approx(2e-3) and first.tolerance == 1e-5
    data = rep.to_dict()
    assert data["columns"][0]["first_failure"]["name"] == "decoder_hidden_states[2]"
    assert data["columns"][0]["counts"] == {"total": 8, "failed": 2}
    assert data["columns"][1]["first_failure"] is None and data["columns"][1]["passed"] is True


def test_add_rejects_duplicates_and_bad_layers():
    rep = build_report()
    with pytest.raises(ValueError, match=r"logits: already recorded in column float32/cpu/cpu"):
        rep.add(compare("logits", GOLD, GOLD), group="heads")
    with pytest.raises(ValueError, match="layer must be a non-negative int"):
        rep.add(compare("x", GOLD, GOLD), group="heads", layer=-1)


def test_json_round_trip_with_nan_is_strict_json(tmp_path):
    rep = build_report()
    bad = GOLD.copy()
    bad[1, 1] = np.nan
    rep.add(compare("nan_tensor", GOLD, bad), group="heads", dtype="float16", flax_device="gpu",
            torch_device="cuda:0")
    path = write_json(rep, tmp_path / "report.json")
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert '"max_abs_err": "NaN"' in text
    back = load_report(path)
    assert back.to_dict() == rep.to_dict()
    col = back.columns[-1]
    assert col.key == "float16/gpu/cuda:0" and col.first_failure.metric == "nonfinite"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def _broken(mutate):
    data = copy.deepcopy(build_report().to_dict())
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["columns"][0]["results"][1]["metrics"].pop("max_abs_err"),
     "report.columns[0].results[1].metrics.max_abs_err"),
    (lambda d: d["columns"][0]["results"][0].__setitem__("layer", "two"), "report.columns[0].results[0].layer"),
    (lambda d: d["columns"][1]["results"][0]["metrics"].__setitem__("cosine", "high"),
     "report.columns[1].results[0].metrics.cosine"),
    (lambda d: d["columns"][0]["results"][0]["metrics"].__setitem__("bogus", 1),
     "report.columns[0].results[0].metrics.bogus"),
    (lambda d: d["environment"].pop("python"), "report.environment.python"),
    (lambda d: d.__setitem__("schema_version", 99), "schema_version"),
    (lambda d: d["columns"][0].__setitem__("dtype", "int4"), "report.columns[0].dtype"),
    (lambda d: d["columns"][0]["first_failure"].__setitem__("name", "decoder_hidden_states[3]"),
     "report.columns[0].first_failure"),
    (lambda d: d["columns"][1]["results"][0]["verdict"].__setitem__("passed", False), "report.columns[1].counts"),
    (lambda d: d.__setitem__("passed", True), "report.passed"),
    (lambda d: d["policy"].__setitem__("k", -1.0), "report.policy"),
    # values no gate writes: a negative share once reached math.log (exit 3), an infinite tolerance or an
    # unknown metric once switched a tensor's regression check off
    (lambda d: d["columns"][0]["results"][0]["verdict"].__setitem__("value", -5.0),
     "report.columns[0].results[0].verdict.value"),
    (lambda d: d["columns"][1]["results"][3]["verdict"].__setitem__("value", "-Infinity"),
     "report.columns[1].results[3].verdict.value"),
    (lambda d: d["columns"][0]["results"][1]["verdict"].__setitem__("tolerance", "Infinity"),
     "report.columns[0].results[1].verdict.tolerance"),
    (lambda d: d["columns"][0]["results"][0]["verdict"].__setitem__("metric", "cosine"),
     "report.columns[0].results[0].verdict.metric"),
    (lambda d: d["columns"][0]["first_failure"].__setitem__("metric", "bogus"),
     "report.columns[0].first_failure.metric"),
    (lambda d: d["columns"][0]["results"][2]["metrics"].__setitem__("max_abs_err", -1e-3),
     "report.columns[0].results[2].metrics.max_abs_err"),
    (lambda d: d["columns"][1]["results"][0]["metrics"].__setitem__("gold_err_cand_max", "-Infinity"),
     "report.columns[1].results[0].metrics.gold_err_cand_max"),
    (lambda d: d["columns"][0]["results"][7]["metrics"].__setitem__("argmax_agreement", 1.5),
     "report.columns[0].results[7].metrics.argmax_agreement"),
    (lambda d: d["columns"][1]["results"][3]["metrics"].__setitem__("match_fraction", -0.5),
     "report.columns[1].results[3].metrics.match_fraction"),
])
def test_schema_rejects_broken_reports_naming_the_field(mutate, field):
    validate_report(build_report().to_dict())
    with pytest.raises(ReportSchemaError) as info:
        RunReport.from_dict(_broken(mutate))  # validate_report + the semantic checks of from_dict
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_every_metric_a_verdict_is_decided_on_is_one_the_schema_reads():
    """The schema refuses an unknown `verdict.metric`: every name the gate's judges write must be listed."""
    from pathlib import Path

    from parity.schema import VERDICT_METRICS

    source = "\n".join(p.read_text() for p in sorted((Path(__file__).parents[2] / "parity").glob("*.py")))
    written = set(re.findall(r'\bVerdict\([^"]*?"([a-z_0-9]+)"', source))
    assert {"count", "nonfinite", "mismatches", "max_rel_err", "gold_err_cand_max"} <= written
    assert written <= set(VERDICT_METRICS), written - set(VERDICT_METRICS)
    rep = build_report()
    rep.add(compare("nan", np.ones(4), np.array([1.0, np.nan, 1.0, 1.0])), group="heads")   # "nonfinite"
    validate_report(rep.to_dict())


def test_not_a_report_file_says_what_the_path_is(tmp_path, capsys):
    from parity.regression import main_diff
    from parity.report import not_a_report_file

    good = write_json(build_report(), tmp_path / "good.json")
    assert not_a_report_file(good) is None
    assert not_a_report_file(tmp_path / "missing.json") == "no such file"
    assert not_a_report_file(tmp_path) == "a directory, not a report.json file"
    if os.path.exists("/dev/null"):
        assert not_a_report_file("/dev/null") == "a character device, not a report.json file"
    if hasattr(os, "mkfifo"):   # a FIFO is named, never opened (reading one would wait for a writer)
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(ReportError, match="fifo: a FIFO, not a report.json file"):
            load_report(tmp_path / "fifo")
    assert main_diff([str(tmp_path), str(good)]) == 2
    assert f"{tmp_path}: a directory, not a report.json file" in capsys.readouterr().err


def test_schema_is_plain_json_data():
    schema = json.loads(json.dumps(json_schema()))
    assert schema["properties"]["schema_version"] == {"enum": [1, 2]}
    assert set(schema["properties"]["columns"]["items"]["properties"]["results"]["items"]["properties"]["metrics"]
               ["properties"]) == set(field_names())


def test_load_report_errors_name_the_file(tmp_path):
    with pytest.raises(ReportError, match="missing.json: no such file"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"bad.json: not valid JSON \(line 1"):
        load_report(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text(json.dumps(_broken(lambda d: d.pop("columns"))))
    with pytest.raises(ReportSchemaError, match=r"report.columns: required field is missing \(in .*broken.json\)"):
        load_report(tmp_path / "broken.json")


def test_markdown_summary_says_where_it_fails():
    md = render_markdown(build_report())
    assert md.startswith("## FAIL (parity) · parity report `unit`\n")
    assert "first tensor out of tolerance in forward order is at decoder layer 2 (`decoder_hidden_states[2]`)" in md
    assert "2 of 8 tensors fail" in md
    assert "Padded positions are excluded" in md
    assert md.count("| float32 | cpu | cpu |") == 1 and "| bfloat16 | cpu | cpu |" in md
    assert "| decoder | 2/4 **FAIL** | - |" in md


def test_all_writers_html_self_contained_and_junit_counts(tmp_path):
    pyplot_before = "matplotlib.pyplot" in sys.modules
    rep = build_report()
    paths = write_reports(rep, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["junit.xml", "report.html", "report.json",
                                                                      "report.md"]
    assert all(oct(os.stat(p).st_mode & 0o777) == "0o644" for p in paths.values())

    page = paths["html"].read_text()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # one plot per column with per-layer tensors
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<style>" in page and not re.search(r'(src|href)="(https?:|//)', page) and "<script" not in page
    assert "decoder_hidden_states[2]" in page
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules

    root = ET.parse(paths["junit"]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures")) == ("5", "1")  # fp32: 3 groups, bf16: 2 groups
    cases = root.findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("parity.float32.flax_cpu.torch_cpu", "encoder"), ("parity.float32.flax_cpu.torch_cpu", "decoder"),
        ("parity.float32.flax_cpu.torch_cpu", "heads"), ("parity.bfloat16.flax_cpu.torch_cpu", "encoder"),
        ("parity.bfloat16.flax_cpu.torch_cpu", "generate")]
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["decoder"]
    message = failed[0].find("failure").get("message")
    assert message.startswith("2 of 4 tensors out of tolerance; first at decoder layer 2")
    assert "decoder_hidden_states[2]" in message


def test_write_reports_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"unknown format\(s\) \['pdf'\]"):
        write_reports(build_report(), tmp_path, formats=["json", "pdf"])


def test_hashes(tmp_path):
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    (tmp_path / "w.safetensors").write_bytes(b"abc")
    (tmp_path / "config.json").write_bytes(b"{}")
    h = checkpoint_hash([tmp_path / "w.safetensors", tmp_path / "config.json"])
    assert h.startswith("sha256:") and h == checkpoint_hash([tmp_path / "config.json", tmp_path / "w.safetensors"])
    with pytest.raises(ReportError, match="nope.bin is not a file"):
        checkpoint_hash([tmp_path / "nope.bin"])


@pytest.mark.parametrize("layers", [1, 3, 40])
def test_layer_plots_tick_whole_layers_only(monkeypatch, layers):
    """The x axis is layers: a 1-layer model's plot must not tick -0.5 ... 0.5."""
    from matplotlib.figure import Figure

    from parity.report_html import plot_column

    rep = RunReport("ticks", Environment(python="3.11", platform="test"))
    for i in range(layers):
        rep.add(_hidden(f"encoder_hidden_states[{i}]", 1e-7), group="encoder", layer=i)
    seen = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (seen.append(fig.axes[0].get_xticks()),
                                                                  save(fig, *a, **k)))
    assert plot_column(rep.columns[0])
    in_range = [t for t in seen[0] if -0.5 <= t <= layers - 0.5]   # the ticks on the axis
    assert in_range and all(float(t).is_integer() for t in in_range), seen[0]
    assert layers > 16 or len(in_range) == layers
