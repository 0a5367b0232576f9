"""Peak host memory of `from_pretrained(..., mesh=...)` (loading straight into shards) vs the file.

    python -m benchmarks.shard_load_bench [--quick] [--out reports/bench/shard_load.json]

Builds a random BART-base-shaped checkpoint (fp32 `model.safetensors`, as transformers v5 writes
it), then runs each job in a fresh subprocess and records its peak resident memory (the child's own
`ru_maxrss`) and what its devices hold:

- `runtime`: import jax + flax_bart and build the abstract parameter tree (the floor every job pays);
  every other job also reports its peak after one small forward pass (batch 8 x 8 tokens);
- `normal`: `from_pretrained(path)` without a mesh (the model keeps a numpy param tree on the host);
- `sharded_fsdp8`: 8 simulated CPU devices, mesh fsdp=8, loaded into shards;
- `multihost_fsdp`: two `jax.distributed` processes on localhost, 2 CPU devices each, mesh fsdp=4
  (each process loads only the shards of its own devices).

On CPU the "device" buffers live in host memory, so a job's loading overhead is
`peak_rss - runtime_rss - device_bytes - host_param_bytes` (what this process's devices hold, and the
params it keeps as numpy): loading into shards keeps it near one tensor (the memory map of the
tensor being read), not a model copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from benchmarks.common import BART_BASE, FILE_QUICK, build_checkpoint, peak_rss_bytes

# ---- children -----------------------------------------------------------------------------------
def _held_bytes(params) -> tuple[int, int]:
    """(bytes on this process's devices, bytes in numpy leaves) of a param tree."""
    import jax

    leaves = jax.tree_util.tree_leaves(params)
    on_devices = sum(s.data.nbytes for x in leaves if isinstance(x, jax.Array) for s in x.addressable_shards)
    return int(on_devices), int(sum(x.nbytes for x in leaves if not isinstance(x, jax.Array)))


def _child(job: str, ckpt: str, extra: list[str]) -> None:
    if job == "multihost_fsdp":
        import jax

        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{extra[1]}", num_processes=2,
                                   process_id=int(extra[0]), initialization_timeout=120)
    import jax

    from flax_bart import FlaxBartForConditionalGeneration as Model
    from flax_bart.config import BartConfig

    cfg = BartConfig.from_json_file(os.path.join(ckpt, "config.json"))
    Model(cfg, _do_init=False).params_shape_tree()
    t0 = time.perf_counter()
    result = {"devices": jax.local_device_count(), "process_count": jax.process_count()}
    if job == "runtime":
        result["device_bytes"] = result["host_param_bytes"] = 0
    elif job == "normal":
        model = Model.from_pretrained(ckpt)
        result["device_bytes"], result["host_param_bytes"] = _held_bytes(model.params)
    else:
        mesh = jax.make_mesh((jax.device_count(),), ("fsdp",))
        model = Model.from_pretrained(ckpt, mesh=mesh)
        result["device_bytes"], result["host_param_bytes"] = _held_bytes(model.params)
        result["global_param_bytes"] = int(sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params)))
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_bytes"] = peak_rss_bytes()
    if job != "runtime":  # one small forward pass: the params then sit where the computation needs them
        import numpy as np

        ids = np.full((8, 8), 5, np.int32)
        ids[:, -1] = 2
        jax.block_until_ready(model(ids).logits)
        result["after_forward_peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(result), flush=True)
    if job == "multihost_fsdp":
        jax.distributed.shutdown()


def _cmd(job: str, ckpt: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.shard_load_bench", "--child", job, ckpt, *extra]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.strip().splitlines() if line.startswith("{")][-1])


def _run(job: str, ckpt: str, devices: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(_cmd(job, ckpt), env=_env(devices), capture_output=True, text=True, cwd=os.getcwd(),
                          timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{job} failed:\n{proc.stderr[-4000:]}")
    return {**_last_json(proc.stdout), "process_wall_s": time.perf_counter() - t0}


def _run_multihost(ckpt: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(_cmd("multihost_fsdp", ckpt, str(i), str(port)), env=_env(2), cwd=os.getcwd(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=1800))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError("multihost_fsdp failed:\n" + "\n".join(err[-3000:] for _, err in outs))
    return [_last_json(out) for out, _ in outs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shape (smoke test)")
    p.add_argument("--out", default=os.path.join("reports", "bench", "shard_load.json"))
    p.add_argument("--tmp", help="directory for the temporary checkpoint (default: system temp)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.child[2:])
        return 0
    shape = FILE_QUICK if args.quick else BART_BASE
    work = tempfile.mkdtemp(prefix="shard-load-bench-", dir=args.tmp)
    try:
        t0 = time.perf_counter()
        ckpt = build_checkpoint(work, shape)
        build_s = time.perf_counter() - t0
        results = {"runtime": _run("runtime", work, 1), "normal": _run("normal", work, 1),
                   "sharded_fsdp8": _run("sharded_fsdp8", work, 8)}
        results["multihost_fsdp"] = _run_multihost(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = results["runtime"]["peak_rss_bytes"]
    for r in [results["normal"], results["sharded_fsdp8"], *results["multihost_fsdp"]]:
        r["above_runtime_bytes"] = r["peak_rss_bytes"] - floor
        r["host_overhead_bytes"] = r["above_runtime_bytes"] - r["device_bytes"] - r["host_param_bytes"]
        r["above_runtime_vs_checkpoint"] = r["above_runtime_bytes"] / ckpt["bytes"]
        r["host_overhead_vs_checkpoint"] = r["host_overhead_bytes"] / ckpt["bytes"]
        r["after_forward_above_runtime_vs_checkpoint"] = (r["after_forward_peak_rss_bytes"] - floor) / ckpt["bytes"]
    report = {
        "benchmark": "shard_load", "quick": args.quick, "shape": shape,
        "checkpoint": {**ckpt, "dtype": "float32", "build_s": build_s},
        "results": results,
        "notes": "CPU devices keep their buffers in host memory: host_overhead = peak_rss - runtime - device_bytes "
                 "- host_param_bytes (numpy params the model keeps). "
                 "multihost_fsdp: one entry per process, each holding half the fsdp shards.",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "jax": __import__("jax").__version__},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    mb = 1 / 2**20
    print(f"checkpoint: {ckpt['parameters'] / 1e6:.1f}M parameters, {ckpt['bytes'] * mb:.0f} MiB fp32, "
          f"largest tensor {ckpt['largest_tensor_bytes'] * mb:.0f} MiB; runtime floor {floor * mb:.0f} MiB")
    print(f"{'job':<18}{'wall s':>8}{'peak RSS MiB':>14}{'above floor':>13}{'on devices':>12}{'numpy':>8}"
          f"{'overhead':>10}{'after fwd':>11}")
    rows = [("normal", results["normal"]), ("sharded_fsdp8", results["sharded_fsdp8"])]
    rows += [(f"multihost p{i}", r) for i, r in enumerate(results["multihost_fsdp"])]
    for name, r in rows:
        print(f"{name:<18}{r['wall_s']:>8.2f}{r['peak_rss_bytes'] * mb:>14.0f}{r['above_runtime_bytes'] * mb:>13.0f}"
              f"{r['device_bytes'] * mb:>12.0f}{r['host_param_bytes'] * mb:>8.0f}{r['host_overhead_bytes'] * mb:>10.0f}"
              f"{r['after_forward_peak_rss_bytes'] * mb:>11.0f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
