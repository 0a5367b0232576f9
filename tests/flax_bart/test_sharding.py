"""Partition rules, loading straight into shards, sharded execution, orbax round trips, several hosts.

Rule and error checks run here on axis-size dicts (no devices needed). Everything that needs several
devices runs once in `sharding_worker.py`, a subprocess with 8 simulated CPU devices (XLA_FLAGS is
set for that process only), and the tests below assert on the numbers it reports. A second pair of
subprocesses runs two `jax.distributed` processes on localhost.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from bart_helpers import run_json_worker, simulated_devices_env
from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from flax_bart.sharding import (
    DEFAULT_RULES, FSDP_RULES, ShardingError, ShardLargest, batch_sharding, cache_specs, get_rules,
    partition_specs, tree_shardings,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import sharding_worker as W  # noqa: E402

FP32_ATOL = 1e-5


def shapes(head="lm", **overrides):
    cfg = BartConfig.from_dict({**W.CONFIG, **overrides})
    return cfg, MODEL_CLASSES[head](cfg, _do_init=False).params_shape_tree()


def specs_by_name(specs):
    return {"/".join(k): v for k, v in specs.items()}


# ---- rules (no devices) -------------------------------------------------------------------------
def test_default_rules_on_dp_fsdp_tp():
    cfg, tree = shapes()
    s = specs_by_name(partition_specs(tree, {"dp": 2, "fsdp": 2, "tp": 2}, config=cfg))
    layer = "model/encoder/layers/0"
    assert s[f"{layer}/self_attn/q_proj/kernel"] == P("fsdp", "tp")  # columns = heads
    assert s[f"{layer}/self_attn/q_proj/bias"] == P("tp")
    assert s[f"{layer}/self_attn/out_proj/kernel"] == P("tp", "fsdp")  # rows = heads
    assert s[f"{layer}/fc1/kernel"] == P("fsdp", "tp") and s[f"{layer}/fc2/kernel"] == P("tp", "fsdp")
    assert s[f"{layer}/final_layer_norm/scale"] == P()
    assert s["model/shared/embedding"] == P("tp", "fsdp")  # vocabulary over tp
    assert s["final_logits_bias"] == P(None, "tp")
    assert s["model/encoder/embed_positions/embedding"] == P(None, "fsdp")


def test_absent_or_size_one_axes_shard_nothing():
    cfg, tree = shapes()
    for mesh in ({"dp": 8}, {"tp": 1, "fsdp": 1}, {"dp": 2, "tp": 1}):
        assert set(partition_specs(tree, mesh, config=cfg).values()) == {P()}


def test_fsdp_preset_shards_the_largest_dimension_it_divides():
    cfg, tree = shapes()
    s = specs_by_name(partition_specs(tree, {"fsdp": 8}, FSDP_RULES, config=cfg))
    assert s["model/encoder/layers/0/fc1/kernel"] == P(None, "fsdp")  # (32, 64)
    assert s["model/decoder/layers/0/fc2/kernel"] == P("fsdp")  # (32 ffn, 32): first of the equal dims
    assert s["model/encoder/embed_positions/embedding"] == P(None, "fsdp")  # 62 rows: d_model instead
    assert s["model/shared/embedding"] == P("fsdp")
    assert specs_by_name(partition_specs(tree, {"fsdp": 3}, "fsdp", config=cfg))["model/shared/embedding"] == P()


def test_tp_preset_and_vocabulary_fallback():
    cfg, tree = shapes(vocab_size=99)  # like bart-base's 50265: odd, no even split
    s = specs_by_name(partition_specs(tree, {"tp": 2}, "tp", config=cfg))
    assert s["model/shared/embedding"] == P(None, "tp")  # falls back to splitting d_model
    assert s["final_logits_bias"] == P()
    assert s["model/decoder/layers/0/encoder_attn/v_proj/kernel"] == P(None, "tp")
    assert all("fsdp" not in str(v) for v in s.values())


def test_indivisible_heads_name_param_dimension_and_axis():
    cfg, tree = shapes(d_model=96, encoder_attention_heads=12, decoder_attention_heads=8)
    with pytest.raises(ShardingError) as e:
        partition_specs(tree, {"dp": 1, "tp": 8}, config=cfg)
    msg = str(e.value)
    assert "model/encoder/layers/0/self_attn/q_proj/kernel: dimension 1 (size 96 = 12 heads x 8)" in msg
    assert "mesh axis 'tp' (size 8)" in msg and "12 heads are not divisible by 8" in msg
    assert "encoder/layers/0/self_attn/out_proj/kernel: dimension 0" in msg
    assert "decoder/layers/0/self_attn" not in msg  # 8 decoder heads split fine


def test_indivisible_dimension_error():
    cfg, tree = shapes(encoder_ffn_dim=36)
    with pytest.raises(ShardingError, match=r"encoder/layers/0/fc1/kernel: dimension 1 \(size 36\) is split over "
                                            r"mesh axis 'tp' \(size 8\), but 36 is not divisible by 8"):
        partition_specs(tree, {"tp": 8}, config=cfg)


def test_unmatched_params_are_all_listed():
    cfg, tree = shapes()
    with pytest.raises(ShardingError) as e:
        partition_specs(tree, {"tp": 2}, [(r"kernel$", P())], config=cfg)
    msg = str(e.value)
    assert "no partition rule matches" in msg
    for name in ("model/shared/embedding", "final_logits_bias", "model/encoder/layers/0/fc1/bias",
                 "model/decoder/layernorm_embedding/scale"):
        assert name in msg


def test_rule_sets_are_validated():
    with pytest.raises(ShardingError, match="not a preset"):
        get_rules("zero3")
    with pytest.raises(ShardingError, match="does not compile"):
        get_rules([("(", P())])
    with pytest.raises(ShardingError, match="is not a PartitionSpec"):
        get_rules([("kernel", "tp")])
    assert get_rules(None) is DEFAULT_RULES
    assert get_rules([("x", ShardLargest("fsdp"))])[0][1] == ShardLargest("fsdp")


def test_batch_and_cache_fit_checks():
    cache = {"l": {"self_attn": {"cached_key": np.zeros((4, 6, 8, 4)), "cache_index": np.int32(0)}}}
    spec = cache_specs(cache, {"dp": 2, "tp": 4})
    assert spec[("l", "self_attn", "cached_key")] == P("dp", None, "tp")
    assert spec[("l", "self_attn", "cache_index")] == P()
    assert cache_specs(cache, {"dp": 1, "fsdp": 2, "tp": 2})[("l", "self_attn", "cached_key")] == P("fsdp", None, "tp")
    assert cache_specs(cache, {"dp": 2, "fsdp": 2, "tp": 2})[("l", "self_attn", "cached_key")] == \
        P(("dp", "fsdp"), None, "tp")
    with pytest.raises(ShardingError, match=r"cached_key: dimension 2 \(8 heads\) is split over mesh axis 'tp' "
                                            r"\(size 3\)"):
        cache_specs(cache, {"tp": 3})
    with pytest.raises(ShardingError, match=r"x/cached_value: batch dimension 0 \(size 3\) is split over mesh axes "
                                            r"\('dp', 'fsdp'\) \(4 shards\)"):
        cache_specs({"x": {"cached_value": np.zeros((3, 2, 2, 2))}}, {"dp": 2, "fsdp": 2})
    mesh = jax.make_mesh((1,), ("dp",))
    assert batch_sharding(mesh, (3, 5)).spec == P()  # dp of size 1 splits nothing


# ---- one device: the mesh code path, the .bin fallback, orbax --------------------------------------
@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    params = W.random_params("lm", seed=W.HEADS.index("lm"))
    return params, W.write_checkpoint("lm", params, str(tmp_path_factory.mktemp("lm")))


def test_mesh_load_on_one_device_equals_normal_load_and_runs(lm_ckpt):
    params, ckpt = lm_ckpt
    mesh = Mesh(np.array(jax.devices()[:1]), ("dp",))
    model = MODEL_CLASSES["lm"].from_pretrained(ckpt, mesh=mesh, partition_rules="fsdp")
    normal = MODEL_CLASSES["lm"].from_pretrained(ckpt)
    assert W.same_bits(model.params, params) and W.same_bits(normal.params, params)
    ids, mask = W.inputs()
    logits = model(ids[:2], attention_mask=mask[:2]).logits  # parity on 8 devices: the worker below
    assert logits.shape == (2, W.T, W.CONFIG["vocab_size"]) and bool(np.isfinite(np.asarray(logits)).all())
    assert logits.sharding.mesh.shape == {"dp": 1} and model.mesh is not None and normal.mesh is None


def test_torch_bin_falls_back_to_one_tensor_at_a_time(lm_ckpt, tmp_path):
    torch = pytest.importorskip("torch")
    from convert import flax_to_pt
    from flax_bart.shard_loading import load_into_shards

    params, _ = lm_ckpt
    cfg = W.config_for("lm")
    sd = flax_to_pt(params, cfg, "lm")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    cfg.save_pretrained(tmp_path)
    tree = MODEL_CLASSES["lm"](cfg, _do_init=False).params_shape_tree()
    mesh = Mesh(np.array(jax.devices()[:1]), ("dp",))
    flat, report = load_into_shards(str(tmp_path), cfg, "lm", tree, tree_shardings(tree, mesh, config=cfg))
    assert report.whole_tensor_reads > 0 and report.tied_checked == 3  # all four embedding copies compared
    assert W.same_bits(traverse_util.unflatten_dict(flat), params)


def test_mesh_load_compares_tied_copies(lm_ckpt, tmp_path):
    from safetensors.numpy import save_file

    from convert import ConversionError, flax_to_pt

    params, _ = lm_ckpt
    cfg = W.config_for("lm")
    sd = {k: np.ascontiguousarray(v) for k, v in flax_to_pt(params, cfg, "lm", tied="all").items()}
    sd["model.decoder.embed_tokens.weight"] = sd["model.decoder.embed_tokens.weight"].copy()
    sd["model.decoder.embed_tokens.weight"][5, 3] += 1.0
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg.save_pretrained(tmp_path)
    mesh = Mesh(np.array(jax.devices()[:1]), ("dp",))
    with pytest.raises(ConversionError, match=r"tied copies differ: model.decoder.embed_tokens.weight is not equal "
                                              r"to model.shared.weight"):
        MODEL_CLASSES["lm"].from_pretrained(tmp_path, mesh=mesh)


def test_mesh_load_draws_missing_head_like_the_normal_path(lm_ckpt):
    _, ckpt = lm_ckpt
    mesh = Mesh(np.array(jax.devices()[:1]), ("dp",))
    with pytest.warns(UserWarning, match="qa_outputs"):
        sharded = MODEL_CLASSES["qa"].from_pretrained(ckpt, mesh=mesh, seed=3)
    with pytest.warns(UserWarning, match="qa_outputs"):
        normal = MODEL_CLASSES["qa"].from_pretrained(ckpt, seed=3)
    assert W.same_bits(sharded.params, jax.device_get(normal.params))


def test_mesh_load_ignore_mismatched_sizes_like_the_normal_path(tmp_path):
    params = W.random_params("cls", seed=5)
    ckpt = W.write_checkpoint("cls", params, str(tmp_path / "cls"))
    mesh = Mesh(np.array(jax.devices()[:1]), ("dp",))
    cls = MODEL_CLASSES["cls"]
    with pytest.raises(Exception, match="out_proj"):
        cls.from_pretrained(ckpt, mesh=mesh, num_labels=5)
    with pytest.warns(UserWarning, match=r"out_proj/kernel: checkpoint \(32, 3\) -> model \(32, 5\)"):
        sharded = cls.from_pretrained(ckpt, mesh=mesh, num_labels=5, ignore_mismatched_sizes=True)
    with pytest.warns(UserWarning, match="out_proj"):
        normal = cls.from_pretrained(ckpt, num_labels=5, ignore_mismatched_sizes=True)
    assert sharded.params["classification_head"]["out_proj"]["kernel"].shape == (32, 5)
    assert W.same_bits(sharded.params, jax.device_get(normal.params))


def test_orbax_round_trip_is_exact_for_every_dtype(tmp_path):
    import ml_dtypes

    from flax_bart.orbax_io import OrbaxError, orbax_shapes, restore_orbax, save_orbax

    rng = np.random.default_rng(0)
    tree = {"a": {"kernel": rng.standard_normal((4, 6)).astype(np.float32)},
            "b": {"bias": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
                  "scale": rng.standard_normal((2, 3)).astype(np.float16)}}
    save_orbax(tree, tmp_path / "ck")
    back = restore_orbax(tmp_path / "ck")
    assert W.same_bits(back, tree)
    assert orbax_shapes(tmp_path / "ck")[("b", "bias")].dtype == ml_dtypes.bfloat16
    with pytest.raises(OrbaxError, match="already exists"):
        save_orbax(tree, tmp_path / "ck")
    wrong = {("a", "kernel"): jax.ShapeDtypeStruct((6, 4), np.float32),
             ("c", "new"): jax.ShapeDtypeStruct((1,), np.float32)}
    with pytest.raises(OrbaxError) as e:
        restore_orbax(tmp_path / "ck", wrong)
    assert "missing c/new" in str(e.value) and "unexpected b/bias" in str(e.value)
    assert "a/kernel: stored shape (4, 6), expected (6, 4)" in str(e.value)
    with pytest.raises(OrbaxError, match="no orbax checkpoint"):
        restore_orbax(tmp_path / "absent")


def test_convert_to_orbax_and_back_to_pytorch_is_exact(lm_ckpt, tmp_path):
    from safetensors.numpy import load_file

    from flax_bart.orbax_io import convert_from_orbax, convert_to_orbax, load_orbax_as_flax

    params, ckpt = lm_ckpt
    info = convert_to_orbax(ckpt, tmp_path / "orbax")
    assert info["head"] == "lm" and sorted(os.listdir(tmp_path / "orbax")) == [
        "config.json", "flax_bart_orbax.json", "params"]
    back, cfg, head = load_orbax_as_flax(tmp_path / "orbax")
    assert head == "lm" and cfg.d_model == W.CONFIG["d_model"] and W.same_bits(back, params)
    convert_from_orbax(tmp_path / "orbax", tmp_path / "pt", to="pytorch")
    assert {k: v.tobytes() for k, v in load_file(tmp_path / "pt" / "model.safetensors").items()} == \
        {k: v.tobytes() for k, v in load_file(os.path.join(ckpt, "model.safetensors")).items()}
    assert not [n for n in os.listdir(tmp_path) if n.endswith("orbax-tmp")]


# ---- 8 simulated devices, in one subprocess ---------------------------------------------------------
def _env(n_devices: int) -> dict:
    return simulated_devices_env(n_devices, ROOT)


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    work = tmp_path_factory.mktemp("eight")
    out = work / "result.json"
    return run_json_worker([os.path.join(HERE, "sharding_worker.py"), "devices", out, work], out, 8, ROOT, timeout=600)


def test_eight_devices_sharded_outputs_equal_single_device(eight):
    assert eight["device_count"] == 8
    parity = eight["parity"]
    for head in W.HEADS:
        for layout in W.LAYOUTS_PER_HEAD[head]:
            assert any(k.startswith(f"{layout}/{head}/__call__") for k in parity), (layout, head)
    for layout in W.DECODING["lm"]:
        assert f"{layout}/lm/cached_step3" in parity
    assert "tp/causal/cached_step3" in parity and "tp/lm/encode" in parity
    assert eight["generate_equal"]  # greedy tokens of the sharded model == single device
    bad = {k: v for k, v in parity.items() if not v <= FP32_ATOL}
    assert not bad, bad


def test_eight_devices_loading_into_shards_is_exact(eight):
    assert eight["load_equal"] and all(eight["load_equal"].values()), eight["load_equal"]
    assert "msgpack/tp/lm" in eight["load_equal"] and "normal/lm" in eight["load_equal"]


def test_eight_devices_params_and_cache_are_sharded_as_the_rules_say(eight):
    q = "model/encoder/layers/0/self_attn/q_proj/kernel"
    assert eight["specs"]["tp/lm"][q] == "P(None, 'tp')" and eight["shard_shapes"]["tp/lm"][q] == [32, 8]
    assert eight["specs"]["fsdp/lm"][q] == "P('fsdp',)" and eight["shard_shapes"]["fsdp/lm"][q] == [4, 32]
    assert eight["specs"]["dp/lm"][q] == "P()" and eight["shard_shapes"]["dp/lm"][q] == [32, 32]
    assert eight["specs"]["dp_fsdp_tp/lm"]["model/shared/embedding"] == "P('tp', 'fsdp')"
    assert eight["shard_shapes"]["tp/causal"]["lm_head/kernel"] == [32, 32]  # untied LM head over tp=4
    assert eight["cache_specs"]["tp/lm"]["self_attn/cached_key"] == "P('dp', None, 'tp')"
    assert eight["cache_specs"]["fsdp/lm"]["self_attn/cache_index"] == "P()"


def test_eight_devices_orbax(eight):
    o = eight["orbax"]
    assert o["round_trip_exact"] and o["restored_into_target_shardings"]  # saved from fsdp, restored into tp
    assert o["convert_head"] == "lm" and o["restored_spec_q"] == "P(None, 'tp')" and o["convert_info_tensors"] == 50


# ---- two processes with jax.distributed on localhost ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_load_their_own_shards_and_agree(tmp_path):
    port = _free_port()
    worker = os.path.join(HERE, "sharding_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, "multihost", str(tmp_path / f"r{i}.json"), str(tmp_path),
                               str(i), str(port)], env=_env(2), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(results):
        assert (r["process_index"], r["process_count"], r["device_count"], r["local_device_count"]) == (i, 2, 4, 2)
        assert not r["fully_addressable"]  # fsdp-split params: each process holds only its half
        assert r["parity"] <= FP32_ATOL
        # this process's two devices hold less than the model, and it read less than the model
        assert r["local_shard_bytes"] < r["global_param_bytes"]
        assert r["bytes_read"] < r["global_param_bytes"]
