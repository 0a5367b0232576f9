"""Hostile and broken checkpoints: each gives a clear error, leaves the input untouched and writes
no output."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from convert import ConversionError, flax_to_pt, load_flax_params
from convert.cli import main
from convert.writers import CheckpointWriter

from convert_helpers import (
    random_flax_params, siblings, tiny_config, tree_hash, write_config, write_flax_msgpack, write_pt_checkpoint,
)

torch = pytest.importorskip("torch")


@pytest.fixture
def pt_dir(tmp_path):
    """A valid v5-style model.safetensors checkpoint (lm head) with its config."""
    config = tiny_config()
    src = tmp_path / "src"
    write_pt_checkpoint(src, flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="drop"))
    write_config(src, config)
    return src


def _fails_cleanly(src, tmp_path, match, capsys=None, extra=()):
    """Loader and CLI both refuse `src` with `match`; input untouched; no output, no leftovers."""
    before = tree_hash(src) if os.path.isdir(src) else None
    with pytest.raises(ConversionError, match=match):
        load_flax_params(src, None, "lm")  # the config.json beside the weights
    dst = tmp_path / "out"
    code = main([str(src), str(dst), "--to", "flax", "--quiet", *extra])
    assert code == 2
    assert not dst.exists() and not [n for n in siblings(dst) if n.startswith(".out.")]
    if before is not None:
        assert tree_hash(src) == before
    if capsys is not None:
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err
        return err


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_truncated_safetensors(pt_dir, tmp_path, capsys):
    path = pt_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _fails_cleanly(pt_dir, tmp_path, r"model.safetensors: tensor .* ends at data byte \d+ but the file holds only \d+ data bytes: truncated", capsys)
    assert "model.safetensors" in err
    path.write_bytes(data[:5])
    _fails_cleanly(pt_dir, tmp_path, "truncated safetensors file: 5 bytes")


def test_header_pointing_past_the_end(pt_dir, tmp_path):
    path = pt_dir / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    _fails_cleanly(pt_dir, tmp_path, r"header of 10000 bytes points past the end of the file \(16 bytes\)")
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _fails_cleanly(pt_dir, tmp_path, "exceeds the .* limit")


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap in the data section"),
    ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype 'F33'"),
    ({"a": {"dtype": "F32", "shape": [10**12, 10**12], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 4000000000000000000000000"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative integers"),
    (["not", "an", "object"], b"", "must be a JSON object"),
    ({"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, r"unknown dtype \['F32'\]"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},   # an empty tensor between two that overlap
      "m": {"dtype": "F32", "shape": [0], "data_offsets": [2, 2]},
      "z": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "'a' \\[0, 8\\) and 'z' \\[4, 12\\) overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12, r"data bytes \[4, 8\) belong to no tensor"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12, "the last 8 data bytes belong to no tensor"),
])
def test_corrupted_safetensors_headers(tmp_path, header, data, match):
    src = tmp_path / "src"
    write_config(src, tiny_config())
    (src / "model.safetensors").write_bytes(_safetensors_bytes(header, data))
    _fails_cleanly(src, tmp_path, match)


def test_duplicate_keys_in_a_header_or_an_index(tmp_path):
    """Python's json keeps the last of two equal keys: a second entry could hide the first tensor."""
    src = tmp_path / "src"
    write_config(src, tiny_config())
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    header = ('{"a": %s, "a": %s}' % (entry, entry)).encode()
    (src / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    _fails_cleanly(src, tmp_path, "safetensors header holds the key 'a' twice")


def test_non_json_header(tmp_path):
    src = tmp_path / "src"
    write_config(src, tiny_config())
    (src / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    _fails_cleanly(src, tmp_path, "header is not valid UTF-8 JSON")


def _sharded(tmp_path):
    config = tiny_config()
    src = tmp_path / "src"
    write_pt_checkpoint(src, flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="drop"), shards=2)
    write_config(src, config)
    return src, json.loads((src / "model.safetensors.index.json").read_text())


def test_index_with_a_duplicate_key_or_a_nul_in_a_shard_name(tmp_path, capsys):
    src, index = _sharded(tmp_path)
    path = src / "model.safetensors.index.json"
    text = path.read_text()
    key, shard = next(iter(index["weight_map"].items()))
    path.write_text(text.replace('"weight_map": {', '"weight_map": {"%s": "%s", ' % (key, shard), 1))
    _fails_cleanly(src, tmp_path, f"index holds the key '{key}' twice", capsys)
    index["weight_map"][key] = "a\0b"
    path.write_text(json.dumps(index))
    _fails_cleanly(src, tmp_path, r"shard path 'a\\x00b' contains a NUL byte", capsys)


def test_index_naming_a_missing_shard(tmp_path, capsys):
    src, _ = _sharded(tmp_path)
    os.remove(src / "model-00002-of-00002.safetensors")
    _fails_cleanly(src, tmp_path, r"shard 'model-00002-of-00002.safetensors' named in the index is missing", capsys)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", "link.safetensors"])
def test_shard_paths_escaping_the_checkpoint(tmp_path, shard):
    src, index = _sharded(tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((src / "model-00001-of-00002.safetensors").read_bytes())
    os.symlink(tmp_path / "outside.safetensors", src / "link.safetensors")
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails_cleanly(src, tmp_path, "escapes the checkpoint directory|outside the checkpoint directory")


def test_index_and_shards_that_disagree(tmp_path):
    src, index = _sharded(tmp_path)
    index["weight_map"]["model.encoder.layers.9.fc1.weight"] = "model-00001-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails_cleanly(src, tmp_path, r"'model.encoder.layers.9.fc1.weight' is listed in the index but in no shard")
    (src / "model.safetensors.index.json").write_text("{not json")
    _fails_cleanly(src, tmp_path, "index is not valid UTF-8 JSON")


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # would create the marker file when unpickled
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, zipped, capsys):
    marker = tmp_path / "PWNED"
    src = tmp_path / "src"
    write_config(src, tiny_config())
    torch.save({"model.shared.weight": torch.zeros(64, 16), "x": _Evil(marker)}, src / "pytorch_model.bin",
               _use_new_zipfile_serialization=zipped)
    err = _fails_cleanly(src, tmp_path, "refused to unpickle|not a PyTorch zip checkpoint", capsys)
    assert "pytorch_model.bin" in err
    assert not marker.exists()


@pytest.mark.parametrize("obj,match", [
    ([torch.zeros(2)], "must hold a state dict .* got list"),
    ({"model.shared.weight": torch.zeros(64, 16), "step": 3}, "entry 'step' is int, expected a tensor"),
    ({"model.shared.weight": torch.zeros(64, 16), 3: torch.zeros(2)}, "key 3 is int, expected a str"),
])
def test_bin_that_is_not_a_state_dict(tmp_path, obj, match):
    src = tmp_path / "src"
    write_config(src, tiny_config())
    torch.save(obj, src / "pytorch_model.bin")
    _fails_cleanly(src, tmp_path, match)


def test_bin_with_a_truncated_data_record(tmp_path, capsys):
    """A data record shorter than the storage its pickle declares: memory-mapped loading would read
    the next records' bytes as weights, so the archive is refused, naming the record."""
    import zipfile

    config = tiny_config()
    state = flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="drop")
    src = tmp_path / "src"
    write_pt_checkpoint(src, state, "bin")
    write_config(src, config)
    path = src / "pytorch_model.bin"
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    want = np.ascontiguousarray(state["model.encoder.layers.0.fc1.weight"]).tobytes()
    record = next(n for n, b in members.items() if b == want)
    members[record] = members[record][:64]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    err = _fails_cleanly(src, tmp_path, f"data record '{record}' holds 64 bytes, but the pickle declares a "
                                        f"torch.FloatStorage of {len(want)} bytes", capsys)
    assert "UserWarning" not in err


