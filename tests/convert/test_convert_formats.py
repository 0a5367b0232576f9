"""Every file format, sharded and unsharded, in both directions: bit-exact, readable by the
libraries that define the formats."""

from __future__ import annotations

import itertools
import os

import pytest

from convert import convert_checkpoint, flax_to_pt, load_flax_params, save_flax_params
from convert.rules import expected_flax_shapes

from convert_helpers import (
    DTYPES, FIXTURES, HEADS, assert_bits_equal, flat, random_flax_params, read_flax_msgpack, read_json,
    read_pt_checkpoint, tiny_config, write_config, write_flax_msgpack, write_pt_checkpoint,
)

FORMAT_PAIRS = list(itertools.product(["safetensors", "bin"], ["msgpack", "safetensors"]))
CASES = (
    [("lm", d, pair, sharded) for d in sorted(DTYPES) for pair in FORMAT_PAIRS for sharded in (False, True)]
    + [(h, d, ("safetensors", "msgpack"), False) for h in HEADS if h != "lm" for d in sorted(DTYPES)]
    + [(h, "bfloat16", ("bin", "safetensors"), True) for h in HEADS if h != "lm"]
)


def _pt_source(tmp_path, config, head, dtype, fmt, sharded, seed=0):
    state = flax_to_pt(random_flax_params(config, head, DTYPES[dtype], seed=seed), config, head,
                       tied="drop" if fmt == "safetensors" else "all")
    src = tmp_path / "src"
    write_pt_checkpoint(src, state, fmt, shards=3 if sharded else 1)
    write_config(src, config)
    return src, state


@pytest.mark.parametrize("head,dtype,formats,sharded", CASES)
def test_pt_to_flax_to_pt_is_bit_exact(tmp_path, head, dtype, formats, sharded):
    pt_fmt, flax_fmt = formats
    config = tiny_config(tie_word_embeddings=head != "cls")
    src, state = _pt_source(tmp_path, config, head, dtype, pt_fmt, sharded)
    shard = 2000 if sharded else None
    s1 = convert_checkpoint(src, tmp_path / "flax", to="flax", format=flax_fmt, max_shard_size=shard)
    s2 = convert_checkpoint(tmp_path / "flax", tmp_path / "back", to="pytorch", format=pt_fmt, max_shard_size=shard)
    assert s1.head == s2.head == head and s1.source_head == head
    assert_bits_equal(read_pt_checkpoint(tmp_path / "back"), state)
    names = os.listdir(tmp_path / "flax")
    weights = [n for n in names if n.endswith((".msgpack", ".safetensors"))]
    assert (len(weights) > 1) == sharded
    # the Flax checkpoint reads back (and, for msgpack, with flax.serialization itself)
    params, _ = load_flax_params(tmp_path / "flax", config, head)
    if flax_fmt == "msgpack":
        assert_bits_equal(read_flax_msgpack(tmp_path / "flax"), flat(params))
    assert set(flat(params)) == set(expected_flax_shapes(config, head))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("pt_fmt,sharded", [("safetensors", False), ("safetensors", True), ("bin", False), ("bin", True)])
def test_flax_to_pt_to_flax_is_bit_exact_and_byte_identical(tmp_path, dtype, pt_fmt, sharded):
    config = tiny_config()
    params = random_flax_params(config, "lm", DTYPES[dtype], seed=3)
    write_flax_msgpack(tmp_path / "src", params, shards=4 if sharded else 1)
    write_config(tmp_path / "src", config)
    convert_checkpoint(tmp_path / "src", tmp_path / "pt", to="pytorch", format=pt_fmt,
                       max_shard_size=1500 if sharded else None)
    assert (os.path.exists(tmp_path / "pt" / f"{'model.safetensors' if pt_fmt == 'safetensors' else 'pytorch_model.bin'}.index.json")) == sharded
    convert_checkpoint(tmp_path / "pt", tmp_path / "flax", to="flax")
    from flax.serialization import to_bytes

    with open(tmp_path / "flax" / "flax_model.msgpack", "rb") as f:
        assert f.read() == to_bytes(params)  # the exact bytes flax writes for the same tree


@pytest.mark.parametrize("name,head", [("base", "base"), ("lm", "lm"), ("lm_untied", "lm"), ("lm_sharded", "lm"),
                                       ("cls", "cls"), ("qa", "qa")])
def test_4x_flax_checkpoints_load_exactly(name, head):
    directory = os.path.join(FIXTURES, name)
    params, summary = load_flax_params(directory, None, head)
    assert_bits_equal(flat(params), read_flax_msgpack(directory))
    assert summary.source["format"] == "msgpack" and not summary.missing and not summary.unused


def test_save_flax_params_shards_like_4x_and_replaces_stale_files(tmp_path):
    config = tiny_config()
    params = random_flax_params(config, "lm", DTYPES["float16"])
    out = tmp_path / "ckpt"
    write_config(out, config)
    files = save_flax_params(params, out, max_shard_size="1KB")
    names = sorted(os.listdir(out))
    shards = [n for n in names if n.startswith("flax_model-")]
    assert len(shards) > 3 and shards[0] == f"flax_model-00001-of-{len(shards):05d}.msgpack"
    index = read_json(out / "flax_model.msgpack.index.json")
    assert set(index["weight_map"]) == {"/".join(k) for k in flat(params)}
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in flat(params).values())
    assert sorted(os.path.basename(f) for f in files) == sorted(shards + ["flax_model.msgpack.index.json"])
    assert_bits_equal(read_flax_msgpack(out), flat(params))
    # saving again unsharded replaces every earlier shard and the index
    save_flax_params(params, out)
    assert sorted(os.listdir(out)) == ["config.json", "flax_model.msgpack"]
    loaded, _ = load_flax_params(out, config, "lm")
    assert_bits_equal(flat(loaded), flat(params))


@pytest.mark.parametrize("max_shard_size", [None, 3000])
def test_flax_safetensors_is_what_the_library_reads(tmp_path, max_shard_size):
    from safetensors import safe_open

    config = tiny_config()
    params = random_flax_params(config, "qa", DTYPES["bfloat16"])
    save_flax_params(params, tmp_path, format="safetensors", max_shard_size=max_shard_size)
    got = {}
    for name in sorted(os.listdir(tmp_path)):
        if name.endswith(".safetensors"):
            with safe_open(str(tmp_path / name), "np") as f:
                assert f.metadata() == {"format": "flax"}
                got.update({tuple(k.split(".")): f.get_tensor(k) for k in f.keys()})
    assert_bits_equal(got, flat(params))
    loaded, summary = load_flax_params(tmp_path, config, "qa")
    assert_bits_equal(flat(loaded), flat(params))
    assert summary.source["framework"] == "flax" and summary.source["format"] == "safetensors"


def test_msgpack_writer_matches_flax_bytes_including_chunked_arrays(tmp_path, monkeypatch):
    import flax.serialization

    from convert import msgpack_io

    config = tiny_config()
    params = random_flax_params(config, "base", DTYPES["float32"])
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 1000)
    monkeypatch.setattr(msgpack_io, "MAX_CHUNK_SIZE", 1000)
    save_flax_params(params, tmp_path)
    data = (tmp_path / "flax_model.msgpack").read_bytes()
    assert data == flax.serialization.to_bytes(params)
    assert b"__msgpack_chunked_array__" in data  # the 4 KB embedding was chunked
    loaded, _ = load_flax_params(tmp_path, config, "base")
    assert_bits_equal(flat(loaded), flat(params))


