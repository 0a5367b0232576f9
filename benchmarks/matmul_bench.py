"""XLA:CPU's matrix products at BART-base's shapes, beside PyTorch's: where the forward and the decoding
step spend their time.

Two kinds of rows, medians over repeats:

- `compute`: one product per jitted program (independent products in one program run side by side
  on XLA:CPU's thread pool, which slowed bf16 ones ~2x here), 1024 rows (4 x 256 tokens) by the dense
  layers' weights (768x768, 768x3072, 3072x768) and
  the tied LM head (50265x768, read transposed), in float32, as a plain bfloat16 product (XLA widens
  both operands to float32 first), and as bfloat16 x bfloat16 -> float32 (what `flax_bart.modules.Dense`
  asks for: on a CPU with AVX512-BF16/AMX, XLA:CPU runs it on those units). GFLOP/s.
- `stream`: 4 rows (a decoding step at batch 4) by as many 768x3072 weights as make ~380 MB, in one
  program (so the weights stream from memory, as in a BART-base decoding step), against a
  plain sum over an array of that size (the bandwidth XLA reaches reading memory). GB/s.

PyTorch's float32 / bfloat16 `linear` of the same shapes is timed beside them (torch threads 2).

    python -m benchmarks.matmul_bench [--quick] [--repeats N] [--out reports/bench/matmul.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import environment, median_time, write_json

COMPUTE_SHAPES = [(768, 768), (768, 3072), (3072, 768), (768, 50265)]   # (in, out); the last read transposed
QUICK_SHAPES = [(64, 64), (64, 256)]
MODES = ("float32", "bfloat16", "bfloat16->float32")


def _median(fn, repeats: int) -> float:
    return median_time(fn, repeats)["median_s"]


def _product(mode: str, transposed: bool):
    import jax
    import jax.numpy as jnp

    dims = (((1,), (1,)), ((), ())) if transposed else (((1,), (0,)), ((), ()))
    if mode == "bfloat16->float32":
        return lambda x, w: jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(x.dtype)
    return lambda x, w: jax.lax.dot_general(x, w, dims)


def compute_rows(shapes, rows: int, repeats: int, chain: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import torch

    out, rng = [], np.random.default_rng(0)
    for k, n in shapes:
        transposed = n > 10_000   # the tied LM head: the (vocab, d_model) table, contracted on its last axis
        wshape = (n, k) if transposed else (k, n)
        count = 1 if transposed else chain
        w32 = [rng.standard_normal(wshape, dtype=np.float32) * 0.02 for _ in range(count)]
        x32 = rng.standard_normal((rows, k), dtype=np.float32)
        flops = 2.0 * rows * k * n * count
        row = {"rows": rows, "in": k, "out": n, "weights": count, "transposed": transposed, "gflop_s": {}}
        for mode in MODES:
            dt = jnp.float32 if mode == "float32" else jnp.bfloat16
            x, ws = jnp.asarray(x32, dt), [jnp.asarray(w, dt) for w in w32]
            prod = _product(mode, transposed)
            fn = jax.jit(lambda x, ws, prod=prod: [prod(x, w) for w in ws])
            row["gflop_s"][f"xla {mode}"] = flops / _median(lambda: jax.block_until_ready(fn(x, ws)), repeats) / 1e9
        for name, tdt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            tx = torch.from_numpy(x32).to(tdt)
            tws = [torch.from_numpy(w).to(tdt) for w in w32]
            tws = tws if transposed else [w.t() for w in tws]   # linear reads (out, in)

            def run():
                with torch.inference_mode():
                    return [torch.nn.functional.linear(tx, w) for w in tws]

            row["gflop_s"][f"torch {name}"] = flops / _median(run, repeats) / 1e9
        out.append(row)
    return out


def stream_rows(k: int, n: int, total_bytes: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(1)
    result = {"rows": 4, "in": k, "out": n, "gb_s": {}}
    for mode in MODES:
        dt = jnp.float32 if mode == "float32" else jnp.bfloat16
        count = max(1, total_bytes // (k * n * jnp.dtype(dt).itemsize))
        ws = [jnp.asarray(rng.standard_normal((k, n), dtype=np.float32) * 0.02, dt) for _ in range(count)]
        x = jnp.asarray(rng.standard_normal((4, k), dtype=np.float32), dt)
        prod = _product(mode, False)
        fn = jax.jit(lambda x, ws, prod=prod: sum(prod(x, w)[:, :1].astype(jnp.float32).sum() for w in ws))
        nbytes = count * k * n * jnp.dtype(dt).itemsize
        result["gb_s"][f"xla {mode}"] = nbytes / _median(lambda: jax.block_until_ready(fn(x, ws)), repeats) / 1e9
        ws = None   # before the next dtype's copy
    count = max(1, total_bytes // (k * n * 4))
    tws = [torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32) * 0.02) for _ in range(count)]
    tx = torch.from_numpy(rng.standard_normal((4, k), dtype=np.float32))

    def run():
        with torch.inference_mode():
            return [torch.nn.functional.linear(tx, w) for w in tws]

    result["gb_s"]["torch float32"] = count * k * n * 4 / _median(run, repeats) / 1e9
    tws = None
    block = jnp.ones((total_bytes // 4,), jnp.float32)
    read = jax.jit(lambda a: a.sum())
    result["gb_s"]["xla plain read"] = block.nbytes / _median(lambda: jax.block_until_ready(read(block)), repeats) / 1e9
    return result


def render(result: dict) -> str:
    lines = [f"matrix products, {result['environment']['cpu']}", "",
             "| rows x in -> out | " + " | ".join(result["compute"][0]["gflop_s"]) + " |",
             "|---|" + "---:|" * len(result["compute"][0]["gflop_s"])]
    for r in result["compute"]:
        lines.append(f"| {r['rows']} x {r['in']} -> {r['out']}{' (table transposed)' if r['transposed'] else ''} | "
                     + " | ".join(f"{v:.0f}" for v in r["gflop_s"].values()) + " |")
    s = result["stream"]
    lines += ["", "GFLOP/s above; decoding-step products (4 rows) streaming ~"
              f"{result['stream_mb']} MB of {s['in']}x{s['out']} weights, GB/s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in s["gb_s"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.matmul_bench")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="reports/bench/matmul.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    repeats = args.repeats or (2 if args.quick else 9)
    shapes, rows, chain = (QUICK_SHAPES, 16, 1) if args.quick else (COMPUTE_SHAPES, 1024, 1)
    stream_mb = 4 if args.quick else 380
    k, n = (64, 256) if args.quick else (768, 3072)
    result = {"benchmark": "matmul", "quick": args.quick, "repeats": repeats, "environment": environment(),
              "compute": compute_rows(shapes, rows, repeats, chain), "stream_mb": stream_mb,
              "stream": stream_rows(k, n, stream_mb * 1_000_000, repeats)}
    write_json(args.out, result)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
