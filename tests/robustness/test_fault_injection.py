"""Fault injection: an OSError at every single write / fsync / rename / replace / copy / mkdir /
unlink / rmdir of a small conversion (each numbered point in turn, see `fault_points.py`) leaves the
target absent, as it was, or complete and bit-exact, never partial, and the source untouched; a
conversion killed with SIGKILL leaves no directory that `from_pretrained` accepts, other than a
complete and correct target."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convert import ConversionError, convert_checkpoint, flax_to_pt, load_flax_params, save_flax_params
from flax_bart.config import BartConfig, ConfigError

from fault_points import Faults
from tests.convert.convert_helpers import (
    assert_bits_equal, flat, random_flax_params, read_pt_checkpoint, tree_hash, write_flax_msgpack, write_pt_checkpoint,
)

MICRO = BartConfig.from_dict(dict(
    vocab_size=16, d_model=8, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=8, decoder_ffn_dim=8,
    encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=8, id2label={0: "a", 1: "b"},
))
ROOT = Path(__file__).resolve().parents[2]

# (name, source framework, convert keywords, whether the target exists already)
SCENARIOS = [
    ("pt_to_flax_msgpack_sharded", "pt", dict(to="flax", max_shard_size="1KB"), False),
    ("pt_to_flax_msgpack_overwrite", "pt", dict(to="flax", max_shard_size="1KB", overwrite=True), True),
    ("flax_to_pt_bin", "flax", dict(to="pytorch", format="bin"), False),
    ("flax_to_pt_safetensors_sharded", "flax", dict(to="pytorch", format="safetensors", max_shard_size="1KB"), False),
]
POINTS: dict[str, int] = {}  # scenario -> fault points enumerated (read by the figures test)


def _source(root: Path, framework: str, params: dict) -> Path:
    src = root / "src"
    if framework == "pt":
        write_pt_checkpoint(src, flax_to_pt(params, MICRO, "lm", tied="drop"))
    else:
        write_flax_msgpack(src, params)
    (src / "config.json").write_text(MICRO.to_json_string())
    return src


def _weights(directory: Path, framework: str) -> dict:
    """The target's tensors, read back (raises ConversionError if it is not a loadable checkpoint)."""
    if framework == "flax":
        params, _ = load_flax_params(str(directory), MICRO, "lm")
        return flat(params)
    load_flax_params(str(directory), MICRO, "lm")  # loadable through the converter too
    return read_pt_checkpoint(directory)


def _leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n not in keep)


