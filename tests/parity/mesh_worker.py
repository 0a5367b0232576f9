"""The parity gate's `--mesh` on 8 simulated CPU devices, for test_mesh.py (run in a subprocess that
JAX starts with XLA_FLAGS=--xla_force_host_platform_device_count=8; never in the test process).

    python mesh_worker.py OUT.json WORKDIR

Writes JSON: per layout and head, the largest difference between the Flax outputs the harness
collected on the mesh and on one device (forward tensors, cached steps, greedy ids and scores), the
PartitionSpec of a sharded weight, the gate's exit codes on a correct and a perturbed checkpoint and
on bad meshes, with the error text.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: bart_helpers

from bart_helpers import torch_model  # noqa: E402

from parity import harness  # noqa: E402
from parity.cli import main as parity_main  # noqa: E402
from parity.mesh import build_mesh, parse_mesh  # noqa: E402
from parity.options import Options, input_cases  # noqa: E402

# 4 heads everywhere, so that tp=4 splits whole heads.
SHAPE = dict(vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=20, max_position_embeddings=40)
LAYOUTS = {"dp=2,tp=4": ("lm", "qa", "cls", "causal", "base"), "fsdp=8": ("lm", "qa"), "dp=8": ("lm",)}
CASES = ("right_padding", "left_padding")
STEPS = 2


def max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max((max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if a is None or isinstance(a, (int, float)):
        return 0.0 if a == b else float("inf")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    with np.errstate(invalid="ignore"):  # forced steps' scores: -inf on both sides counts as equal
        diff = np.where(a == b, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if a.size else 0.0


def spec_of(runner) -> str:
    from flax import traverse_util

    flat = traverse_util.flatten_dict(runner.params, sep="/")
    leaf = next(v for k, v in flat.items() if k.endswith("decoder/layers/0/self_attn/q_proj/kernel"))
    return str(leaf.sharding.spec)


def outputs_on_mesh_and_one_device(path: str, label: str, heads) -> dict:
    """{head: {"diff": max |mesh - single|, "spec": spec of a q_proj kernel, "rows": batch rows}}."""
    from parity.checkpoint import open_checkpoint

    spec = parse_mesh(label)
    mesh = build_mesh(spec, "cpu")
    opts = Options(heads=heads, cases=CASES, steps=STEPS, mesh=label)
    ckpt = open_checkpoint(path)
    cases = input_cases(ckpt, heads, opts)
    dev = jax.devices("cpu")[0]
    out = {}
    with jax.default_matmul_precision(harness.MATMUL_PRECISION):
        for head in heads:
            params = ckpt.flax_weights(head, ckpt.reference_weights(head, 0))
            one = harness._flax_runner(ckpt, head, params, "float32", dev)
            many = harness._flax_runner(ckpt, head, params, "float32", dev, mesh)
            a, _ = harness._run_flax(one, head, cases[head], STEPS, dev)
            b, _ = harness._run_flax(many, head, cases[head], STEPS, dev)
            out[head] = {"diff": max_diff(a, b), "spec": spec_of(many), "mesh_devices": many.model.mesh.size,
                         "rows": int(next(iter(cases[head].values()))["input_ids"].shape[0]),
                         "compared": sorted(b[CASES[0]])}
    return out


def gate(argv) -> dict:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = parity_main(argv)
    return {"code": code, "stderr": err.getvalue()}


def main(out_path: str, work: str) -> None:
    from convert import load_flax_params, save_flax_params
    from parity.checkpoint import open_checkpoint

    res = {"device_count": jax.device_count(), "layouts": {}, "gate": {}}
    good = os.path.join(work, "good")
    torch_model("lm", seed=3, **SHAPE).save_pretrained(good)
    for label, heads in LAYOUTS.items():
        res["layouts"][label] = outputs_on_mesh_and_one_device(good, label, heads)

    common = ["--cases", ",".join(CASES), "--steps", str(STEPS), "--quiet"]
    res["gate"]["pass"] = gate([good, "--heads", "lm,qa", "--mesh", "dp=2,tp=4", "--out", os.path.join(work, "r1"),
                                *common])
    with open(os.path.join(work, "r1", "report.json")) as f:
        report = json.load(f)
    res["gate"]["pass"]["columns"] = [c["key"] for c in report["columns"]]
    res["gate"]["pass"]["mesh_env"] = report["environment"]["mesh"]

    bad = os.path.join(work, "perturbed")
    torch_model("lm", seed=3, **SHAPE).save_pretrained(bad)
    params, _ = load_flax_params(bad, open_checkpoint(bad).config, "lm")
    fc1 = params["model"]["decoder"]["layers"]["1"]["fc1"]
    fc1["kernel"] = (np.asarray(fc1["kernel"], np.float64) * 1.001).astype(np.float32)
    save_flax_params(params, bad)
    res["gate"]["perturbed"] = gate([bad, "--heads", "lm", "--mesh", "dp=2,tp=4", "--out",
                                     os.path.join(work, "r2"), *common])
    with open(os.path.join(work, "r2", "report.json")) as f:
        first = json.load(f)["columns"][0]["first_failure"]
    res["gate"]["perturbed"]["first_failure"] = first

    res["gate"]["tp8"] = gate([good, "--heads", "lm", "--mesh", "tp=8", "--out", os.path.join(work, "r3"), *common])
    res["gate"]["odd_batch"] = gate([good, "--heads", "lm", "--mesh", "dp=2,tp=4", "--batch-size", "3",
                                     "--out", os.path.join(work, "r4"), *common])
    res["gate"]["too_many"] = gate([good, "--heads", "lm", "--mesh", "dp=4,tp=4", "--out", os.path.join(work, "r5"),
                                    *common])
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
