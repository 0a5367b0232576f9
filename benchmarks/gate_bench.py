"""The parity gate's wall time, cold and warm compile cache, and where it goes (PyTorch, Flax build, Flax run).

    python -m benchmarks.gate_bench [--quick] [--matrix quick4x3,demo3x3] [--compile-modes auto,optimized]
                                    [--flax-jobs 1,default] [--precisions highest,default]
                                    [--allocators tuned,default]
                                    [--out reports/bench | --out FILE.json]

Each run is `python -m parity CKPT --heads ... --dtypes ... --compile-cache DIR` in a child process:
"cold" with an empty DIR, then "warm" with the same DIR. The breakdown comes from the report's
`timings` (parity.timing). Matrices: `quick4x3` = the demo's tiny config, heads qa,lm,cls,causal x
float32,bfloat16,float16, default inputs; `demo3x3` = the BART-base demo (heads qa,lm,cls, the demo's
inputs); `base4x3` = the default gate of issue 13 on the BART-base demo checkpoint (heads qa,lm,cls,causal x
float32,bfloat16,float16, default inputs). `--quick` (the test suite's smoke run) runs the tiny config,
head qa, float32 only. `--allocators default` runs the child with `FLAX_BART_TUNE_ALLOCATOR=0` (the C
library's malloc settings; parity tunes them for a CPU gate, flax_bart.host_memory); each run records
the child's minor page faults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.common import environment, write_json

MATRICES = {
    "quick4x3": dict(quick=True, heads="qa,lm,cls,causal", dtypes="float32,bfloat16,float16", extra=[]),
    "demo3x3": dict(quick=False, heads="qa,lm,cls", dtypes="float32,bfloat16,float16",
                    extra=["--batch-size", "2", "--seq-len", "32", "--steps", "4", "--cases",
                           "right_padding,fully_padded_row,fully_masked_row,qa_pairs,classification"]),
    "base4x3": dict(quick=False, heads="qa,lm,cls,causal", dtypes="float32,bfloat16,float16", extra=[]),
    "smoke": dict(quick=True, heads="qa", dtypes="float32", extra=["--steps", "2"]),
}


def run_gate(checkpoint: str, matrix: dict, cache_dir: str, out: str, timeout: float,
             compile_mode: str = "auto", flax_jobs: int | None = None, precision: str = "highest",
             allocator: str = "tuned") -> dict:
    cmd = [sys.executable, "-m", "parity", checkpoint, "--heads", matrix["heads"], "--dtypes", matrix["dtypes"],
           "--compile-cache", cache_dir, "--out", out, "--quiet", "--compile-mode", compile_mode,
           "--precision", precision, *matrix["extra"]]
    if flax_jobs is not None:
        cmd += ["--flax-jobs", str(flax_jobs)]
    env = {**os.environ, "FLAX_BART_TUNE_ALLOCATOR": "0" if allocator == "default" else "1"}
    faults0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    result = {"exit_code": proc.returncode, "wall_s": round(wall, 2),
              "minor_faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults0}
    try:
        with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
            report = json.load(fh)
        timings = report["timings"]
        result["host_allocator"] = report["environment"].get("host_allocator")
    except (OSError, KeyError, ValueError):
        result["log_tail"] = (proc.stdout + proc.stderr)[-2000:]
        return result
    steps = timings["steps"].values()
    build = sum(v.get("flax_trace_s", 0) + v.get("flax_lower_s", 0) + v.get("flax_compile_s", 0) for v in steps)
    result.update({
        "harness_s": timings["seconds"], "torch_s": timings["torch_s"], "flax_s": timings["flax_s"],
        "flax_build_s": round(build, 2), "flax_run_s": round(timings["flax_s"] - build, 2),
        "flax_wait_s": timings.get("flax_wait_s", timings["flax_s"]),
        "compare_s": timings["compare_s"], "programs": sum(v.get("flax_programs", 0) for v in steps),
        "cache_hits": sum(v.get("flax_cache_hits", 0) for v in steps),
        "startup_and_io_s": round(wall - timings["seconds"], 2), "steps": timings["steps"],
    })
    return result


def results_path(out: str) -> str:
    """--out names the JSON file itself when it ends in .json, else the folder that gets gate.json."""
    return out if out.lower().endswith(".json") else os.path.join(out, "gate.json")


def _some_of(flag: str, value: str, allowed: tuple[str, ...]) -> list[str] | None:
    """The comma-separated `value` of `flag` as a list of names among `allowed`; None (after saying which
    flag and value, on stderr) when it names none or another."""
    picked = [x.strip() for x in value.split(",") if x.strip()]
    if not picked or any(x not in allowed for x in picked):
        print(f"gate_bench: {flag} {value!r}; expected some of {', '.join(allowed)}", file=sys.stderr)
        return None
    return picked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny config, head qa, float32")
    p.add_argument("--matrix", default="quick4x3,demo3x3,base4x3", help=f"comma-separated among {sorted(MATRICES)}")
    p.add_argument("--out", default=os.path.join("reports", "bench"),
                   help="a folder (the results go to gate.json in it) or a path ending in .json")
    p.add_argument("--cache-dir", default=None, help="demo checkpoint cache (default: the demo's)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--compile-modes", default="auto",
                   help="comma-separated parity --compile-mode values, each run side by side (results of a mode "
                        "other than auto are keyed MATRIX/MODE)")
    p.add_argument("--flax-jobs", default="default",
                   help="comma-separated parity --flax-jobs values, each run side by side ('default': parity's own "
                        "choice; results of another value are keyed MATRIX/jobsN)")
    p.add_argument("--precisions", default="highest",
                   help="comma-separated parity --precision values, each run in turn (results of 'default' are keyed "
                        "MATRIX/default)")
    p.add_argument("--allocators", default="tuned",
                   help="comma-separated among tuned (parity's own: flax_bart.host_memory's settings for a CPU gate) "
                        "and default (the C library's: FLAX_BART_TUNE_ALLOCATOR=0), run side by side (results of "
                        "default are keyed MATRIX/default-allocator)")
    args = p.parse_args(argv)
    allocators = _some_of("--allocators", args.allocators, ("tuned", "default"))
    precisions = _some_of("--precisions", args.precisions, ("highest", "default"))
    modes = _some_of("--compile-modes", args.compile_modes, ("auto", "fast", "optimized"))
    if None in (allocators, precisions, modes):
        return 2
    try:
        jobs_list = [None if j.strip() == "default" else int(j) for j in args.flax_jobs.split(",") if j.strip()]
    except ValueError:
        jobs_list = []
    if not jobs_list or any(j is not None and j < 1 for j in jobs_list):
        print(f"gate_bench: --flax-jobs {args.flax_jobs!r}; expected 'default' or numbers >= 1", file=sys.stderr)
        return 2
    names = ["smoke"] if args.quick else [m.strip() for m in args.matrix.split(",") if m.strip()]
    unknown = [n for n in names if n not in MATRICES]
    if unknown:
        print(f"gate_bench: unknown matrix {unknown}; expected some of {sorted(MATRICES)}", file=sys.stderr)
        return 2
    from pathlib import Path

    from parity.demo import default_cache, ensure_checkpoint

    cache = Path(args.cache_dir) if args.cache_dir else default_cache()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gate-bench-") as tmp:
        for name, mode, jobs, precision, alloc in [(n, m, j, x, a) for n in names for m in modes for j in jobs_list
                                                   for x in precisions for a in allocators]:
            matrix = MATRICES[name]
            ckpt = str(ensure_checkpoint(matrix["quick"], cache, log=lambda msg: print(msg, file=sys.stderr)))
            label = name + ("" if mode == "auto" else f"/{mode}") + ("" if jobs is None else f"/jobs{jobs}") + \
                ("" if precision == "highest" else f"/{precision}") + ("" if alloc == "tuned" else "/default-allocator")
            tag = label.replace("/", "-")
            compile_dir = os.path.join(tmp, f"{tag}-xla")
            runs = {}
            for phase in ("cold", "warm"):
                runs[phase] = run_gate(ckpt, matrix, compile_dir, os.path.join(tmp, f"{tag}-{phase}"),
                                       args.timeout, mode, jobs, precision, alloc)
                r = runs[phase]
                print(f"{label} {phase}: wall {r['wall_s']:.1f} s; PyTorch {r.get('torch_s', 0):.1f} s, Flax "
                      f"{r.get('flax_s', 0):.1f} s (building {r.get('programs', 0)} programs {r.get('flax_build_s', 0):.1f} s"
                      f", {r.get('cache_hits', 0)} from the cache; running {r.get('flax_run_s', 0):.1f} s; waited for "
                      f"{r.get('flax_wait_s', 0):.1f} s); {r['minor_faults']} minor page faults; exit "
                      f"{r['exit_code']}", flush=True)
            results[label] = {"heads": matrix["heads"], "dtypes": matrix["dtypes"], "args": matrix["extra"],
                              "compile_mode": mode, "flax_jobs": "default" if jobs is None else jobs,
                              "precision": precision, "allocator": alloc, **runs}
    data = {"benchmark": "gate", "quick": args.quick, "environment": environment(), "results": results}
    write_json(results_path(args.out), data)   # makes the folder
    failed = [n for n, r in results.items() if any(r[p]["exit_code"] != 0 for p in ("cold", "warm"))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
