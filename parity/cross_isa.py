"""`python -m parity.cross_isa`: the demo under this CPU's own ISA and under a lower one, cross-compared.

One machine stands in for two CPU types: the second run caps XLA, ATen, oneDNN and MKL at the tier
below this CPU's own (`parity.machine.restricted_isa_env`; AVX2 on an AVX-512 machine, AVX on an
AVX2-only one), in a child process. Each run is then compared against the other as its baseline, and
both against the committed demo baseline, with the regression rule the gate uses. The cap does not
reach XLA:CPU's matrix products: YNNPACK and Eigen pick their kernels from the CPU at run time, so on
an AVX-512 machine the capped run still multiplies with AVX-512 kernels on the XLA side (README,
"Machine fingerprint"); only XLA's generated code and PyTorch run at the lower tier. The figures
(how far each tensor's share of its tolerance moved) are what `CROSS_MACHINE_FLOOR` is chosen from.

Writes OUT/summary.json and OUT/summary.md; exit 0 when every comparison passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from parity import machine
from parity.regression import SAME_MACHINE_FLOOR, compare_to_baseline, fraction


def run_demo(out: Path, *, quick: bool, env: dict, cache: Path | None, baseline: str | None) -> int:
    """`flax-bart demo` in a child process (so that the ISA caps apply from its start)."""
    cmd = [sys.executable, "-c", "import sys; from parity.cli import demo_main; sys.exit(demo_main())",
           "--out", str(out), "--quiet"]
    cmd += ["--quick"] if quick else []
    cmd += ["--cache-dir", str(cache)] if cache else []
    cmd += ["--baseline", baseline] if baseline else ["--no-baseline"]
    cmd += ["--no-compile-cache"]  # a program compiled for one ISA must not serve the other
    return subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent).returncode


def moves(base, cur) -> dict:
    """How tensors' tolerance shares moved from `base` to `cur` (both passing tensors only)."""
    index = {(c.key, r.name): r for c in base.columns for r in c.results}
    ratios = []
    for col in cur.columns:
        for r in col.results:
            old = index.get((col.key, r.name))
            if old is None or not (old.verdict.passed and r.verdict.passed):
                continue
            f_old, f_new = fraction(old.verdict), fraction(r.verdict)
            if f_old is None or f_new is None or f_old == 0:
                continue
            ratios.append((f_new / f_old, f_old, f_new, int(r.metrics.count), col.key, r.name))
    grown = sorted((x for x in ratios if x[0] > 2), key=lambda x: -x[2])
    return {
        "tensors": len(ratios),
        "max_share": max((x[2] for x in ratios), default=0.0),
        "grew_over_2x": len(grown),
        "grew_over_2x_past_same_machine_floor": sum(x[2] >= SAME_MACHINE_FLOOR for x in grown),
        "largest_share_after_2x_growth": grown[0][2] if grown else 0.0,
        "largest_growth": max((x[0] for x in ratios), default=1.0),
        "top": [{"column": k, "name": n, "count": c, "from": a, "to": b, "factor": f}
                for f, a, b, c, k, n in grown[:8]],
    }


def main(argv=None) -> int:
    from parity.demo import default_baseline
    from parity.report import load_report

    p = argparse.ArgumentParser(prog="python -m parity.cross_isa", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny demo config")
    p.add_argument("--out", default=None, help="default reports/cross-isa[-quick]")
    p.add_argument("--cache-dir", default=None, help="demo checkpoint cache (default: the demo's)")
    p.add_argument("--also", action="append", default=[], metavar="REPORT",
                   help="another run's report.json (e.g. one recorded on another CPU type) to compare with both "
                        "runs, each way (repeatable)")
    p.add_argument("--tier", default=None, help=f"ISA tier of the second run (one of {list(machine.ISA_TIERS)}; "
                                                "default: the one below this CPU's)")
    args = p.parse_args(argv)
    out = Path(args.out or os.path.join("reports", "cross-isa-quick" if args.quick else "cross-isa"))
    tier = args.tier or machine.other_tier()
    native = machine.native_tier(machine._cpuinfo()[1])
    runs = {native: dict(os.environ), tier: machine.restricted_isa_env(tier)}
    cache = Path(args.cache_dir) if args.cache_dir else None
    codes = {}
    for name, env in runs.items():
        print(f"demo under {name}{' (native)' if name == native else ''} ...", flush=True)
        codes[name] = run_demo(out / name, quick=args.quick, env=env, cache=cache, baseline=None)
    reports = {name: load_report(out / name / "report.json") for name in runs}
    committed_path = default_baseline(args.quick)
    committed = load_report(committed_path) if committed_path.is_file() else None
    pairs = [(native, tier), (tier, native)]
    comparisons = []
    for b, c in pairs:
        comparisons.append((f"{b} baseline -> {c} run", reports[b], reports[c]))
    if committed is not None:
        for name in runs:
            comparisons.append((f"committed {committed_path.name} -> {name} run", committed, reports[name]))
    for extra in args.also:
        other = load_report(extra)
        for name in runs:
            comparisons.append((f"{extra} -> {name} run", other, reports[name]))
            comparisons.append((f"{name} run -> {extra}", reports[name], other))
    summary = {"machine": machine.describe(reports[native].machine), "native": native, "restricted": tier,
               "quick": args.quick, "exit_codes": codes, "comparisons": []}
    ok = all(code == 0 for code in codes.values())
    for label, base, cur in comparisons:
        result = compare_to_baseline(base, cur)
        ok &= result.passed
        summary["comparisons"].append({"label": label, "passed": result.passed, "mode": result.mode,
                                       "floor": result.floor, "regressions": len(result.regressions),
                                       "newly_failing": len(result.newly_failing), **moves(base, cur)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Cross-ISA demo{' (quick)' if args.quick else ''}: {'PASS' if ok else 'FAIL'}", "",
             f"Machine: {summary['machine']}; second run capped at {tier}.", "",
             "| comparison | verdict | tensors | max share | grew >2x | ... past 0.1 | largest share after >2x |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['label']} | {'pass' if c['passed'] else 'REGRESSION'} ({c['mode']}) | {c['tensors']} | "
                     f"{c['max_share']:.3g} | {c['grew_over_2x']} | {c['grew_over_2x_past_same_machine_floor']} | "
                     f"{c['largest_share_after_2x_growth']:.3g} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
