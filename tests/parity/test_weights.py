"""The gate compares a Flax checkpoint's weights with the PyTorch ones (parity.weights): what its inputs
cannot reach still fails, an honest checkpoint in another storage dtype passes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bart_helpers import torch_model
from convert import convert_checkpoint, load_flax_params, save_flax_params
from flax_bart.config import BartConfig
from parity.cli import main
from parity.demo import QUICK_SHAPE
from parity.weights import coarser, compare_weights

FAST = ["--cases", "right_padding", "--steps", "2", "--batch-size", "2", "--seq-len", "12"]


@pytest.fixture(scope="module")
def cls_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls") / "pt"
    torch_model("cls", **QUICK_SHAPE).save_pretrained(d)
    return d


def _state_and_params(d, head="cls"):
    from safetensors.numpy import load_file

    config = BartConfig.from_json_file(d / "config.json")
    params, _ = load_flax_params(d, config, head)
    return load_file(d / "model.safetensors"), params, config


def test_coarser():
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert coarser(np.dtype(np.float32), bf16) == bf16 and coarser(bf16, np.dtype(np.float16)) == bf16
    assert coarser(np.dtype(np.float16), np.dtype(np.float32)) == np.dtype(np.float16)


def test_equal_weights_pass_and_a_changed_row_fails_by_name(cls_checkpoint):
    sd, params, config = _state_and_params(cls_checkpoint)
    results = compare_weights(sd, params, config, "cls")
    assert results and all(v.passed for _, v in results)
    assert results[0][0].name == "cls/weights/model.shared.weight"
    params["model"]["shared"]["embedding"][7, 3] += np.float32(0.05)
    failed = [(m, v) for m, v in compare_weights(sd, params, config, "cls") if not v.passed]
    # the one table and the copies every tied layout holds of it
    assert [m.name for m, _ in failed][0] == "cls/weights/model.shared.weight"
    assert "1 of" in failed[0][1].rule and failed[0][1].value == pytest.approx(0.05, rel=1e-3)


def test_another_storage_dtype_passes_when_it_is_the_rounded_weights(cls_checkpoint):
    import ml_dtypes

    sd, params, config = _state_and_params(cls_checkpoint)
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    results = compare_weights(bf16, params, config, "cls")
    assert all(v.passed for _, v in results)
    sd = dict(sd, **{"model.shared.weight": sd["model.shared.weight"].copy()})
    sd["model.shared.weight"][0, 0] = 0.0
    params["model"]["shared"]["embedding"][0, 0] = -0.0   # other bits, the same number
    assert all(v.passed for _, v in compare_weights(sd, params, config, "cls"))


def test_gate_fails_on_a_weight_no_output_can_show(cls_checkpoint, tmp_path):
    """A key projection's bias shifts every score of a query alike, which the softmax cancels: no
    output moves, the weights differ, the gate fails naming that tensor alone."""
    sd, params, config = _state_and_params(cls_checkpoint)
    flax_dir = tmp_path / "flax"
    convert_checkpoint(cls_checkpoint, flax_dir, to="flax")
    assert main([str(cls_checkpoint), "--flax", str(flax_dir), "--heads", "cls", *FAST, "--out",
                 str(tmp_path / "ok"), "--quiet"]) == 0
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert "cls/weights/model.shared.weight" in [r["name"] for r in report["columns"][0]["results"]]
    params["model"]["encoder"]["layers"]["0"]["self_attn"]["k_proj"]["bias"] += np.float32(0.5)
    shutil.rmtree(flax_dir)
    save_flax_params(params, flax_dir)
    shutil.copy(cls_checkpoint / "config.json", flax_dir / "config.json")
    code = main([str(cls_checkpoint), "--flax", str(flax_dir), "--heads", "cls", *FAST, "--out",
                 str(tmp_path / "bad"), "--quiet"])
    assert code == 1
    report = json.loads((tmp_path / "bad" / "report.json").read_text())
    failed = [r for r in report["columns"][0]["results"] if not r["verdict"]["passed"]]
    assert [(r["group"], r["name"]) for r in failed] == [("weights", "cls/weights/model.encoder.layers.0.self_attn.k_proj.bias")]
    assert report["columns"][0]["first_failure"]["name"] == failed[0]["name"]


def test_flax_config_with_other_token_ids_is_refused(cls_checkpoint, tmp_path, capsys):
    flax_dir = tmp_path / "flax"
    convert_checkpoint(cls_checkpoint, flax_dir, to="flax")
    cfg = json.loads((flax_dir / "config.json").read_text())
    cfg["decoder_start_token_id"] = 0
    (flax_dir / "config.json").write_text(json.dumps(cfg))
    code = main([str(cls_checkpoint), "--flax", str(flax_dir), "--heads", "cls", *FAST, "--out", str(tmp_path / "r")])
    assert code == 2
    assert "decoder_start_token_id: 2 vs 0" in capsys.readouterr().err


def test_a_run_without_the_max_length_dtypes_still_runs_that_case(cls_checkpoint, tmp_path):
    code = main([str(cls_checkpoint), "--heads", "qa", "--dtypes", "bfloat16", "--steps", "0", "--batch-size", "2",
                 "--seq-len", "12", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["environment"]["max_length_dtypes"] == "bfloat16"
    assert any("/max_length/" in r["name"] for r in report["columns"][0]["results"])
