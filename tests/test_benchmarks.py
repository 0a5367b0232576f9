"""The benchmark entry points run and write valid output (smoke runs; no timing is asserted)."""

import json
import subprocess
import sys


def test_suite_quick_mode_writes_reports(tmp_path):
    """`python -m benchmarks --quick` (here: the forward and convert benchmarks) writes every report."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "forward,convert",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "forward.json").read_text())
    assert data["benchmark"] == "forward" and data["quick"] is True
    assert {r["head"] for r in data["results"]} == {"qa", "cls", "lm"}
    for r in data["results"]:
        assert set(r["timings"]) == {"reference", "transformers", "flax"}
        assert all(v["median_s"] > 0 for v in r["timings"].values())
        assert r["ratios"]["flax/transformers"] > 0
    suite = json.loads((tmp_path / "bench.json").read_text())
    assert set(suite["runs"]) == {"forward", "convert"} and all(r["exit_code"] == 0 for r in suite["runs"].values())
    assert "versions" in suite["environment"] and "torch_threads" in suite["environment"]
    md = (tmp_path / "bench.md").read_text()
    assert "| measurement | value | target |" in md and "forward tiny qa float32" in md


def test_aggregator_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_gate_bench_quick_runs_cold_then_warm(tmp_path):
    """`python -m benchmarks.gate_bench --quick`: the gate twice on one compile cache; the second run
    loads the programs the first compiled."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_bench", "--quick", "--out", str(tmp_path),
                           "--cache-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "gate.json").read_text())
    cold, warm = data["results"]["smoke"]["cold"], data["results"]["smoke"]["warm"]
    assert cold["exit_code"] == warm["exit_code"] == 0
    assert cold["programs"] > 0 and cold["cache_hits"] == 0 and warm["cache_hits"] > 0
    assert set(cold["steps"]) == {"qa/float32"} and data["environment"]["cpu"]


def test_train_bench_quick_writes_both_sides(tmp_path):
    """`python -m benchmarks.train_bench --quick`: flax and transformers training steps timed, finite
    losses, tokens/s and the ratio recorded with the machine fingerprint."""
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "train" and data["quick"] is True and data["environment"]["cpu"]
    r = data["results"]
    assert set(r["timings"]) == {"transformers", "flax"} and r["tokens_per_step"] == 2 * 2 * 16
    for t in r["timings"].values():
        assert t["median_s"] > 0 and t["first_step_s"] > 0 and len(t["samples_s"]) == data["repeats"]
        assert t["tokens_per_s"] == r["tokens_per_step"] / t["median_s"]
        assert len(t["losses"]) == data["repeats"] + 2 and all(0 < x < 20 for x in t["losses"])
    assert r["speedup"] == r["timings"]["flax"]["tokens_per_s"] / r["timings"]["transformers"]["tokens_per_s"]


def test_remat_bench_quick_writes_memory_per_setting(tmp_path):
    """`python -m benchmarks.remat_bench --quick`: compiled memory and saved residuals per setting."""
    out = tmp_path / "remat.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.remat_bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "remat" and data["quick"] is True and data["environment"]["versions"]["jax"]
    rows = data["results"]["settings"]
    assert set(rows) == {"none", "nothing_saveable", "dots_saveable"}
    assert all(r["temp_size_in_bytes"] > 0 and r["step"]["median_s"] > 0 for r in rows.values())
    # Backend-independent: rematerialising keeps fewer residuals than saving everything.
    assert rows["nothing_saveable"]["saved_residual_bytes"] < rows["dots_saveable"]["saved_residual_bytes"]
    assert rows["dots_saveable"]["saved_residual_bytes"] < rows["none"]["saved_residual_bytes"]
