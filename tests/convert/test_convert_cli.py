"""`flax-bart convert` / `python -m convert`: exit codes, messages, options, hub ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from convert import cli, load_flax_params
from convert.rules import expected_pt_shapes

from convert_helpers import DTYPES, random_flax_params, read_pt_checkpoint, tiny_config, write_config, write_flax_msgpack

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture
def flax_dir(tmp_path):
    config = tiny_config()
    src = tmp_path / "src"
    write_flax_msgpack(src, random_flax_params(config, "lm", seed=5))
    write_config(src, config)
    (src / "generation_config.json").write_text('{"num_beams": 4}\n')
    return src


def test_success_prints_a_summary_and_side_files_travel(flax_dir, tmp_path, capsys):
    dst = tmp_path / "pt"
    assert cli.main([str(flax_dir), str(dst), "--to", "pytorch"]) == 0
    out = capsys.readouterr().out
    assert "66 tensors flax/msgpack (lm) -> pt/safetensors (lm)" in out and "conversion_summary.json" in out
    assert sorted(os.listdir(dst)) == ["config.json", "conversion_summary.json", "generation_config.json", "model.safetensors"]
    assert (dst / "config.json").read_bytes() == (flax_dir / "config.json").read_bytes()
    summary = json.loads((dst / "conversion_summary.json").read_text())
    assert summary["rules"] == {"embedding": 3, "layernorm_bias": 9, "layernorm_weight": 9, "linear_bias": 22,
                                "linear_weight": 22, "verbatim": 1}
    assert summary["source"]["format"] == "msgpack" and summary["target"]["files"] == ["model.safetensors"]
    assert cli.main([str(flax_dir), str(tmp_path / "q"), "--to", "pytorch", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_dtype_cast_head_change_and_format(flax_dir, tmp_path):
    dst = tmp_path / "bf16"
    assert cli.main([str(flax_dir), str(dst), "--to", "pytorch", "--format", "bin", "--dtype", "bfloat16",
                     "--head", "base", "--quiet"]) == 0
    state = read_pt_checkpoint(dst)
    assert set(state) == set(expected_pt_shapes(tiny_config(), "base"))
    assert all(v.dtype == DTYPES["bfloat16"] for v in state.values())
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    summary = json.loads((dst / "conversion_summary.json").read_text())
    assert summary["casts"] == {"float32->bfloat16": 65} and summary["unused"] == ["final_logits_bias"]


def test_allow_missing_head(flax_dir, tmp_path, capsys):
    assert cli.main([str(flax_dir), str(tmp_path / "qa"), "--to", "flax", "--head", "qa", "--quiet"]) == 2
    assert "qa_outputs/kernel" in capsys.readouterr().err
    assert cli.main([str(flax_dir), str(tmp_path / "qa"), "--to", "flax", "--head", "qa", "--quiet",
                     "--allow-missing-head"]) == 0
    params, summary = load_flax_params(tmp_path / "qa", None, "qa", allow_missing=["qa_outputs"])
    assert summary.missing == ["qa_outputs/kernel", "qa_outputs/bias"]


@pytest.mark.parametrize("argv,match", [
    (["--to", "onnx"], "invalid choice: 'onnx'"),
    (["--to", "flax", "--format", "bin"], "--format 'bin' cannot hold a flax checkpoint"),
    (["--to", "flax", "--dtype", "int4"], "dtype 'int4' is not supported"),
    (["--to", "flax", "--max-shard-size", "lots"], "max_shard_size 'lots'"),
])
def test_bad_arguments_exit_2(flax_dir, tmp_path, capsys, argv, match):
    assert cli.main([str(flax_dir), str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_internal_error_exit_3_and_debug_traceback(flax_dir, tmp_path, monkeypatch, capsys):
    import convert.api

    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setattr(convert.api, "convert_checkpoint", boom)
    assert cli.main([str(flax_dir), str(tmp_path / "x"), "--to", "pytorch"]) == 3
    err = capsys.readouterr().err
    assert "internal error (RuntimeError: bug)" in err and "Traceback" not in err
    assert cli.main([str(flax_dir), str(tmp_path / "x"), "--to", "pytorch", "--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("to", ["pytorch", "orbax"])
def test_an_interrupt_some_callback_swallowed_still_publishes_nothing(flax_dir, tmp_path, monkeypatch, capsys, to):
    """Ctrl-C landing in a garbage-collection callback (JAX installs one) is printed by Python and dropped:
    the conversion must still end with exit 130 and no DST, not carry on to publish it."""
    import signal

    import convert.engine

    monkeypatch.setattr(convert.engine, "run", _swallowing(convert.engine.run))
    if to == "orbax":
        import flax_bart.shard_loading as shard_loading

        monkeypatch.setattr(shard_loading, "load_into_shards", _swallowing(shard_loading.load_into_shards))
    assert cli.main([str(flax_dir), str(tmp_path / "out"), "--to", to, "--quiet"]) == 130
    assert "interrupted; nothing was written to DST" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the CLI's handler is gone again
    monkeypatch.undo()
    assert cli.main([str(flax_dir), str(tmp_path / "out"), "--to", to, "--quiet"]) == 0   # nothing left over


def test_an_ignored_sigint_stays_ignored(flax_dir, tmp_path, monkeypatch):
    """A convert started with SIGINT ignored (`flax-bart convert a b &` from a script) is not stopped by one."""
    import signal

    import convert.engine

    monkeypatch.setattr(convert.engine, "run", _swallowing(convert.engine.run))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli.main([str(flax_dir), str(tmp_path / "out"), "--to", "pytorch", "--quiet"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_an_interrupt_after_the_output_is_published_says_it_is_complete(flax_dir, tmp_path, monkeypatch, capsys):
    from convert.staging import StagedOutput

    commit = StagedOutput.commit

    def commit_then_interrupt(self, *a, **k):
        commit(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(StagedOutput, "commit", commit_then_interrupt)
    assert cli.main([str(flax_dir), str(tmp_path / "out"), "--to", "pytorch", "--quiet"]) == 130
    assert f"interrupted after {tmp_path / 'out'} was written in full" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _swallowing(step):
    """`step` after a Ctrl-C whose KeyboardInterrupt is dropped, as Python drops one raised inside a gc
    callback."""
    import signal

    def interrupted_in_a_callback(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0)   # let the handler run here
        except KeyboardInterrupt:
            pass
        return step(*a, **k)
    return interrupted_in_a_callback


def test_missing_source_exit_2(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope"), str(tmp_path / "x"), "--to", "flax"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_single_weights_file_as_source(flax_dir, tmp_path):
    assert cli.main([str(flax_dir / "flax_model.msgpack"), str(tmp_path / "pt"), "--to", "pytorch", "--quiet"]) == 0
    assert "model.shared.weight" in read_pt_checkpoint(tmp_path / "pt")


def test_hub_id_from_the_offline_cache(flax_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-bart"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in os.listdir(flax_dir):
        (snap / name).write_bytes((flax_dir / name).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["someone/tiny-bart", str(tmp_path / "pt"), "--to", "pytorch", "--cache-dir", str(cache), "--quiet"]) == 0
    assert set(read_pt_checkpoint(tmp_path / "pt")) == set(expected_pt_shapes(tiny_config(), "lm", tied="drop"))
    assert cli.main(["someone/other", str(tmp_path / "o"), "--to", "pytorch", "--cache-dir", str(cache), "--quiet"]) == 2


def test_python_dash_m_convert(flax_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convert", str(flax_dir), str(tmp_path / "pt"), "--to", "pytorch",
                           "--max-shard-size", "4KB"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "pt" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected_pt_shapes(tiny_config(), "lm", tied="drop"))
    proc = subprocess.run([sys.executable, "-m", "convert", str(flax_dir), str(tmp_path / "pt"), "--to", "pytorch"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
