"""Run the benchmark suite: each benchmark in its own subprocess (clean memory figures), merged into
reports/bench/bench.json and bench.md with the machine, versions and thread settings.

    python -m benchmarks [--quick] [--only forward,generate,decode_profile,decode_ab,convert,shard_load,train,remat,scan,trace,dtypes,matmul,parity] [--out reports/bench]
    python -m benchmarks --device gpu [--quick]   # forward and generate beside transformers on that device
                                                  # (benchmarks.device_bench), per precision mode
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import environment, write_json

BENCHES = {
    "forward": "benchmarks.forward_bench",
    "generate": "benchmarks.generate_bench",
    "decode_profile": "benchmarks.decode_profile",
    "decode_ab": "benchmarks.decode_ab",
    "convert": "benchmarks.convert_bench",
    "shard_load": "benchmarks.shard_load_bench",
    "train": "benchmarks.train_bench",
    "remat": "benchmarks.remat_bench",
    "scan": "benchmarks.scan_bench",
    "trace": "benchmarks.trace_bench",
    "dtypes": "benchmarks.dtype_bench",
    "matmul": "benchmarks.matmul_bench",
    "device": "benchmarks.device_bench",
}


def _run_module(module: str, args: list[str], timeout: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, time.perf_counter() - t0, (proc.stdout + proc.stderr)[-4000:]


def _parity_demo(out_dir: str, quick: bool, timeout: float) -> dict:
    """Wall time of the parity harness on the demo matrix (`flax-bart demo`)."""
    args = ["--out", os.path.join(out_dir, "parity-demo")] + (["--quick"] if quick else [])
    code, wall, log = _run_module("flax_bart.cli", ["demo", *args], timeout)
    return {"exit_code": code, "wall_s": wall, "log_tail": log[-1500:]}


def _headline(results: dict) -> list[tuple[str, str, str]]:
    """(what, measured, target) rows for bench.md from whatever the benchmarks produced."""
    rows = []
    fwd = results.get("forward", {}).get("results", [])
    for r in fwd:
        if "flax/transformers" in r.get("ratios", {}):
            target = "<= 0.9" if (r["shape"], r["head"], r["dtype"], r["batch"], r["length"]) == (
                "base", "qa", "float32", 4, 256) else ""
            rows.append((f"forward {r['shape']} {r['head']} {r['dtype']} {r['batch']}x{r['length']}: flax / transformers time",
                         f"{r['ratios']['flax/transformers']:.2f} ({r['timings']['flax']['median_s'] * 1e3:.0f} ms vs "
                         f"{r['timings']['transformers']['median_s'] * 1e3:.0f} ms)", target))
    gen = results.get("generate", {})
    for key, label, target in (("speedup", "greedy generate: flax / transformers tokens/s", ">= 3"),
                               ("first_call_s", "greedy generate: first call (compile) s", "<= 5")):
        val = _find(gen, key)
        if val is not None:
            rows.append((label, f"{val:.2f}", target))
    share = _find(gen.get("floor", {}), "share_of_floor_reached")
    if share is not None:
        rows.append(("greedy generate: share of the floor's speed (exact decoding at streaming bandwidth)",
                     f"{share:.2f}", ">= 0.9"))
    prof = results.get("decode_profile", {})
    if "step_ms" in prof:
        rows.append(("greedy decoding step ms (at streaming bandwidth; benchmarks.decode_profile)",
                     f"{prof['step_ms']:.2f} ({prof['step_ms_at_streaming']:.2f})", ""))
    train = results.get("train", {})
    for key, label, target in (("speedup", "training step BART-base 4x256 fp32: flax / transformers tokens/s", ">= 1.0"),):
        val = _find(train, key)
        if val is not None:
            rows.append((label, f"{val:.2f}", target))
    conv = results.get("convert", {})
    for key, label, target in (("wall_ratio", "convert BART-large: wall / plain safetensors copy", "<= 2"),
                               ("rss_ratio", "convert BART-large: peak RSS / checkpoint size", "<= 1.25")):
        val = _find(conv, key)
        if val is not None:
            rows.append((label, f"{val:.2f}", target))
    for setting, r in results.get("remat", {}).get("results", {}).get("settings", {}).items():
        if setting != "none" and "residuals_vs_none" in r:
            rows.append((f"training gradient, remat {setting}: residuals kept for backward / without remat",
                         f"{r['residuals_vs_none']:.2f} (compiled temp {r['temp_vs_none']:.2f})", ""))
    for r in results.get("device", {}).get("modes", []):
        dev = results["device"]["device_kind"]
        rows.append((f"{dev} {r['mode']} QA forward: flax / transformers time", f"{r['forward']['ratio']:.2f}",
                     "<= 0.9 (bf16), <= 0.95 (tf32)" if r["mode"] != "fp32-exact" else ""))
        g = r["generate"]
        roof = g["decode_step"].get("times_roofline")
        rows.append((f"{dev} {r['mode']} greedy: flax / transformers tokens/s"
                     + ("" if roof is None else "; decode step / HBM roofline"),
                     f"{g['speedup']:.2f}" + ("" if roof is None else f"; {roof:.1f}"), ">= 10; <= 2"))
    if "parity" in results:
        rows.append(("parity demo matrix wall time s", f"{results['parity']['wall_s']:.1f}", ""))
    return rows


def _find(tree, key):
    """The first numeric value under `key` anywhere in a nested JSON tree."""
    if isinstance(tree, dict):
        if isinstance(tree.get(key), (int, float)):
            return tree[key]
        for v in tree.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for v in tree:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def render_markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = ["# flax-bart benchmarks", "",
             f"Machine: {env['platform']}, {env['cpu_count']} CPUs; torch threads {env.get('torch_threads')}; "
             f"versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), "",
             f"Mode: {'quick (smoke run, tiny shapes)' if summary['quick'] else 'full'}.", "",
             "| measurement | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _headline(summary["results"])]
    lines += ["", "| benchmark | exit code | wall s |", "|---|---|---|"]
    lines += [f"| {k} | {v['exit_code']} | {v['wall_s']:.1f} |" for k, v in summary["runs"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run, not a measurement")
    p.add_argument("--only", default=None, help=f"comma list of {sorted(BENCHES) + ['parity']}")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--timeout", type=float, default=3600.0, help="per benchmark, seconds")
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="run the device benchmark (forward and generate beside transformers) on this device only")
    args = p.parse_args(argv)
    if args.device is not None:
        args.only = "device"
    names = [n for n in BENCHES if n != "device"] + ["parity"] if args.only is None \
        else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in BENCHES and n != "parity"]
    if unknown:
        print(f"error: --only names unknown benchmarks {unknown}; known: {sorted(BENCHES) + ['parity']}",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    results, runs = {}, {}
    for name in names:
        if name == "parity":
            runs[name] = _parity_demo(args.out, args.quick, args.timeout)
            results["parity"] = runs[name]
        else:
            out_json = os.path.join(args.out, f"{name}.json")
            extra = ["--device", args.device or "cpu"] if name == "device" else []
            code, wall, log = _run_module(BENCHES[name], ["--out", out_json, *extra] + (["--quick"] if args.quick else []),
                                          args.timeout)
            runs[name] = {"exit_code": code, "wall_s": wall, "log_tail": log[-1500:]}
            if code == 0 and os.path.isfile(out_json):
                with open(out_json, encoding="utf-8") as f:
                    results[name] = json.load(f)
        print(f"{name}: exit {runs[name]['exit_code']} in {runs[name]['wall_s']:.1f} s", flush=True)
    summary = {"quick": args.quick, "environment": environment(), "runs": runs, "results": results}
    write_json(os.path.join(args.out, "bench.json"), summary)
    from flax_bart.io_utils import atomic_write_text

    atomic_write_text(os.path.join(args.out, "bench.md"), render_markdown(summary))
    print(render_markdown(summary))
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
