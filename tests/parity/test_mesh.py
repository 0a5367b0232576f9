"""The parity gate's `--mesh dp=2,tp=4`: parsing, errors on one device, and on 8 simulated devices
(a subprocess, `mesh_worker.py`) sharded Flax outputs equal to single-device ones, a gate that passes,
fails on perturbed weights, and refuses meshes that do not fit."""

from __future__ import annotations

import os

import pytest

from bart_helpers import run_json_worker
from parity.checkpoint import ParityInputError
from parity.cli import main as parity_main
from parity.mesh import MeshSpec, build_mesh, check_batch, default_batch_size, parse_mesh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FP32_ATOL = 1e-5


def test_parse_mesh():
    spec = parse_mesh("dp=2, tp=4")
    assert spec == MeshSpec((("dp", 2), ("tp", 4)))
    assert (spec.label, spec.size, spec.batch_shards) == ("dp=2,tp=4", 8, 2)
    assert spec.column_label("cpu") == "cpu[dp=2,tp=4]"
    assert parse_mesh("fsdp=2,dp=2,tp=2").batch_shards == 4


@pytest.mark.parametrize("text, words", [
    ("", "expected axis=size pairs"),
    ("dp", "'dp' is not axis=size"),
    ("dp=two", "is not axis=size"),
    ("model=4", "unknown axis 'model'"),
    ("tp=2,tp=4", "axis 'tp' given twice"),
    ("tp=0", "size 0"),
    ("tp=-2", "is not axis=size"),
])
def test_bad_mesh_text(text, words):
    with pytest.raises(ParityInputError, match=words):
        parse_mesh(text)


def test_batch_sizes_follow_the_batch_axes():
    assert default_batch_size(None) == 3
    assert default_batch_size(parse_mesh("dp=2,tp=4")) == 4
    assert default_batch_size(parse_mesh("dp=8")) == 8
    assert default_batch_size(parse_mesh("tp=8")) == 3
    check_batch(parse_mesh("dp=2"), 4, "x")
    with pytest.raises(ParityInputError, match=r"--batch-size 3 has 3 rows.*multiple of 2"):
        check_batch(parse_mesh("dp=2,tp=4"), 3, "--batch-size 3")


def test_too_few_devices_names_the_flag_to_set():
    import jax

    have = len(jax.devices("cpu"))
    with pytest.raises(ParityInputError, match=rf"needs {have + 1} cpu devices, JAX sees {have}.*"
                                               rf"xla_force_host_platform_device_count={have + 1}"):
        build_mesh(parse_mesh(f"dp={have + 1}"), "cpu")


def test_cli_bad_mesh_exits_2_without_traceback(tmp_path, capsys):
    code = parity_main([str(tmp_path), "--mesh", "model=2"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown axis 'model'" in err and "Traceback" not in err


# ---- 8 simulated devices, in one subprocess ---------------------------------------------------------
@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    work = tmp_path_factory.mktemp("mesh8")
    out = work / "result.json"
    return run_json_worker([os.path.join(HERE, "mesh_worker.py"), out, work], out, 8, ROOT)


def test_sharded_harness_outputs_equal_single_device(eight):
    assert eight["device_count"] == 8
    layouts = eight["layouts"]
    assert set(layouts["dp=2,tp=4"]) == {"lm", "qa", "cls", "causal", "base"}
    for label, heads in layouts.items():
        for head, r in heads.items():
            assert r["mesh_devices"] == 8 and r["diff"] <= FP32_ATOL, (label, head, r)
    lm = layouts["dp=2,tp=4"]["lm"]
    assert lm["compared"] == ["forward", "greedy", "greedy_scores", "greedy_steps", "steps"]
    assert lm["spec"] == "P(None, 'tp')" and lm["rows"] == 4  # heads split; 3 rows rounded up to 4
    assert layouts["fsdp=8"]["lm"]["spec"] != "P()" and layouts["dp=8"]["lm"]["rows"] == 8
    assert layouts["dp=8"]["lm"]["spec"] == "P()"  # data parallel: params replicated


def test_gate_on_a_mesh_passes_and_fails(eight):
    ok = eight["gate"]["pass"]
    assert ok["code"] == 0, ok["stderr"]
    assert ok["columns"] == ["float32/cpu[dp=2,tp=4]/cpu"] and ok["mesh_env"].startswith("dp=2,tp=4")
    bad = eight["gate"]["perturbed"]
    assert bad["code"] == 1
    assert bad["first_failure"]["name"].startswith("lm/right_padding/decoder_hidden_states[2]")


def test_gate_refuses_meshes_that_do_not_fit(eight):
    tp8 = eight["gate"]["tp8"]
    assert tp8["code"] == 2 and "Traceback" not in tp8["stderr"]
    assert "q_proj/kernel: dimension 1" in tp8["stderr"] and "axis 'tp' (size 8)" in tp8["stderr"]
    odd = eight["gate"]["odd_batch"]
    assert odd["code"] == 2 and "--batch-size 3" in odd["stderr"] and "multiple of 2" in odd["stderr"]
    many = eight["gate"]["too_many"]
    assert many["code"] == 2 and "needs 16 cpu devices, JAX sees 8" in many["stderr"]