def test_shapes_contradicting_config(pt_dir, tmp_path, capsys):
    write_config(pt_dir, tiny_config(d_model=32, encoder_attention_heads=2, decoder_attention_heads=4))
    err = _fails_cleanly(pt_dir, tmp_path, r"model.shared.weight: shape \[64, 16\], but config.json implies \[64, 32\]", capsys)
    assert "problems" in err


def test_tied_copies_that_differ_in_a_bin(tmp_path, capsys):
    config = tiny_config()
    state = flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="all")
    state["lm_head.weight"] = state["lm_head.weight"] + np.float32(1e-3)
    src = tmp_path / "src"
    write_pt_checkpoint(src, state, "bin")
    write_config(src, config)
    err = _fails_cleanly(src, tmp_path, "tied copies differ: lm_head.weight is not equal to model.shared.weight", capsys)
    assert "1024 of 1024 values differ" in err


def test_nan_and_inf_are_counted_in_the_summary(tmp_path):
    config = tiny_config()
    state = flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="drop")
    state["final_logits_bias"][0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    src = tmp_path / "src"
    write_pt_checkpoint(src, state)
    write_config(src, config)
    assert main([str(src), str(tmp_path / "out"), "--to", "flax", "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "conversion_summary.json").read_text())
    assert summary["nonfinite"] == {"final_logits_bias": {"nan": 2, "inf": 2}}
    assert (summary["nan_total"], summary["inf_total"]) == (2, 2)
    params, _ = load_flax_params(tmp_path / "out", config, "lm")
    assert params["final_logits_bias"].tobytes() == state["final_logits_bias"].tobytes()


@pytest.mark.parametrize("fail_at", [0, 40, 65])  # the tiny lm has 66 tensors
@pytest.mark.parametrize("existing", [False, True])
def test_write_failure_halfway_leaves_no_partial_output(pt_dir, tmp_path, monkeypatch, capsys, fail_at, existing):
    dst = tmp_path / "out"
    if existing:
        assert main([str(pt_dir), str(dst), "--to", "flax", "--quiet"]) == 0
        old = tree_hash(dst)
    before = tree_hash(pt_dir)
    real_write = CheckpointWriter.write
    calls = {"n": 0}

    def failing_write(self, key, arr):
        if calls["n"] == fail_at:
            raise OSError(28, "No space left on device")
        calls["n"] += 1
        return real_write(self, key, arr)

    monkeypatch.setattr(CheckpointWriter, "write", failing_write)
    code = main([str(pt_dir), str(dst), "--to", "flax", "--max-shard-size", "5KB", "--quiet",
                 *(["--overwrite"] if existing else [])])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert tree_hash(pt_dir) == before
    assert [n for n in siblings(dst) if n.startswith(".out.")] == []
    if existing:
        assert tree_hash(dst) == old  # the previous output is intact
    else:
        assert not dst.exists()


def test_an_empty_dst_or_the_working_directory_is_never_replaced(pt_dir, tmp_path, capsys, monkeypatch):
    """`convert SRC "$OUT" --overwrite` with OUT unset once replaced the working directory's files."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("x")
    (work / "config.json").write_text("{}")   # even where it looks like an earlier output
    monkeypatch.chdir(work)
    for dst in ("", " ", ".", str(work.parent)):
        assert main([str(pt_dir), dst, "--to", "flax", "--quiet", "--overwrite"]) == 2, dst
        err = capsys.readouterr().err
        assert ("the output path is empty" in err if not dst.strip() else
                "is the working directory or holds it" in err or "is the source directory" in err), err
        assert "Traceback" not in err
    assert sorted(os.listdir(work)) == ["config.json", "precious.txt"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_existing_output_needs_overwrite_and_source_cannot_be_output(pt_dir, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    assert main([str(pt_dir), str(dst), "--to", "flax", "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (dst / "keep.txt").exists()
    # a directory of other files is not an earlier output: --overwrite does not delete it
    assert main([str(pt_dir), str(dst), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert "is not an earlier checkpoint output (config.json and checkpoint files only; it holds ['keep.txt'])" \
        in capsys.readouterr().err
    (dst / "config.json").write_text("{}")   # config.json beside other files: still not an earlier output
    assert main([str(pt_dir), str(dst), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert "it holds ['keep.txt']" in capsys.readouterr().err and (dst / "keep.txt").read_text() == "x"
    (dst / "keep.txt").unlink()
    (dst / "flax_model.msgpack").write_bytes(b"old")   # an earlier output: config.json and weights
    assert main([str(pt_dir), str(dst), "--to", "flax", "--quiet", "--overwrite"]) == 0
    assert (dst / "flax_model.msgpack").read_bytes() != b"old" and (dst / "conversion_summary.json").exists()
    assert main([str(pt_dir), str(dst), "--to", "pytorch", "--quiet", "--overwrite"]) == 0   # its own output
    # a file, a symlinked config.json: not earlier outputs either
    (tmp_path / "notes.txt").write_text("n")
    for target in (tmp_path / "notes.txt", str(tmp_path / "notes.txt") + "/"):
        assert main([str(pt_dir), str(target), "--to", "flax", "--quiet", "--overwrite"]) == 2
        assert "exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "n"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").symlink_to(tmp_path / "notes.txt")
    assert main([str(pt_dir), str(linked), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert (tmp_path / "notes.txt").read_text() == "n" and (linked / "config.json").is_symlink()
    before = tree_hash(pt_dir)
    assert main([str(pt_dir), str(pt_dir), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert main([str(pt_dir / "model.safetensors"), str(tmp_path), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert "is an input of the conversion or contains one" in capsys.readouterr().err
    assert tree_hash(pt_dir) == before


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "new_folder"])
def test_output_inside_the_source_is_refused(pt_dir, tmp_path, capsys, name):
    """With --overwrite, a DST naming one of the checkpoint's own files would replace it by the output;
    nothing is written into a checkpoint being read, not even a new folder."""
    (pt_dir / "generation_config.json").write_text("{}")
    before = tree_hash(pt_dir)
    assert main([str(pt_dir), str(pt_dir / name), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert "inside it" in capsys.readouterr().err
    assert tree_hash(pt_dir) == before


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_output_over_an_input_of_a_file_source_is_refused(pt_dir, tmp_path, capsys, name):
    """A source given as its weights file also reads the config and side files beside it."""
    (pt_dir / "generation_config.json").write_text("{}")
    before = tree_hash(pt_dir)
    assert main([str(pt_dir / "model.safetensors"), str(pt_dir / name), "--to", "flax", "--quiet", "--overwrite"]) == 2
    assert f"is an input of the conversion or contains one ({pt_dir / name})" in capsys.readouterr().err
    assert tree_hash(pt_dir) == before
    assert main([str(pt_dir / "model.safetensors"), str(pt_dir / "out"), "--to", "flax", "--quiet"]) == 0


def test_explicit_config_cannot_be_output(pt_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text((pt_dir / "config.json").read_text())
    assert main([str(pt_dir), str(cfg.parent), "--to", "flax", "--quiet", "--overwrite", "--config", str(cfg)]) == 2
    assert "is an input of the conversion or contains one" in capsys.readouterr().err
    assert cfg.is_file()


def test_config_that_is_not_a_file_is_named(pt_dir, tmp_path):
    (pt_dir / "config.json").unlink()
    (pt_dir / "config.json").mkdir()
    with pytest.raises(ConversionError, match="config.json: config is not a regular file"):
        load_flax_params(pt_dir, None, "lm")


def test_truncated_and_garbage_msgpack(tmp_path):
    config = tiny_config()
    src = tmp_path / "src"
    write_flax_msgpack(src, random_flax_params(config, "lm"))
    write_config(src, config)
    data = (src / "flax_model.msgpack").read_bytes()
    (src / "flax_model.msgpack").write_bytes(data[:-100])
    with pytest.raises(ConversionError, match="flax_model.msgpack: not a valid flax msgpack checkpoint: .*(truncated|past the end)"):
        load_flax_params(src, config, "lm")
    (src / "flax_model.msgpack").write_bytes(b"\x81\xa1a\xc7\x05\x02hello")
    with pytest.raises(ConversionError, match="unsupported msgpack extension type 2"):
        load_flax_params(src, config, "lm")
    import msgpack

    payload = b"\x93" + msgpack.packb([2]) + msgpack.packb("O") + msgpack.packb(b"ab", use_bin_type=True)
    (src / "flax_model.msgpack").write_bytes(msgpack.packb({"a": msgpack.ExtType(1, payload)}))
    with pytest.raises(ConversionError, match="array dtype 'O' is not one of"):
        load_flax_params(src, config, "lm")


def test_missing_config_and_missing_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no checkpoint weights found"):
        load_flax_params(tmp_path / "empty", None, "lm")
    config = tiny_config()
    write_flax_msgpack(tmp_path / "noconf", random_flax_params(config, "lm"))
    with pytest.raises(ConversionError, match="no config.json at"):
        load_flax_params(tmp_path / "noconf", None, "lm")


def test_ctrl_c_inside_torch_save_is_an_interrupt_not_a_write_error(tmp_path, monkeypatch):
    """torch's zip writer turns an interrupt during writing into a RuntimeError on close: it stays an
    interrupt (exit 130), while a real disk error under it stays an OSError (exit 2)."""
    import numpy as np
    import torch

    from convert.torch_io import save_state_dict

    def interrupted(*a, **k):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict({"w": np.zeros(2, np.float32)}, str(tmp_path / "w.bin"))

    def disk_full(*a, **k):
        try:
            raise OSError(28, "No space left on device")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_state_dict({"w": np.zeros(2, np.float32)}, str(tmp_path / "w.bin"))
