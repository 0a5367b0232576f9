"""`flax-bart finetune`: the loss falls, the checkpoint reloads bit-equal, converts to PyTorch with the
same logits in transformers, and bad arguments exit 2 without a traceback."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from flax_bart.finetune import build_parser, finetune

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--from-scratch", "--vocab-size", "32", "--d-model", "32", "--layers", "1", "--heads", "2",
        "--ffn-dim", "64", "--seq-len", "6", "--batch-size", "16", "--warmup", "2",
        "--lr", "1e-2", "--eval-every", "10", "--eval-size", "32", "--quiet"]
LOGITS_ATOL = 1e-5  # fp32, flax vs transformers on a converted checkpoint


def _flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _transformers_logits_match(flax_model, flax_params, pt_dir, rows=4):
    """Logits of transformers' BartForConditionalGeneration loaded from `pt_dir` vs flax's, same ids."""
    import torch
    import transformers

    from flax_bart.finetune import SyntheticTask

    batch = SyntheticTask(flax_model.config, "reverse", 6, None).batch(np.random.default_rng(7), rows)
    flax_logits = np.asarray(flax_model(batch["input_ids"], labels=batch["labels"], params=flax_params).logits)
    pt = transformers.BartForConditionalGeneration.from_pretrained(pt_dir).eval()
    with torch.no_grad():
        pt_logits = pt(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                       labels=torch.tensor(batch["labels"], dtype=torch.long)).logits.numpy()
    assert pt_logits.shape == flax_logits.shape
    np.testing.assert_allclose(flax_logits, pt_logits, atol=LOGITS_ATOL, rtol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ckpt"
    model, params, summary = finetune(build_parser().parse_args(TINY + ["--steps", "20", "--out", str(out)]))
    return out, model, params, summary


def test_loss_decreases(trained):
    _, _, _, summary = trained
    evals = [loss for _, loss in summary["history"]["eval"]]
    assert [s for s, _ in summary["history"]["eval"]] == [0, 10, 20]
    assert evals[0] == pytest.approx(np.log(28), abs=0.3)  # ~uniform over the 28 task tokens at init
    assert evals[2] < evals[1] < evals[0] and evals[2] < evals[0] - 0.3, evals
    train = summary["history"]["train"]
    assert train[0][0] == 1 and train[-1][0] == 20 and train[-1][1] < train[0][1]


def test_checkpoint_reloads_bit_equal(trained):
    from flax_bart.models import FlaxBartForConditionalGeneration

    out, model, params, _ = trained
    assert {"config.json", "flax_model.msgpack"} <= set(os.listdir(out))
    reloaded = FlaxBartForConditionalGeneration.from_pretrained(str(out))
    saved, trained_config = reloaded.config.to_dict(), model.config.to_dict()
    assert saved.pop("architectures", None) == ["BartForConditionalGeneration"]
    trained_config.pop("architectures", None)
    assert saved == trained_config
    want, got = _flat(params), _flat(reloaded.params)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_converted_checkpoint_matches_transformers(trained, tmp_path):
    from convert import convert_checkpoint

    out, model, params, _ = trained
    convert_checkpoint(str(out), str(tmp_path / "pt"), to="pytorch")
    _transformers_logits_match(model, params, str(tmp_path / "pt"))


def test_resume_from_model_dir(trained, tmp_path):
    """--model DIR starts where the saved run ended: its first eval loss is the saved run's last."""
    out, _, _, summary = trained
    args = ["--model", str(out), "--out", str(tmp_path / "again"), "--steps", "2", "--eval-size", "32",
            "--seq-len", "6", "--batch-size", "16", "--quiet"]
    _, _, again = finetune(build_parser().parse_args(args))
    assert again["first_eval_loss"] == pytest.approx(summary["final_eval_loss"], abs=1e-6)


def _run(args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


@pytest.mark.parametrize("entry", [["-m", "flax_bart.finetune"], ["-m", "flax_bart.cli", "finetune"]])
@pytest.mark.parametrize("bad, message", [
    (["--from-scratch", "--steps", "0"], "--steps is 0"),
    (["--from-scratch", "--d-model", "30", "--heads", "4"], "not divisible"),
    (["--model", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--from-scratch", "--mesh", "dp=x"], "--mesh"),
    (["--from-scratch", "--steps", "two"], "invalid int value"),
])
def test_bad_arguments_exit_2(entry, bad, message, tmp_path):
    proc = _run(entry + bad + ["--out", str(tmp_path / "o"), "--quiet"])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_out_it_may_not_replace_is_refused_before_training(tmp_path):
    """--mesh replaces --out as a whole at the end: an empty --out or a folder of other files is refused at
    once (exit 2), not after the training run."""
    from flax_bart.validation import InputError

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "other.txt").write_text("x")
    for out, message in ((runs, "is not an earlier checkpoint output"), ("", "--out is empty")):
        args = build_parser().parse_args([*TINY, "--steps", "1", "--out", str(out), "--mesh", "dp=1", "--quiet"])
        with pytest.raises(InputError, match=message):
            finetune(args)
    assert sorted(p.name for p in runs.iterdir()) == ["other.txt"]


def test_mesh_run_saves_orbax_that_converts(tmp_path):
    """--mesh dp=2 on two simulated CPU devices: an orbax checkpoint that `convert --to pytorch`
    turns into a transformers model with the same logits as the orbax params in flax."""
    out = tmp_path / "orbax"
    args = ["-m", "flax_bart.finetune", *TINY, "--steps", "3", "--eval-every", "3", "--out", str(out),
            "--mesh", "dp=2", "--json"]
    proc = _run(args, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["format"] == "orbax" and np.isfinite(summary["final_eval_loss"])
    assert json.loads((out / "flax_bart_orbax.json").read_text())["mesh"] == {"dp": 2}
    from flax_bart.models import FlaxBartForConditionalGeneration
    from flax_bart.orbax_io import convert_from_orbax, load_orbax_as_flax

    params, config, head = load_orbax_as_flax(str(out))
    assert head == "lm"
    convert_from_orbax(str(out), str(tmp_path / "pt"), to="pytorch")
    _transformers_logits_match(FlaxBartForConditionalGeneration(config, _do_init=False), params,
                               str(tmp_path / "pt"))
