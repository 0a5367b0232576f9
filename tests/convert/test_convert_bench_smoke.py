"""The conversion benchmark runs in quick mode and writes a valid report (timings not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_convert_bench_quick(tmp_path):
    out = tmp_path / "convert.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.convert_bench", "--quick", "--out", str(out),
                           "--tmp", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["checkpoint"]["parameters"] > 0
    for job in ("copy", "pt2flax", "flax2pt"):
        r = report["results"][job]
        assert r["wall_s"] > 0 and r["peak_rss_bytes"] > 0 and r["process_wall_s"] >= r["wall_s"]
    for job in ("pt2flax", "flax2pt"):
        assert set(report["results"][job]) >= {"wall_ratio_vs_copy", "rss_ratio_vs_checkpoint", "meets_targets"}
    assert "pt2flax" in proc.stdout and [p for p in os.listdir(tmp_path) if p.startswith("convert-bench-")] == []