@pytest.mark.parametrize("name,framework,kwargs,existing", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_a_fault_at_every_point_leaves_no_partial_target(tmp_path, name, framework, kwargs, existing):
    params = random_flax_params(MICRO, "lm", np.float32, seed=1)
    src = _source(tmp_path, framework, params)
    src_hash = tree_hash(src)
    target_framework = "flax" if kwargs["to"] == "flax" else "pt"
    # the expected result, from a run without faults
    convert_checkpoint(str(src), str(tmp_path / "clean"), **{k: v for k, v in kwargs.items() if k != "overwrite"})
    want = _weights(tmp_path / "clean", target_framework)
    dst = tmp_path / "dst"
    template = tmp_path / "old"
    if existing:  # an older checkpoint at the target, which --overwrite replaces
        old_src = _source(tmp_path / "oldsrc", framework, random_flax_params(MICRO, "lm", np.float32, seed=2))
        convert_checkpoint(str(old_src), str(template), **{k: v for k, v in kwargs.items() if k != "overwrite"})
        shutil.rmtree(tmp_path / "oldsrc")

    def reset():
        if dst.exists():
            shutil.rmtree(dst)
        if existing:
            shutil.copytree(template, dst)

    reset()
    with Faults() as counting:
        convert_checkpoint(str(src), str(dst), **kwargs)
    total = counting.count
    assert total > 50, counting.kinds
    POINTS[name] = total
    old_hash = None
    failures, succeeded = [], 0
    for n in range(total):
        reset()
        old_hash = tree_hash(dst) if existing else None
        with Faults(fail_at=n) as faults:
            try:
                convert_checkpoint(str(src), str(dst), **kwargs)
                raised = None
            except (OSError, ConversionError) as e:
                raised = e
        where = f"fault #{n} at {faults.failed}"
        if raised is not None and "injected fault" not in str(raised):
            failures.append(f"{where}: unexpected error {raised!r}")
        if tree_hash(src) != src_hash:
            failures.append(f"{where}: the source changed")
        if dst.exists():
            if existing and tree_hash(dst) == old_hash:
                if raised is None:
                    failures.append(f"{where}: reported success but the target is still the old one")
            elif raised is not None:
                failures.append(f"{where}: reported failure ({raised}) but the target was replaced")
            else:
                try:
                    got = _weights(dst, target_framework)
                    assert_bits_equal(got, want)
                    assert (dst / "conversion_summary.json").is_file() and (dst / "config.json").is_file()
                except (AssertionError, ConversionError) as e:
                    failures.append(f"{where}: the target is partial or wrong: {e}")
        elif raised is None:
            failures.append(f"{where}: reported success but the target is absent")
        succeeded += raised is None
        for left in _leftovers(tmp_path, {"src", "dst", "clean", "old"}):
            # a cleanup step that itself failed may leave a staging directory: never loadable
            if not left.endswith(".partial"):
                failures.append(f"{where}: left {left} beside the target")
                continue
            with pytest.raises(ConversionError, match="staging directory of an unfinished"):
                load_flax_params(str(tmp_path / left), MICRO, "lm")
            shutil.rmtree(tmp_path / left)
    assert not failures, "\n".join(failures[:20])
    assert succeeded < total  # the faults did fail conversions


def test_an_interrupted_save_into_an_existing_checkpoint_never_mixes_old_and_new(tmp_path):
    """save_flax_params / save_pretrained merge into an existing directory: with the same shard
    names, a fault midway must not leave old and new shards behind one index."""
    old, new = (random_flax_params(MICRO, "lm", np.float32, seed=s) for s in (3, 4))
    d = tmp_path / "ckpt"
    (tmp_path / "ckpt").mkdir()

    def reset():
        shutil.rmtree(d)
        d.mkdir()
        (d / "config.json").write_text(MICRO.to_json_string())
        save_flax_params(old, d, max_shard_size="1KB")

    reset()
    with Faults() as counting:
        save_flax_params(new, d, max_shard_size="1KB")
    total = counting.count
    POINTS["save_flax_params_merge"] = total
    failures = []
    for n in range(total):
        reset()
        with Faults(fail_at=n) as faults:
            try:
                save_flax_params(new, d, max_shard_size="1KB")
                raised = None
            except OSError as e:
                raised = e
        where = f"fault #{n} at {faults.failed}"
        try:
            got, _ = load_flax_params(str(d), MICRO, "lm")
        except ConversionError:
            got = None  # refused: no checkpoint (never a wrong one)
        if got is None:
            if raised is None:
                failures.append(f"{where}: reported success but the directory holds no loadable checkpoint")
        elif _bits_equal(flat(got), flat(new)):
            if raised is not None:
                failures.append(f"{where}: reported failure ({raised}) but the new weights were saved")
        elif not _bits_equal(flat(got), flat(old)):
            failures.append(f"{where}: the directory loads a mix of old and new weights")
        elif raised is None:
            failures.append(f"{where}: reported success but the directory still holds the old weights")
        for left in os.listdir(tmp_path):
            if left != "ckpt":
                shutil.rmtree(tmp_path / left)
    assert not failures, "\n".join(failures[:20])


def _bits_equal(a: dict, b: dict) -> bool:
    try:
        assert_bits_equal(a, b)
        return True
    except AssertionError:
        return False


def test_injected_write_failure_through_the_cli_exits_2(tmp_path, capsys):
    from flax_bart.cli import main

    src = _source(tmp_path, "pt", random_flax_params(MICRO, "lm", np.float32, seed=1))
    argv = ["convert", str(src), str(tmp_path / "dst"), "--to", "flax", "--max-shard-size", "1KB", "--quiet"]
    with Faults() as counting:
        assert main(argv) == 0
    shutil.rmtree(tmp_path / "dst")
    log = counting.log
    writes = [i for i, kind in enumerate(log) if kind == "write"]
    for n in (writes[0], writes[len(writes) // 2], log.index("fsync"), log.index("rename")):
        with Faults(fail_at=n):
            code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "injected fault" in err and "Traceback" not in err
        assert not (tmp_path / "dst").exists()


# ---- SIGKILL ----------------------------------------------------------------------------------------
MEDIUM = BartConfig.from_dict(dict(
    vocab_size=4096, d_model=256, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
    encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=64,
))


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory):
    """A 19 MB safetensors checkpoint (4.8M parameters) and its expected Flax params."""
    root = tmp_path_factory.mktemp("medium")
    params = random_flax_params(MEDIUM, "lm", np.float32, seed=5)
    write_pt_checkpoint(root / "src", flax_to_pt(params, MEDIUM, "lm", tied="drop"))
    (root / "src" / "config.json").write_text(MEDIUM.to_json_string())
    return root / "src", flat(params)


def _staging(parent: Path) -> Path | None:
    found = [p for p in parent.iterdir() if p.name.startswith(".dst.") and p.name.endswith(".partial")]
    return found[0] if found else None


# when to kill: (description, predicate on (staging directory or None, target))
KILL_POINTS = [
    ("staging created", lambda s, dst: s is not None),
    ("first shard being written", lambda s, dst: s is not None and len(os.listdir(s)) >= 1),
    ("all shards written, not yet renamed", lambda s, dst: s is not None
     and "flax_model.msgpack.index.json" in os.listdir(s)),
    ("renamed into place", lambda s, dst: dst.exists()),
]


@pytest.mark.parametrize("point", [k[0] for k in KILL_POINTS])
def test_sigkill_mid_conversion_leaves_nothing_loadable(tmp_path, medium_checkpoint, point):
    from flax_bart.hub import CheckpointNotFoundError
    from flax_bart.models import FlaxBartForConditionalGeneration

    src, want = medium_checkpoint
    src_hash = tree_hash(src)
    ready = dict(KILL_POINTS)[point]
    work = tmp_path / "work"
    work.mkdir()
    dst = work / "dst"
    proc = subprocess.Popen(
        [sys.executable, "-m", "convert", str(src), str(dst), "--to", "flax", "--max-shard-size", "4MB", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if ready(_staging(work), dst):
                    break
            except FileNotFoundError:  # renamed into place meanwhile
                pass
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tree_hash(src) == src_hash
    for entry in sorted(work.iterdir()):
        if entry == dst:  # only a complete, correct target may be loadable
            got, _ = load_flax_params(str(dst), MEDIUM, "lm")
            assert_bits_equal(flat(got), want)
            continue
        # a clean, named refusal; ConfigError when the kill caught config.json half written (seen in CI)
        with pytest.raises((ConversionError, CheckpointNotFoundError, ConfigError)):
            FlaxBartForConditionalGeneration.from_pretrained(str(entry))
