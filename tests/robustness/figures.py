"""The reliability figures (docs/reliability.md, the README's reliability section), computed from the
test code itself: hostile cases and the runs they make, property-test examples, fault-injection
points. `python tests/robustness/figures.py` prints them; `test_reliability_figures.py` checks that
the document states these numbers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]


def fault_points() -> dict[str, int]:
    """Fault points of each fault-injection scenario (a counting run of each)."""
    import numpy as np

    from convert import convert_checkpoint, save_flax_params
    from fault_points import Faults
    from test_fault_injection import KILL_POINTS, MICRO, SCENARIOS, _source
    from tests.convert.convert_helpers import random_flax_params

    out = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        params = random_flax_params(MICRO, "lm", np.float32, seed=1)
        for name, framework, kwargs, existing in SCENARIOS:
            root = tmp / name
            src = _source(root, framework, params)
            plain = {k: v for k, v in kwargs.items() if k != "overwrite"}
            if existing:
                convert_checkpoint(str(src), str(root / "dst"), **plain)
            with Faults() as f:
                convert_checkpoint(str(src), str(root / "dst"), **kwargs)
            out[name] = f.count
        d = tmp / "merge"
        d.mkdir()
        save_flax_params(random_flax_params(MICRO, "lm", np.float32, seed=3), d, max_shard_size="1KB")
        with Faults() as f:
            save_flax_params(random_flax_params(MICRO, "lm", np.float32, seed=4), d, max_shard_size="1KB")
        out["save_flax_params_merge"] = f.count
        out["sigkill"] = len(KILL_POINTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def figures() -> dict[str, int]:
    from corpus import CASES
    from hostile_entry import parity_cli_available
    from test_properties import EXAMPLES, LAYOUTS

    parity = parity_cli_available()
    runs = sum(sum(1 for e in c.entries if e != "parity" or parity) for c in CASES.values())
    bounded = [c for c in CASES.values() if c.bounded]
    bounded_runs = sum(sum(1 for e in c.entries if e in ("convert", "from_pretrained") or (e == "parity" and parity))
                       for c in bounded)
    points = fault_points()
    return {
        "hostile cases": len(CASES),
        "hostile runs (case x entry point)": runs,
        "hostile runs under an address-space limit": bounded_runs,
        "property-test examples": sum(EXAMPLES.values()) + len(LAYOUTS) ** 2,
        **{f"property examples: {k}": v for k, v in EXAMPLES.items()},
        "property examples: layout pairs": len(LAYOUTS) ** 2,
        "fault-injection points": sum(v for k, v in points.items() if k != "sigkill"),
        **{f"fault points: {k}": v for k, v in points.items()},
    }


if __name__ == "__main__":
    for name, value in figures().items():
        print(f"| {name} | {value} |")
