"""Conversion benchmark: PT->Flax and Flax->PT conversion vs a plain safetensors read+write.

    python -m benchmarks.convert_bench [--quick] [--repeats N] [--out reports/bench/convert.json]

Builds a random BART-large-shaped checkpoint (406M parameters, fp32 `model.safetensors`, as
transformers v5 writes it) in a temporary directory, then runs each job in a fresh subprocess and
records its wall time and peak resident memory (the child's own `ru_maxrss`); medians of the
repeats. Targets (issue 3): conversion wall <= 2x the plain copy, peak RSS <= 1.25x the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import BART_LARGE, FILE_QUICK, build_checkpoint, peak_rss_bytes

WALL_TARGET, RSS_TARGET = 2.0, 1.25


# ---- children -----------------------------------------------------------------------------------
def _child(job: str, src: str, dst: str) -> None:
    t_import = time.perf_counter()
    if job == "copy":
        from safetensors.numpy import load_file, save_file
    else:
        from convert import convert_checkpoint
    t0 = time.perf_counter()
    if job == "copy":
        tensors = load_file(os.path.join(src, "model.safetensors"))
        os.makedirs(dst, exist_ok=True)
        save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    elif job == "pt2flax":
        convert_checkpoint(src, dst, to="flax", quiet=True)
    elif job == "flax2pt":
        convert_checkpoint(src, dst, to="pytorch", quiet=True)
    else:
        raise SystemExit(f"unknown job {job!r}")
    t1 = time.perf_counter()
    rss = peak_rss_bytes()
    print(json.dumps({"wall_s": t1 - t0, "import_s": t0 - t_import, "peak_rss_bytes": rss}))


def _run_child(job: str, src: str, dst: str) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.convert_bench", "--child", job, src, dst],
                          capture_output=True, text=True, cwd=os.getcwd())
    if proc.returncode:
        raise RuntimeError(f"{job} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shape, one repeat (smoke test)")
    p.add_argument("--repeats", type=int, help="runs per job (default 3, quick 1)")
    p.add_argument("--out", default=os.path.join("reports", "bench", "convert.json"))
    p.add_argument("--tmp", help="directory for the temporary checkpoints (default: system temp)")
    p.add_argument("--child", nargs=3, metavar=("JOB", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    shape = FILE_QUICK if args.quick else BART_LARGE
    work = tempfile.mkdtemp(prefix="convert-bench-", dir=args.tmp)
    try:
        src, flax_dir = os.path.join(work, "pt"), os.path.join(work, "flax")
        os.makedirs(src)
        t0 = time.perf_counter()
        ckpt = build_checkpoint(src, shape)
        build_s = time.perf_counter() - t0
        jobs = {"copy": (src, os.path.join(work, "copy")), "pt2flax": (src, flax_dir),
                "flax2pt": (flax_dir, os.path.join(work, "pt_back"))}
        runs: dict[str, list] = {job: [] for job in jobs}
        for _ in range(repeats):  # interleaved, so page-cache state is alike for all jobs
            for job, (a, b) in jobs.items():
                if job == "flax2pt" and not os.path.isdir(flax_dir):
                    _run_child("pt2flax", src, flax_dir)
                runs[job].append(_run_child(job, a, b))
        results = {job: _median(r) for job, r in runs.items()}
        base = results["copy"]
        for job in ("pt2flax", "flax2pt"):
            r = results[job]
            r["wall_ratio_vs_copy"] = r["wall_s"] / base["wall_s"]
            r["process_wall_ratio_vs_copy"] = r["process_wall_s"] / base["process_wall_s"]
            r["rss_ratio_vs_checkpoint"] = r["peak_rss_bytes"] / ckpt["bytes"]
            r["meets_targets"] = r["wall_ratio_vs_copy"] <= WALL_TARGET and r["rss_ratio_vs_checkpoint"] <= RSS_TARGET
        base["rss_ratio_vs_checkpoint"] = base["peak_rss_bytes"] / ckpt["bytes"]
        report = {
            "benchmark": "convert", "quick": args.quick, "repeats": repeats, "shape": shape,
            "checkpoint": {**ckpt, "dtype": "float32", "build_s": build_s},
            "targets": {"wall_ratio_vs_copy": WALL_TARGET, "rss_ratio_vs_checkpoint": RSS_TARGET},
            "results": results, "runs": runs,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "numpy": __import__("numpy").__version__},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    gb = ckpt["bytes"] / 1e9
    print(f"checkpoint: {ckpt['parameters'] / 1e6:.1f}M parameters, {gb:.2f} GB fp32 (median of {repeats})")
    print(f"{'job':<10}{'wall s':>9}{'process s':>11}{'peak RSS GB':>13}{'RSS/ckpt':>10}{'wall/copy':>11}")
    for job, r in results.items():
        ratio = f"{r['wall_ratio_vs_copy']:.2f}" if "wall_ratio_vs_copy" in r else "1.00"
        print(f"{job:<10}{r['wall_s']:>9.2f}{r['process_wall_s']:>11.2f}{r['peak_rss_bytes'] / 1e9:>13.2f}"
              f"{r['rss_ratio_vs_checkpoint']:>10.2f}{ratio:>11}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
