"""The benchmark entry points run and write valid output (smoke runs; no timing is asserted)."""

import json
import subprocess
import sys


def test_forward_bench_quick_writes_results(tmp_path):
    out = tmp_path / "forward.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.forward_bench", "--quick", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "forward" and data["quick"] is True
    assert {r["head"] for r in data["results"]} == {"qa", "cls", "lm"}
    for r in data["results"]:
        assert set(r["timings"]) == {"reference", "transformers", "flax"}
        assert all(v["median_s"] > 0 for v in r["timings"].values())
        assert r["ratios"]["flax/transformers"] > 0


def test_aggregator_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr
