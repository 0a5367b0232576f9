"""Hostile checkpoint layouts: sharded indexes with absolute / `..` / symlinked / special shard
paths, files leading out of the checkpoint directory, staging directories, hostile config.json files,
and weights that contradict themselves."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hostile import (
    CONFIG, CONVERT_ONLY, GIB, _DROP, case, config_dir, flax_dir, flax_params, pt_dir, pt_state, sparse_file,
    write_config,
)

# sharded indexes
def _sharded(root: Path, fmt: str = "safetensors") -> tuple[Path, Path, dict]:
    d = flax_dir(root, shards=2) if fmt == "msgpack" else pt_dir(root, fmt, shards=2)
    single = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin", "msgpack": "flax_model.msgpack"}[fmt]
    index_path = d / f"{single}.index.json"
    return d, index_path, json.loads(index_path.read_text())


def _point_first_key_at(root: Path, shard: str, fmt: str = "safetensors") -> Path:
    d, index_path, index = _sharded(root, fmt)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = shard
    index_path.write_text(json.dumps(index))
    return d


def _outside_copy(root: Path, name: str) -> Path:
    """A valid shard outside the checkpoint directory (what an escaping path would reach)."""
    target = root / name
    shutil.copy(root / "src" / sorted(p.name for p in (root / "src").iterdir() if "00001" in p.name)[0], target)
    return target


ESCAPES = r"escapes the checkpoint directory"
OUTSIDE = r"resolves to .*, outside the checkpoint directory"


@case("idx_absolute_path", "index", r"model\.safetensors\.index\.json: shard path '/etc/passwd' " + ESCAPES)
def _(root, marker):
    return _point_first_key_at(root, "/etc/passwd")


@case("idx_dotdot", "index", r"index\.json: shard path '\.\./outside\.safetensors' " + ESCAPES)
def _(root, marker):
    d = _point_first_key_at(root, "../outside.safetensors")
    _outside_copy(root, "outside.safetensors")
    return d


@case("idx_nested_dotdot", "index", r"index\.json: shard path 'sub/\.\./\.\./outside\.safetensors' " + ESCAPES)
def _(root, marker):
    d = _point_first_key_at(root, "sub/../../outside.safetensors")
    (d / "sub").mkdir()
    _outside_copy(root, "outside.safetensors")
    return d


@case("idx_backslash_dotdot", "index", r"index\.json: shard path '\.\.\\\\outside\.safetensors' " + ESCAPES)
def _(root, marker):
    return _point_first_key_at(root, "..\\outside.safetensors")


@case("idx_windows_drive", "index", r"index\.json: shard path 'C:\\\\Windows\\\\x\.safetensors' " + ESCAPES)
def _(root, marker):
    return _point_first_key_at(root, "C:\\Windows\\x.safetensors")


@case("idx_symlink_out", "index", r"index\.json: shard path 'link\.safetensors' " + OUTSIDE)
def _(root, marker):
    d = _point_first_key_at(root, "link.safetensors")
    os.symlink(_outside_copy(root, "outside.safetensors"), d / "link.safetensors")
    return d


@case("idx_symlinked_dir_out", "index", r"index\.json: shard path 'sub/model-00001-of-00002\.safetensors' " + OUTSIDE)
def _(root, marker):
    d = _point_first_key_at(root, "sub/model-00001-of-00002.safetensors")
    (root / "elsewhere").mkdir()
    shutil.copy(d / "model-00001-of-00002.safetensors", root / "elsewhere")
    os.symlink(root / "elsewhere", d / "sub")
    return d


@case("idx_missing_shard", "index", r"index\.json: shard 'model-00002-of-00002\.safetensors' named in the index is missing")
def _(root, marker):
    d, _, _ = _sharded(root)
    os.remove(d / "model-00002-of-00002.safetensors")
    return d


@case("idx_shard_is_a_directory", "index", r"index\.json: shard 'sub' named in the index is missing or not a file")
def _(root, marker):
    d = _point_first_key_at(root, "sub")
    (d / "sub").mkdir()
    return d


@case("idx_shard_is_a_fifo", "index", r"index\.json: shard 'pipe' named in the index is missing or not a file")
def _(root, marker):
    d = _point_first_key_at(root, "pipe")
    os.mkfifo(d / "pipe")  # reading it would block forever
    return d


@case("idx_empty_shard_name", "index", r"model\.safetensors\.index\.json: a shard file name in the index is empty")
def _(root, marker):
    return _point_first_key_at(root, "")


@case("idx_names_itself", "index", r"model\.safetensors\.index\.json: the index names itself as shard "
      r"'model\.safetensors\.index\.json'")
def _(root, marker):
    return _point_first_key_at(root, "model.safetensors.index.json")


@case("weights_file_is_a_directory", "paths", r"model\.safetensors is not a regular file \(a directory\?\)")
def _(root, marker):
    d = root / "src"
    write_config(d)
    (d / "model.safetensors").mkdir()
    return d


@case("idx_not_an_object", "index", r"index\.json: index must be an object with a 'weight_map'")
def _(root, marker):
    d, index_path, _ = _sharded(root)
    index_path.write_text("[1, 2]")
    return d


@case("idx_weight_map_values_not_strings", "index", r"index\.json: index must be an object with a 'weight_map'")
def _(root, marker):
    d, index_path, index = _sharded(root)
    index["weight_map"] = {k: 5 for k in index["weight_map"]}
    index_path.write_text(json.dumps(index))
    return d


@case("idx_not_utf8", "index", r"index\.json: index is not valid UTF-8 JSON \(not UTF-8")
def _(root, marker):
    d, index_path, _ = _sharded(root)
    index_path.write_bytes(b'{"weight_map": {"\xff": "x"}}')
    return d


@case("idx_deep_nesting", "index", r"index\.json: index nests JSON deeper than 64 levels")
def _(root, marker):
    d, index_path, _ = _sharded(root)
    index_path.write_bytes(b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    return d


@case("idx_empty_weight_map", "index", r"index\.json: the index names no shards")
def _(root, marker):
    d, index_path, _ = _sharded(root)
    index_path.write_text('{"weight_map": {}}')
    return d


@case("idx_huge_file", "index", r"index\.json: index is 1073741824 bytes, more than the 16777216-byte limit", bounded=True)
def _(root, marker):
    d, index_path, _ = _sharded(root)
    sparse_file(index_path, GIB, b'{"weight_map": {')
    return d


@case("idx_msgpack_dotdot", "index", r"flax_model\.msgpack\.index\.json: shard path '\.\./x\.msgpack' " + ESCAPES,
      to="pytorch")
def _(root, marker):
    return _point_first_key_at(root, "../x.msgpack", "msgpack")


@case("idx_bin_absolute_path", "index", r"pytorch_model\.bin\.index\.json: shard path '/etc/passwd' " + ESCAPES)
def _(root, marker):
    return _point_first_key_at(root, "/etc/passwd", "bin")


# files leading out of the checkpoint directory; staging directories
@case("weights_symlink_out", "paths", r"weights file 'model\.safetensors' " + OUTSIDE)
def _(root, marker):
    d = pt_dir(root)
    shutil.move(d / "model.safetensors", root / "outside.safetensors")
    os.symlink(root / "outside.safetensors", d / "model.safetensors")
    return d


@case("weights_symlink_dev_zero", "paths", r"weights file 'model\.safetensors' resolves to /dev/zero, outside")
def _(root, marker):
    d = root / "src"
    write_config(d)
    os.symlink("/dev/zero", d / "model.safetensors")
    return d


@case("side_file_symlink_secret", "paths", r"side file 'vocab\.json' " + OUTSIDE, entries=CONVERT_ONLY)
def _(root, marker):
    d = pt_dir(root)
    (root / "secret.txt").write_text("TOP-SECRET-TOKEN")
    os.symlink(root / "secret.txt", d / "vocab.json")
    return d


@case("config_symlink_out", "paths", r"config file 'config\.json' " + OUTSIDE, entries=CONVERT_ONLY)
def _(root, marker):
    d = pt_dir(root)
    shutil.move(d / "config.json", root / "other_config.json")
    os.symlink(root / "other_config.json", d / "config.json")
    return d


@case("staging_directory", "paths", r"is inside \.ckpt\.x1y2\.partial, the staging directory of an unfinished")
def _(root, marker):
    d = pt_dir(root)
    staged = root / ".ckpt.x1y2.partial"
    d.rename(staged)
    return staged


# config.json (valid weights beside it)
CFG = r"config\.json: "


@case("cfg_d_model_huge", "config", CFG + r"config describes a model of .* parameters, .* d_model=1000000000", bounded=True)
def _(root, marker):
    return config_dir(root, d_model=10**9)


@case("cfg_vocab_size_huge", "config", CFG + r"config field 'vocab_size'=1000000000000 is larger than", bounded=True)
def _(root, marker):
    return config_dir(root, vocab_size=10**12)


@case("cfg_max_positions_huge", "config", CFG + r"config field 'max_position_embeddings'=1099511627776 is larger than")
def _(root, marker):
    return config_dir(root, max_position_embeddings=2**40)


@case("cfg_layers_huge", "config", CFG + r"config field 'encoder_layers'=1000000000 is larger than", bounded=True)
def _(root, marker):
    return config_dir(root, encoder_layers=10**9)


@case("cfg_more_layers_than_weights", "config", r"config\.json has encoder_layers=40, but the checkpoint .* holds "
      r"encoder weights for layers 0\.\.1")
def _(root, marker):
    return config_dir(root, encoder_layers=40)


@case("cfg_num_labels_huge", "config", CFG + r"config field 'num_labels' must be an integer in \[1, 65536\], got 1000000000", bounded=True)
def _(root, marker):
    return config_dir(root, num_labels=10**9, id2label=_DROP, label2id=_DROP)


@case("cfg_num_labels_string", "config", CFG + r"config field 'num_labels' must be an integer .* got 'abc'")
def _(root, marker):
    return config_dir(root, num_labels="abc", id2label=_DROP, label2id=_DROP)


@case("cfg_id2label_huge", "config", CFG + r"config field 'id2label' has 70000 labels, more than 65536", bounded=True)
def _(root, marker):
    return config_dir(root, id2label={str(i): f"L{i}" for i in range(70000)}, label2id=_DROP)


@case("cfg_heads_zero", "config", CFG + r"config field 'encoder_attention_heads' must be a positive integer, got 0")
def _(root, marker):
    return config_dir(root, encoder_attention_heads=0)


@case("cfg_heads_negative", "config", CFG + r"config field 'decoder_attention_heads' must be a positive integer, got -4")
def _(root, marker):
    return config_dir(root, decoder_attention_heads=-4)


@case("cfg_heads_not_dividing", "config", CFG + r"d_model=16 is not divisible by encoder_attention_heads=3")
def _(root, marker):
    return config_dir(root, encoder_attention_heads=3)


@case("cfg_not_an_object", "config", CFG + r"a BART config must be a JSON object, got list")
def _(root, marker):
    return config_dir(root, raw=b"[1, 2]")


@case("cfg_not_utf8", "config", CFG + r"config is not valid UTF-8 JSON \(not UTF-8")
def _(root, marker):
    return config_dir(root, raw=b'{"d_model": "\xff\xfe"}')


@case("cfg_truncated", "config", CFG + r"config is not valid UTF-8 JSON \(not valid JSON")
def _(root, marker):
    return config_dir(root, raw=CONFIG.to_json_string().encode()[:40])


@case("cfg_empty", "config", CFG + r"config is not valid UTF-8 JSON \(not valid JSON")
def _(root, marker):
    return config_dir(root, raw=b"")


@case("cfg_deep_nesting", "config", CFG + r"config nests JSON deeper than 64 levels")
def _(root, marker):
    return config_dir(root, raw=b'{"task_specific_params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@case("cfg_moderately_deep_nesting", "config", CFG + r"config nests JSON deeper than 64 levels")
def _(root, marker):
    return config_dir(root, raw=b'{"task_specific_params": ' + b"[" * 900 + b"]" * 900 + b"}")


@case("cfg_huge_integer", "config", CFG + r"config is not valid UTF-8 JSON .*digits")
def _(root, marker):
    return config_dir(root, raw=b'{"d_model": ' + b"7" * 5000 + b"}")


@case("cfg_nan_dropout", "config", CFG + r"config field 'dropout' must be a probability in \[0, 1\], got nan")
def _(root, marker):
    return config_dir(root, raw=CONFIG.to_json_string().replace('"dropout": 0.0', '"dropout": NaN').encode())


@case("cfg_bool_as_string", "config", CFG + r"config field 'scale_embedding' must be true or false, got 'false'")
def _(root, marker):
    return config_dir(root, scale_embedding="false")


@case("cfg_activation_not_a_string", "config", CFG + r"config field 'activation_function'=\[\] is not supported")
def _(root, marker):
    return config_dir(root, activation_function=[])


@case("cfg_init_std_nan", "config", CFG + r"config field 'init_std' must be a finite number >= 0, got nan")
def _(root, marker):
    return config_dir(root, raw=CONFIG.to_json_string().replace('"init_std": 0.02', '"init_std": NaN').encode())


@case("cfg_model_type_t5", "config", CFG + r"config field 'model_type'='t5': expected 'bart'")
def _(root, marker):
    return config_dir(root, model_type="t5")


@case("cfg_legacy_pre_layernorm", "config", CFG + r"config field 'normalize_before'=True is not supported")
def _(root, marker):
    return config_dir(root, normalize_before=True)


@case("cfg_pad_token_outside_vocab", "config", CFG + r"config field 'pad_token_id'=64 is not a token id in \[0, vocab_size=64\)")
def _(root, marker):
    return config_dir(root, pad_token_id=64)


@case("cfg_huge_file", "config", CFG + r"config is 1073741824 bytes, more than the 16777216-byte limit", bounded=True)
def _(root, marker):
    d = pt_dir(root)
    sparse_file(d / "config.json", GIB, b'{"d_model": 16, "x": "')
    return d


@case("cfg_fifo", "config", r"config\.json: config is not a regular file")
def _(root, marker):
    d = pt_dir(root)
    os.remove(d / "config.json")
    os.mkfifo(d / "config.json")  # reading it would block forever
    return d


# weights that contradict themselves
@case("tied_copies_differ", "weights", r"tied copies differ: lm_head\.weight is not equal to model\.shared\.weight")
def _(root, marker):
    from convert import flax_to_pt

    state = flax_to_pt(flax_params(), CONFIG, "lm", tied="all")
    state["lm_head.weight"] = state["lm_head.weight"] + np.float32(1e-3)
    return pt_dir(root, "bin", state=state)


@case("unexpected_tensor", "weights", r"unexpected keys, not part of a BART checkpoint for this config: \['evil\.payload'\]",
      entries=CONVERT_ONLY)
def _(root, marker):
    state = pt_state()
    state["evil.payload"] = np.zeros(3, np.float32)
    return pt_dir(root, state=state)