def test_pt_safetensors_output_is_readable_by_the_library(tmp_path):
    from safetensors import safe_open

    config = tiny_config()
    write_flax_msgpack(tmp_path / "src", random_flax_params(config, "cls"))
    write_config(tmp_path / "src", config)
    convert_checkpoint(tmp_path / "src", tmp_path / "pt", to="pytorch")
    with safe_open(str(tmp_path / "pt" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert "model.shared.weight" in f.keys() and "model.encoder.embed_tokens.weight" not in f.keys()
        assert tuple(f.get_tensor("classification_head.out_proj.weight").shape) == (4, 16)


def test_directory_with_both_frameworks_prefers_as_asked(tmp_path):
    config = tiny_config()
    flax_params = random_flax_params(config, "lm", seed=1)
    pt_params = random_flax_params(config, "lm", seed=2)
    write_flax_msgpack(tmp_path / "both", flax_params)
    write_pt_checkpoint(tmp_path / "both", flax_to_pt(pt_params, config, "lm", tied="drop"))
    write_config(tmp_path / "both", config)
    loaded, summary = load_flax_params(tmp_path / "both", None, "lm")
    assert summary.source["framework"] == "flax"
    assert_bits_equal(flat(loaded), flat(flax_params))
    loaded, summary = load_flax_params(tmp_path / "both", None, "lm", prefer="pt")
    assert summary.source["format"] == "safetensors" and summary.source["framework"] == "pt"
    assert_bits_equal(flat(loaded), flat(pt_params))
    # the CLI converts from the other framework: --to flax reads the PyTorch weights
    s = convert_checkpoint(tmp_path / "both", tmp_path / "fx", to="flax")
    assert s.source["framework"] == "pt"
    s = convert_checkpoint(tmp_path / "both", tmp_path / "pt", to="pytorch")
    assert s.source["framework"] == "flax"


def test_an_lm_state_dict_without_the_model_prefix_keeps_its_lm_weights(tmp_path):
    """Some LM checkpoints were saved from the base model's state dict plus `lm_head`/`final_logits_bias`
    (no `model.` prefix): their head is the LM's, judged by those keys, not the base model's."""
    from convert.plan import infer_head

    config = tiny_config()
    state = flax_to_pt(random_flax_params(config, "lm", DTYPES["float32"], seed=3), config, "lm", tied="all")
    bare = {k.removeprefix("model."): v for k, v in state.items()}
    assert "final_logits_bias" in bare and "encoder.layers.0.fc1.weight" in bare
    assert infer_head(bare, "pt") == "lm" and infer_head({k: v for k, v in bare.items()
                                                          if k not in ("final_logits_bias", "lm_head.weight")},
                                                         "pt") == "base"
    src = tmp_path / "src"
    write_pt_checkpoint(src, bare, "safetensors")
    write_config(src, config)
    summary = convert_checkpoint(src, tmp_path / "flax", to="flax", quiet=True)
    assert summary.head == "lm" and not summary.unused
    out = read_flax_msgpack(tmp_path / "flax")
    assert any(k[-1] == "final_logits_bias" for k in out)


def test_errors_about_a_tensor_of_a_sharded_checkpoint_name_its_shard(tmp_path):
    import numpy as np

    config = tiny_config()
    state = flax_to_pt(random_flax_params(config, "lm", DTYPES["float32"], seed=3), config, "lm", tied="drop")
    key = "model.decoder.layers.0.fc1.weight"
    state[key] = np.zeros((state[key].shape[0] + 1, state[key].shape[1]), np.float32)
    src = tmp_path / "src"
    write_pt_checkpoint(src, state, "safetensors", shards=3)
    write_config(src, config)
    index = read_json(src / "model.safetensors.index.json")["weight_map"]
    with pytest.raises(Exception, match=rf"{key} \(in {index[key]}\): shape"):
        convert_checkpoint(src, tmp_path / "out", to="flax", quiet=True)


@pytest.mark.parametrize("text, size", [
    ("12KB", 12_000), ("12kB", 12_000), ("2GiB", 2 * 2**30), ("2gib", 2 * 2**30), ("1.5MB", 1_500_000),
    ("12kb", 1_500), ("500Mb", 62_500_000), ("10 gb", 1_250_000_000),   # transformers: a lowercase b is bits
    ("100B", 100), (7, 7),
])
def test_max_shard_size_reads_sizes_as_transformers_does(text, size):
    from convert.writers import parse_size

    assert parse_size(text) == size
