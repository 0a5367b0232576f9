"""The corpus cases that declare huge sizes (zip bombs, huge shapes / header lengths / counts, absurd
config sizes, gigabyte index and config files) are refused before allocating: re-run in a
subprocess whose address space is limited to what it maps after warm-up plus 512 MiB, where an
allocation of the declared size would fail instead of being overcommitted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from corpus import CASES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARGIN_MIB = 512


def test_huge_declared_sizes_are_refused_before_allocating():
    bounded = {c.name for c in CASES.values() if c.bounded}
    assert len(bounded) >= 15
    proc = subprocess.run([sys.executable, os.path.join("tests", "robustness", "bounded_runner.py"), str(MARGIN_MIB)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["limit_effective"], "the address-space limit did not stop a large allocation"
    results = report["results"]
    assert {r["case"] for r in results} == bounded
    bad = [r for r in results if r["kind"] != "refused" or not r["matched"] or r["marker"] or r["output"]]
    assert not bad, json.dumps(bad, indent=1)[:4000]
    # nothing close to a declared size was ever resident
    assert max(r["rss_growth"] for r in results) < 64 * 2**20, [(r["case"], r["rss_growth"]) for r in results]
