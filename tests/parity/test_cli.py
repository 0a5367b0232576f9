"""`flax-bart parity` / `python -m parity` / `flax-bart demo`: exit codes, reports, baselines, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from bart_helpers import torch_model
from parity.cli import demo_main, main
from parity.demo import QUICK_SHAPE, ensure_checkpoint
from parity.regression import CROSS_MACHINE_FLOOR, SAME_MACHINE_FLOOR
from parity.report import load_report
from tokenizer_utils import write_bart_tokenizer

REPO = Path(__file__).resolve().parents[2]
FAST = ["--heads", "qa", "--cases", "right_padding", "--steps", "2", "--batch-size", "2", "--seq-len", "12"]
REPORT_FILES = ["junit.xml", "report.html", "report.json", "report.md"]


def save_checkpoint(directory, head="lm", **overrides):
    torch_model(head, **{**QUICK_SHAPE, **overrides}).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def passing_run(checkpoint, tmp_path_factory):
    from parity import harness

    out = tmp_path_factory.mktemp("reports") / "gate"
    with pytest.MonkeyPatch.context() as mp:  # models cached by earlier tests would compile nothing here
        mp.setattr(harness, "_MODELS", {})
        code = main([checkpoint, *FAST, "--out", str(out), "--quiet"])
    return code, out


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pass_writes_four_valid_reports(passing_run):
    code, out = passing_run
    assert code == 0
    assert sorted(os.listdir(out)) == REPORT_FILES
    report = load_report(out / "report.json")  # validates against the schema
    assert report.passed and report.run_name == "gate"
    root = ET.parse(out / "junit.xml").getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0" and int(root.get("tests")) == 4
    assert (out / "report.md").read_text().startswith("## PASS · parity report `gate`")
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    # Where the time went: per head and dtype, PyTorch vs Flax building (tracing, lowering, compiling) vs running.
    step = report.timings["steps"]["qa/float32"]
    assert step["flax_programs"] >= 1 and step["flax_compile_s"] > 0 and step["torch_s"] > 0
    assert step["flax_s"] >= step["flax_compile_s"] + step["flax_run_s"] - 1e-3
    assert "Time: PyTorch" in (out / "report.md").read_text() and "programs" in (out / "report.md").read_text()


def test_compile_cache_defaults_to_a_folder_per_isa_and_never_overrides_the_caller(tmp_path, monkeypatch):
    import jax

    from parity.cli import default_compile_cache, setup_compile_cache
    from parity.machine import compile_key

    monkeypatch.setenv("FLAX_BART_CACHE", str(tmp_path))
    assert default_compile_cache() == tmp_path / "jax-compile" / compile_key()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX")
    capped = compile_key()
    monkeypatch.delenv("XLA_FLAGS")
    assert capped != compile_key()  # a capped process never loads programs built for the full ISA
    before = jax.config.jax_compilation_cache_dir
    assert before  # the test session configured one (tests/conftest.py)
    setup_compile_cache(None, disabled=False)
    assert jax.config.jax_compilation_cache_dir == before  # the embedding process's choice wins
    setup_compile_cache(str(tmp_path / "x"), disabled=True)
    assert jax.config.jax_compilation_cache_dir == before and not (tmp_path / "x").exists()


def test_table_and_verdict_are_printed(checkpoint, tmp_path, capsys):
    code, out, _ = run([checkpoint, *FAST, "--out", str(tmp_path)], capsys)
    assert code == 0
    assert "float32/cpu/cpu" in out and "first failure" in out and out.strip().splitlines()[-1].startswith("PASS")


def test_perturbed_flax_checkpoint_fails_naming_decoder_layer_2(checkpoint, tmp_path, capsys):
    from convert import load_flax_params, save_flax_params
    from flax_bart.config import BartConfig

    flax_dir = tmp_path / "flax"
    params, _ = load_flax_params(checkpoint, BartConfig.from_json_file(os.path.join(checkpoint, "config.json")), "lm")
    fc1 = params["model"]["decoder"]["layers"]["2"]["fc1"]
    fc1["kernel"] = (fc1["kernel"].astype(np.float64) * 1.001).astype(np.float32)
    save_flax_params(params, flax_dir)
    code, out, _ = run([checkpoint, "--flax", str(flax_dir), *FAST, "--out", str(tmp_path / "r")], capsys)
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("FAIL")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    first = data["columns"][0]["first_failure"]
    assert (first["group"], first["layer"], first["name"]) == ("decoder", 2, "qa/right_padding/decoder_hidden_states[3]")
    assert "decoder layer 2" in (tmp_path / "r" / "report.md").read_text()
    failures = ET.parse(tmp_path / "r" / "junit.xml").getroot().findall(".//failure")
    assert failures and "decoder layer 2" in failures[0].get("message")


def test_baseline_regression_fails_and_an_equal_baseline_passes(checkpoint, passing_run, tmp_path, capsys):
    _, out = passing_run
    same = main([checkpoint, *FAST, "--out", str(tmp_path / "same"), "--quiet", "--baseline", str(out / "report.json")])
    assert same == 0
    assert load_report(tmp_path / "same" / "report.json").baseline["mode"] == "same machine"
    data = json.loads((out / "report.json").read_text())
    # The tensor using the largest share of its tolerance, made 4x better in the baseline: a real 4x worsening.
    results = [r for r in data["columns"][0]["results"] if r["metrics"]["kind"] != "ids"]
    target = max(results, key=lambda r: r["verdict"]["value"] / r["verdict"]["tolerance"])
    share = target["verdict"]["value"] / target["verdict"]["tolerance"]
    target["verdict"]["value"] /= 4
    better = tmp_path / "better_baseline.json"
    better.write_text(json.dumps(data))
    floor = f"{share / 2:.6g}"
    code, printed, _ = run([checkpoint, *FAST, "--out", str(tmp_path / "worse"), "--baseline", str(better),
                            "--baseline-floor", floor], capsys)
    assert code == 1
    last = printed.strip().splitlines()[-1]
    assert last.startswith("REGRESSION (baseline): 1 tensors worse than the baseline") and target["name"] in last
    report = load_report(tmp_path / "worse" / "report.json")
    assert report.passed and report.status == "REGRESSION"  # within tolerance, but worse than the baseline
    assert (tmp_path / "worse" / "report.md").read_text().startswith("## REGRESSION (baseline)")

    # The same baseline from another machine: said in one line, judged with the cross-machine floor.
    data["machine"] = {**data["machine"], "cpu_model": "Some Other CPU", "isa_flags": ["avx", "avx2", "avx512f"]}
    data["machine"]["id"] = "other"
    other = tmp_path / "other_machine.json"
    other.write_text(json.dumps(data))
    for extra in ([], ["--baseline-floor", "1"]):   # the default across machines, and the same floor given
        code, printed, _ = run([checkpoint, *FAST, "--out", str(tmp_path / "other"), "--baseline", str(other),
                                *extra], capsys)
        assert "baseline recorded on another machine (cpu_model: Some Other CPU ->" in printed
        assert code == (1 if share >= CROSS_MACHINE_FLOOR else 0)


def test_a_baseline_of_another_head_is_bad_input_with_reports(checkpoint, passing_run, tmp_path, capsys):
    _, out = passing_run   # a qa baseline, against a run of the lm head: nothing in common
    code, _, err = run([checkpoint, "--heads", "lm", *FAST[2:], "--out", str(tmp_path / "lm"), "--quiet",
                        "--baseline", str(out / "report.json")], capsys)
    assert code == 2 and "no tensor in common" in err and "Traceback" not in err
    report = load_report(tmp_path / "lm" / "report.json")
    assert report.status == "ERROR" and report.baseline["compared"] == 0
    assert "in the baseline, not checked by this run" in (tmp_path / "lm" / "report.md").read_text()


@pytest.mark.parametrize("how", ["bad_baseline", "internal", "usage"])
def test_a_run_that_stops_early_leaves_no_earlier_reports(checkpoint, passing_run, tmp_path, capsys, monkeypatch, how):
    import shutil

    _, earlier = passing_run
    out = tmp_path / "gate"
    shutil.copytree(earlier, out)                       # an earlier PASS in the same --out folder
    (out / "notes.txt").write_text("mine")
    argv = [checkpoint, *FAST, "--out", str(out), "--quiet"]
    if how == "bad_baseline":
        (tmp_path / "b.json").write_text('{"schema_version": 2,')
        argv += ["--baseline", str(tmp_path / "b.json")]
        expected, kind = 2, "BadInput"
    elif how == "usage":
        argv += ["--steps", "abc"]
        expected, kind = 2, "BadInput"
    else:
        from parity import harness

        monkeypatch.setattr(harness, "run_parity", lambda *a, **k: {}["a bug"])
        expected, kind = 3, "InternalError"
    assert main(argv) == expected
    capsys.readouterr()
    assert sorted(os.listdir(out)) == ["junit.xml", "notes.txt", "report.md"]
    root = ET.parse(out / "junit.xml").getroot()
    assert root.get("errors") == "1" and root.get("failures") == "0" and root.get("name") == "parity gate: ERROR"
    assert root.find("testsuite/testcase/error").get("type") == kind
    assert (out / "report.md").read_text().startswith("## ERROR · parity report `gate`")


def test_control_characters_in_the_run_name_keep_junit_and_html_valid(checkpoint, tmp_path):
    from parity import harness

    out = tmp_path / "run\x01\x1bname"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "_MODELS", {})
        assert main([checkpoint, *FAST, "--out", str(out), "--quiet"]) == 0
    root = ET.parse(out / "junit.xml").getroot()        # well-formed
    assert "run\\x01\\x1bname" in root.get("name")
    assert all(float(s.get("time")) >= 0 for s in root.iter("testsuite")) and root.get("skipped") == "0"
    assert float(root.find("testsuite").get("time")) > 0     # the dtype's PyTorch and Flax seconds
    html_text = (out / "report.html").read_text()
    assert "\x01" not in html_text and "\x1b" not in html_text


def test_a_run_name_or_path_of_any_bytes_gives_valid_utf8_reports(checkpoint, tmp_path, capsys):
    """An --out holding a byte that is no UTF-8 (kept by Python as a lone surrogate), a newline and a backtick:
    exit 0, every report valid UTF-8 and strict JSON, the Markdown heading one line and one code span."""
    out = tmp_path / os.fsdecode(b"run\xff\n`x")
    code, printed, _ = run([checkpoint, *FAST, "--dtypes", "float32,bfloat16", "--out", str(out), "--quiet"], capsys)
    assert code == 0 and printed.strip().splitlines()[-1].startswith("PASS")
    for name in REPORT_FILES:
        (out / name).read_bytes().decode("utf-8")      # strict: no lone surrogate, no undecodable byte
    data = json.loads((out / "report.json").read_text(encoding="utf-8"),
                      parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["run_name"] == "run\ufffd\n`x"
    heading = (out / "report.md").read_text(encoding="utf-8").splitlines()[0]
    assert heading == "## PASS · parity report ``run\ufffd\\x0a`x``"
    root = ET.parse(out / "junit.xml").getroot()
    steps = data["timings"]["steps"]   # the suites share out the run's seconds, the float64 gold run's too
    assert any("gold" in key for key in steps)
    assert float(root.get("time")) == pytest.approx(data["timings"]["seconds"], abs=2e-3)


def test_a_case_with_no_greedy_step_to_compare_passes_on_its_ids(checkpoint, tmp_path, capsys):
    """One new token is the forced `</s>`: no greedy score is left to compare, in any dtype and on any CPU
    (bf16 cases whose float64 choice is never clear end the same way). A correct port used to FAIL with
    "at least one element must be compared"."""
    from parity.judge import NO_SCORES_RULE

    code, _, _ = run([checkpoint, "--heads", "lm", "--dtypes", "float32,bfloat16", "--cases", "right_padding",
                      "--steps", "1", "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0
    for col in load_report(tmp_path / "out" / "report.json").columns:
        rows = {r.name: r for r in col.results}
        scores, ids = rows["lm/right_padding/greedy_scores"], rows["lm/right_padding/greedy_ids"]
        assert scores.verdict.rule == NO_SCORES_RULE and scores.metrics.count == 0 and scores.verdict.passed
        assert ids.metrics.count > 0 and ids.verdict.passed


def test_nan_weights_exit_2_with_nan_report(tmp_path, capsys):
    model = torch_model("lm", **QUICK_SHAPE)
    with torch.no_grad():
        model.model.decoder.layers[1].fc2.bias[3] = float("nan")
    model.save_pretrained(tmp_path / "ckpt")
    code, printed, err = run([str(tmp_path / "ckpt"), *FAST, "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "NaN" in err and "model.decoder.layers.1.fc2.bias" in err and "Traceback" not in err
    assert printed.strip().splitlines()[-1].startswith("ERROR (bad input): the checkpoint's weights hold NaN")
    assert (tmp_path / "r" / "report.md").read_text().startswith("## ERROR (bad input)")
    assert ET.parse(tmp_path / "r" / "junit.xml").getroot().get("errors") == "1"
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["passed"] is False and data["outcome"]["status"] == "ERROR" and data["outcome"]["exit_code"] == 2
    hit = next(r for r in data["columns"][0]["results"] if r["name"] == "qa/right_padding/decoder_hidden_states[2]")
    assert hit["metrics"]["max_rel_err"] == "NaN" and not hit["verdict"]["passed"]


def _no_traceback(code, err):
    assert code == 2, err
    assert err.startswith("flax-bart parity: error:") or "error:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, words", [
    (["--dtypes", "float8"], "unknown dtype"),
    (["--heads", "summarize"], "--heads"),
    (["--cases", "nope"], "--cases"),
    (["--reference", "onnx"], "--reference"),
    (["--baseline", "/no/such/report.json"], "no such file"),
    (["--baseline-factor", "0.5"], "--baseline-factor"),
    (["--baseline-factor", "inf"], "--baseline-factor inf: expected a finite number >= 1"),
    (["--baseline-floor", "1.5"], "--baseline-floor 1.5: expected a fraction in [0, 1]"),
    (["--batch-size", "1"], "batch_size=1"),
    (["--attention", "cudnn"], "--attention cudnn (cpu, float32): attention_impl='cudnn': the default JAX backend"),
    (["--attention", "xla", "--dtypes", "float16"], "cannot run float16 on the cpu backend"),
    (["--max-length-dtypes", "float64"], "--max-length-dtypes: float64 is the gold yardstick"),
    (["--max-length-dtypes", "int8"], "--max-length-dtypes: unknown dtype 'int8'"),
    (["--compile-mode", "O3"], "--compile-mode: invalid choice: 'O3'"),
    (["--flax-jobs", "0"], "--flax-jobs 0: expected a number >= 1"),
    (["--precision", "tf32"], "--precision: invalid choice: 'tf32'"),
    (["--baseline", "/"], "--baseline /: a directory, not a report.json file"),
    (["--baseline", "/dev/null"], "--baseline /dev/null: a character device, not a report.json file"),
    (["--seed", "-1"], "argument --seed: expected an integer in [0, 2**64), got '-1'"),
    (["--seed", str(2**64)], "argument --seed: expected an integer in [0, 2**64), got '18446744073709551616'"),
    (["--compile-cache", "/tmp", "--no-compile-cache"], "not allowed with argument"),
])
def test_bad_arguments_exit_2(checkpoint, tmp_path, capsys, extra, words):
    code, _, err = run([checkpoint, *FAST, "--out", str(tmp_path), *extra], capsys)
    _no_traceback(code, err)
    assert words in err


def test_missing_checkpoint_exit_2(tmp_path, capsys):
    code, _, err = run([str(tmp_path / "missing"), "--out", str(tmp_path / "r")], capsys)
    _no_traceback(code, err)
    assert "no such file or directory" in err and not (tmp_path / "r").exists()


def test_text_without_tokenizer_exit_2(checkpoint, tmp_path, capsys):
    code, _, err = run([checkpoint, "--text", "Hello there", "--heads", "qa", "--out", str(tmp_path)], capsys)
    _no_traceback(code, err)
    assert "--text needs the checkpoint's tokenizer" in err


def test_text_from_the_checkpoint_tokenizer(tmp_path):
    from parity.options import text_case

    write_bart_tokenizer(tmp_path)
    ckpt = type("Ckpt", (), {"directory": str(tmp_path)})()
    from flax_bart.config import BartConfig

    ckpt.config = BartConfig.from_dict({**QUICK_SHAPE, "vocab_size": 500})
    case = text_case(ckpt, "lm", ["Paris is the capital of France.", "The quick brown fox."])
    ids, mask = case["input_ids"], case["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2 and mask[1, -1] == 0
    assert ids[0, 0] == 0 and (ids == 2).sum(axis=1).tolist() == [1, 1]  # <s> ... </s>, one </s> per row
    assert case["decoder_input_ids"][0, 0] == ckpt.config.decoder_start_token_id
    ckpt.config = BartConfig.from_dict(QUICK_SHAPE)  # 99 ids: the tokenizer does not belong to it
    with pytest.raises(ValueError, match="do not belong together"):
        text_case(ckpt, "lm", ["Paris is the capital of France."])


def test_config_that_does_not_fit_the_weights_exit_2(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["decoder_ffn_dim"] = 32
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    code, _, err = run([path, *FAST, "--out", str(tmp_path / "r")], capsys)
    _no_traceback(code, err)
    assert "fc1" in err


def test_flax_only_checkpoint_exit_2(checkpoint, tmp_path, capsys):
    from convert import convert_checkpoint

    convert_checkpoint(checkpoint, tmp_path / "flax", to="flax")
    code, _, err = run([str(tmp_path / "flax"), *FAST, "--out", str(tmp_path / "r")], capsys)
    _no_traceback(code, err)
    assert "Flax weights only" in err


@pytest.mark.parametrize("beside", [True, False])
def test_corrupt_flax_weights_exit_2_naming_the_file(checkpoint, tmp_path, capsys, beside):
    """A broken Flax file beside the PyTorch weights (or given with --flax) is bad input: the gate
    must not fall back to weights converted on the fly and pass."""
    import shutil

    from convert import convert_checkpoint

    convert_checkpoint(checkpoint, tmp_path / "flax", to="flax")
    data = (tmp_path / "flax" / "flax_model.msgpack").read_bytes()
    if beside:
        shutil.copytree(checkpoint, tmp_path / "both")
        target, extra = tmp_path / "both", []
    else:
        target, extra = Path(checkpoint), ["--flax", str(tmp_path / "flax")]
    bad = (tmp_path / ("both" if beside else "flax")) / "flax_model.msgpack"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run([str(target), *extra, *FAST, "--out", str(tmp_path / "r")], capsys)
    _no_traceback(code, err)
    assert f"{bad}: not a valid flax msgpack checkpoint" in err


def test_unexpected_errors_are_one_line_and_exit_3(checkpoint, tmp_path, capsys, monkeypatch):
    from parity import cli

    def broken(argv):
        raise KeyError("a bug")

    assert cli.guarded(broken, [checkpoint], "flax-bart parity") == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "internal error (KeyError: 'a bug'); rerun with --debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.guarded(broken, [checkpoint, "--debug"], "flax-bart parity")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_unavailable_device_exit_2(checkpoint, tmp_path, capsys):
    code, _, err = run([checkpoint, *FAST, "--torch-device", "cuda", "--out", str(tmp_path)], capsys)
    _no_traceback(code, err)
    assert "no CUDA device" in err


def test_unavailable_flax_device_exit_2(checkpoint, tmp_path, capsys):
    import jax

    if any(d.platform == "tpu" for d in jax.devices()):
        pytest.skip("a TPU is present")
    code, _, err = run([checkpoint, *FAST, "--flax-device", "tpu", "--out", str(tmp_path)], capsys)
    _no_traceback(code, err)
    assert "no tpu device" in err


def test_debug_shows_the_traceback(tmp_path):
    from parity.checkpoint import ParityInputError

    with pytest.raises(ParityInputError):
        main([str(tmp_path / "missing"), "--debug"])


def test_python_dash_m_parity_help():
    res = subprocess.run([sys.executable, "-m", "parity", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage: flax-bart parity" in res.stdout and "--baseline" in res.stdout and "--flax" in res.stdout
    words = " ".join(res.stdout.split())   # the floors parity.regression applies, as it applies them
    assert f"{SAME_MACHINE_FLOOR:g} when the baseline's machine fingerprint" in words
    assert f"{CROSS_MACHINE_FLOOR:g} = only crossing the tolerance otherwise" in words


def test_flax_bart_dispatches_to_parity(tmp_path, capsys):
    from flax_bart.cli import main as flax_bart_main

    assert flax_bart_main(["parity", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    # --no-compile-cache: the persistent compilation cache is process-wide JAX state, not for a test process
    code = demo_main(["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-compile-cache"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(os.listdir(out)) == REPORT_FILES
    report = load_report(out / "report.json")
    assert [c.key for c in report.columns] == ["float32/cpu/cpu", "bfloat16/cpu/cpu", "float16/cpu/cpu"]
    assert report.environment.extra["heads"] == "qa,lm,cls"
    assert report.baseline["path"].endswith("demo-quick.json") and report.baseline["passed"]
    lines = printed.strip().splitlines()
    assert report.status == "PASS" and lines[-2].startswith("PASS: ") and ": PASS (exit code 0)" in lines[-1]
    checkpoint = tmp_path / "cache" / "bart-quick-random"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "config.json").is_file()
    stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns
    built = []
    assert ensure_checkpoint(True, tmp_path / "cache", log=built.append) == checkpoint
    assert not built and (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary left over


def test_demo_checkpoint_is_rebuilt_when_its_recipe_changes(tmp_path):
    first = ensure_checkpoint(True, tmp_path, log=lambda msg: None)
    (first / "demo_recipe.json").write_text("{}")
    built = []
    assert ensure_checkpoint(True, tmp_path, log=built.append) == first and built
    assert json.loads((first / "demo_recipe.json").read_text())["config"] == QUICK_SHAPE


def test_usage_errors_never_touch_the_working_directory_or_another_out(checkpoint, passing_run, tmp_path, capsys,
                                                                      monkeypatch):
    import shutil

    _, earlier = passing_run
    work = tmp_path / "work"
    shutil.copytree(earlier, work)             # reports (or a pytest junit.xml) in the working directory
    monkeypatch.chdir(work)
    before = {n: (work / n).read_bytes() for n in os.listdir(work)}
    for argv in ([checkpoint, "--out", "", "--steps", "abc"], [checkpoint, "--out=", "--steps", "abc"],
                 [checkpoint, "--ou", str(work), "--steps", "1"]):          # no abbreviations
        assert main(argv) == 2
    assert {n: (work / n).read_bytes() for n in os.listdir(work)} == before
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(earlier, first)
    shutil.copytree(earlier, second)
    assert main([checkpoint, "--out", str(first), "--out", str(second), "--steps", "abc"]) == 2
    assert sorted(os.listdir(first)) == REPORT_FILES                      # argparse takes the last --out
    assert sorted(os.listdir(second)) == ["junit.xml", "report.md"]
    capsys.readouterr()


def _checkpoint_copy(checkpoint, directory):
    import shutil

    shutil.copytree(checkpoint, directory)
    return directory


def _snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["usage_out_is_checkpoint", "usage", "bad_input"])
def test_an_early_stop_leaves_an_out_of_other_files_alone(checkpoint, tmp_path, capsys, how):
    """A usage error or bad input with --out naming a folder of other files (say the checkpoint's own)
    once rewrote its report.md, added junit.xml and would have removed a report.json/report.html there."""
    target = str(checkpoint)
    out = tmp_path / "mine"
    if how == "usage_out_is_checkpoint":
        out = _checkpoint_copy(checkpoint, tmp_path / "ckpt")
        target = str(out)
    out.mkdir(exist_ok=True)
    (out / "report.md").write_text("my notes")
    (out / "report.json").write_text('{"mine": true}')
    (out / "report.html").write_text("<p>mine</p>")
    (out / "junit.xml").write_text('<?xml version="1.0"?><testsuites name="pytest tests"/>')
    before = _snapshot(out)
    extra = ["--baseline", str(tmp_path / "missing.json")] if how == "bad_input" else ["--rtol", "-1"]
    code, _, err = run([target, *FAST, "--out", str(out), *extra], capsys)
    assert code == 2 and "Traceback" not in err
    assert _snapshot(out) == before
    assert (f"flax-bart parity: note: --out {out}: it holds other files and no earlier parity reports "
            "(no report.json or junit.xml written by the gate); no error report was written there") in err
    assert err.rstrip().splitlines()[-1].startswith("flax-bart parity: note:")   # after the error paragraph
    if how == "bad_input":
        assert err.startswith(f"flax-bart parity: error: --baseline {tmp_path / 'missing.json'}: no such file\n")


def test_an_early_stop_replaces_an_empty_or_earlier_error_out(checkpoint, tmp_path, capsys):
    out = tmp_path / "gate"
    out.mkdir()
    for _ in range(2):   # empty, then holding the first error report only (no report.json)
        assert main([checkpoint, *FAST, "--out", str(out), "--rtol", "-1"]) == 2
        assert sorted(os.listdir(out)) == ["junit.xml", "report.md"]
        assert ET.parse(out / "junit.xml").getroot().get("name") == "parity gate: ERROR"
        assert "note:" not in capsys.readouterr().err
    from parity.report_error import earlier_output_problem

    (out / "junit.xml").unlink()
    (out / "report.md").write_text("mine")
    assert "no earlier parity reports" in earlier_output_problem(out)
    (out / "report.json").write_text('{"schema_version": 1, "kind": "flax-bart-parity-report", "columns": []}')
    assert earlier_output_problem(out) is None                    # any outcome of any version
    (out / "report.json").unlink()
    os.mkfifo(out / "junit.xml")                                  # never opened for reading
    assert earlier_output_problem(out) is not None


@pytest.mark.parametrize("where", ["same", "inside", "weights_file", "flax"])
def test_an_out_overlapping_the_checkpoint_is_bad_input(checkpoint, passing_run, tmp_path, capsys, where):
    """The reports never go into the checkpoint (nor an early stop's error reports, even where an
    earlier parity run's report.json lies there)."""
    import shutil

    ckpt = _checkpoint_copy(checkpoint, tmp_path / "models" / "ckpt")
    shutil.copy(passing_run[1] / "report.json", ckpt / "report.json")
    target, extra = str(ckpt), []
    out, relation = {"same": (ckpt, "is"), "inside": (ckpt / "r", "is inside"),
                     "weights_file": (ckpt, "is"), "flax": (tmp_path / "models" / "r", "is inside")}[where]
    if where == "weights_file":
        target = str(ckpt / "model.safetensors")
    if where == "flax":
        target, extra = checkpoint, ["--flax", str(tmp_path / "models")]
    before = _snapshot(tmp_path)
    code, _, err = run([target, *extra, *FAST, "--out", str(out)], capsys)
    _no_traceback(code, err)
    option = "--flax" if where == "flax" else "CHECKPOINT"
    assert f"--out {out} {relation} the {option} directory" in err and "name another with --out" in err
    assert _snapshot(tmp_path) == before and not (tmp_path / "models" / "r").exists()


def test_the_default_out_inside_the_checkpoint_is_bad_input(checkpoint, tmp_path, capsys, monkeypatch):
    ckpt = _checkpoint_copy(checkpoint, tmp_path / "ckpt")
    monkeypatch.chdir(ckpt)
    code, _, err = run([".", *FAST], capsys)
    _no_traceback(code, err)
    assert "the default report directory reports/parity-ckpt is inside the CHECKPOINT directory" in err
    assert "name one with --out" in err and not (ckpt / "reports").exists()


def test_a_compile_cache_that_is_no_directory_is_bad_input(checkpoint, tmp_path, capsys):
    import jax

    before = jax.config.jax_compilation_cache_dir
    (tmp_path / "afile").write_text("x")
    code, _, err = run([checkpoint, *FAST, "--out", str(tmp_path / "r"), "--compile-cache", str(tmp_path / "afile")],
                       capsys)
    _no_traceback(code, err)
    assert f"--compile-cache {tmp_path / 'afile'}: not a directory" in err
    code, _, err = run([checkpoint, *FAST, "--out", str(tmp_path / "r"), "--compile-cache",
                        str(tmp_path / "afile" / "sub")], capsys)
    _no_traceback(code, err)
    assert f"--compile-cache {tmp_path / 'afile' / 'sub'}: cannot be used as the compile cache" in err
    assert (tmp_path / "afile").read_text() == "x" and jax.config.jax_compilation_cache_dir == before


def test_a_baseline_with_a_negative_value_is_bad_input_before_the_run(checkpoint, passing_run, tmp_path, capsys):
    """Schema-valid but impossible: once exit 3 (`internal error (ValueError: math domain error)`)."""
    data = json.loads((passing_run[1] / "report.json").read_text())
    for col in data["columns"]:
        for res in col["results"]:
            res["verdict"]["value"] = -5.0
    (tmp_path / "bl.json").write_text(json.dumps(data))
    code, _, err = run([checkpoint, *FAST, "--out", str(tmp_path / "r"), "--baseline", str(tmp_path / "bl.json")],
                       capsys)
    _no_traceback(code, err)
    assert err.startswith("flax-bart parity: error: report.columns[0].results[0].verdict.value: expected a number "
                          f">= 0 (or \"NaN\" or \"Infinity\"), got -5.0 (in {tmp_path / 'bl.json'})")
