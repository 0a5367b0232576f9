"""Run the corpus cases that could allocate (`Case.bounded`) in this process under an address-space
limit (RLIMIT_AS = what the process maps after imports and warm-up + a margin), so that an
allocation of the size an input declares fails loudly instead of succeeding on an overcommitting
machine. Prints one JSON object: {"margin", "limit", "limit_effective" (an allocation of twice the
margin did fail), "results": [{case, entry, kind, matched, message, rss_growth, marker, output}]}.

    python tests/robustness/bounded_runner.py [MARGIN_MIB]     (run from the repository root)
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import tempfile
import warnings
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    margin = int(sys.argv[1]) * 2**20 if len(sys.argv) > 1 else 512 * 2**20
    warnings.simplefilter("ignore")
    from hostile_entry import parity_cli_available, run_entry
    from corpus import CASES
    from hostile import pt_dir

    entries = [e for e in ("convert", "from_pretrained", "parity") if e != "parity" or parity_cli_available()]
    work = Path(tempfile.mkdtemp(prefix="bounded-"))
    # Warm up every entry point on a valid checkpoint first, so that lazy imports, the JAX backend and
    # its threads are in place before the limit is set.
    ok = pt_dir(work / "valid")
    run_entry("from_pretrained", ok, work / "valid-out", "flax")  # starts the JAX backend
    (ok / "config.json").write_text("[]")
    for entry in entries:  # a refused input: imports every module on the path, runs nothing big
        run_entry(entry, ok, work / "valid-out", "flax")
    cases = [c for c in CASES.values() if c.bounded]
    built = {}
    for c in cases:
        root = work / c.name
        root.mkdir()
        built[c.name] = c.build(root, root / "PWNED")
    limit = _vm_size() + margin
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = _peak_rss()
    try:  # the limit must bite: an allocation of twice the margin fails
        bytearray(2 * margin)
        limit_effective = False
    except MemoryError:
        limit_effective = True
    results = []
    for c in cases:
        for entry in (e for e in entries if e in c.entries):
            out = work / c.name / f"out-{entry}"
            o = run_entry(entry, built[c.name], out, c.to)
            results.append({"case": c.name, "entry": entry, "kind": o.kind,
                            "matched": bool(re.search(c.expect, o.message, re.DOTALL)),
                            "message": o.message[-600:], "rss_growth": _peak_rss() - base,
                            "marker": (work / c.name / "PWNED").exists(), "output": out.exists()})
    print(json.dumps({"margin": margin, "limit": limit, "limit_effective": limit_effective, "results": results}))


if __name__ == "__main__":
    main()
