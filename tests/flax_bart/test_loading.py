"""from_pretrained / save_pretrained across checkpoint formats, the hub cache (offline) and heads."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from flax_bart import FlaxBartForCausalLM, FlaxBartForConditionalGeneration, FlaxBartForQuestionAnswering
from flax_bart.hub import CheckpointNotFoundError
from tests.bart_helpers import batch, torch_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def lm_torch():
    return torch_model("lm", seed=11)


@pytest.fixture(scope="module")
def v5_dir(tmp_path_factory, lm_torch):
    d = tmp_path_factory.mktemp("v5")
    lm_torch.save_pretrained(d)  # model.safetensors without the tied copies
    return d


def _torch_logits(tm, ids, mask):
    with torch.no_grad():
        return tm(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask), use_cache=False).logits.numpy()


def _err(flax_logits, ref, mask):
    m = mask.astype(bool)
    return float(np.abs(np.asarray(flax_logits)[m] - ref[m]).max())


def test_v5_safetensors_loads_without_from_pt(v5_dir, lm_torch):
    from safetensors import safe_open

    with safe_open(os.path.join(v5_dir, "model.safetensors"), "np") as f:
        assert "lm_head.weight" not in f.keys() and "model.shared.weight" in f.keys()
    ids, mask = batch(seed=3)
    model = FlaxBartForConditionalGeneration.from_pretrained(v5_dir)
    assert _err(model(ids, attention_mask=mask).logits, _torch_logits(lm_torch, ids, mask), mask) <= ATOL


def test_old_bin_with_all_tied_copies_and_sharded_safetensors(tmp_path, v5_dir, lm_torch):
    ids, mask = batch(seed=3)
    ref = _torch_logits(lm_torch, ids, mask)
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(v5_dir / "config.json", old)
    sd = {k: v.clone() for k, v in lm_torch.state_dict().items()}
    assert {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"} <= set(sd)
    torch.save(sd, old / "pytorch_model.bin")
    assert _err(FlaxBartForConditionalGeneration.from_pretrained(old, from_pt=True)(ids, attention_mask=mask).logits,
                ref, mask) <= ATOL
    sharded = tmp_path / "sharded"
    lm_torch.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert _err(FlaxBartForConditionalGeneration.from_pretrained(sharded)(ids, attention_mask=mask).logits,
                ref, mask) <= ATOL


def test_save_pretrained_round_trip_msgpack_safetensors_and_sharded(tmp_path, v5_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(v5_dir)
    ids, mask = batch(seed=5)
    ref = np.asarray(model(ids, attention_mask=mask).logits)
    for name, kw in {"msgpack": {}, "safe": {"safe_serialization": True}, "shards": {"max_shard_size": "10KB"},
                     "safe_shards": {"safe_serialization": True, "max_shard_size": "10KB"}}.items():
        out = tmp_path / name
        model.save_pretrained(out, **kw)
        files = sorted(os.listdir(out))
        assert "config.json" in files
        if name == "safe":
            assert "model.safetensors" in files
        if "shards" in name:   # msgpack shards, safe_serialization or not: 4.x reads no sharded safetensors
            assert "flax_model.msgpack.index.json" in files and not any(f.endswith(".safetensors") for f in files)
        back = FlaxBartForConditionalGeneration.from_pretrained(out)
        np.testing.assert_array_equal(np.asarray(back(ids, attention_mask=mask).logits), ref)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == ["BartForConditionalGeneration"] and cfg["model_type"] == "bart"


def test_do_init_false_returns_model_and_params(v5_dir):
    model, params = FlaxBartForConditionalGeneration.from_pretrained(v5_dir, _do_init=False)
    ids, mask = batch()
    assert model(ids, attention_mask=mask, params=params).logits.shape == (3, 9, 99)


def test_bf16_checkpoint_keeps_its_dtype(tmp_path, lm_torch):
    d = tmp_path / "bf16"
    import copy

    copy.deepcopy(lm_torch).to(torch.bfloat16).save_pretrained(d)
    model = FlaxBartForConditionalGeneration.from_pretrained(d)
    import jax.numpy as jnp

    assert model.params["model"]["shared"]["embedding"].dtype == jnp.bfloat16
    ids, mask = batch()
    assert model(ids, attention_mask=mask).logits.dtype == jnp.float32  # compute dtype stays float32


def test_hub_cache_offline(tmp_path, v5_dir, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-bart" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in os.listdir(v5_dir):
        shutil.copy(v5_dir / f, snap)
    (cache / "models--acme--tiny-bart" / "refs").mkdir()
    (cache / "models--acme--tiny-bart" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = FlaxBartForConditionalGeneration.from_pretrained("acme/tiny-bart", cache_dir=cache)
    assert model.config.vocab_size == 99
    with pytest.raises(CheckpointNotFoundError, match="acme/other"):
        FlaxBartForConditionalGeneration.from_pretrained("acme/other", cache_dir=cache)


def test_config_overrides_and_ignore_mismatched_sizes(tmp_path):
    tm = torch_model("qa", seed=2)
    d = tmp_path / "qa"
    tm.save_pretrained(d)
    m = FlaxBartForQuestionAnswering.from_pretrained(d, dropout=0.3)
    assert m.config.dropout == 0.3
    from flax_bart import FlaxBartForSequenceClassification

    tc = torch_model("cls", seed=2)
    tc.save_pretrained(tmp_path / "cls")
    with pytest.raises(Exception, match="out_proj"):
        FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", num_labels=5)
    with pytest.warns(UserWarning, match="out_proj"):
        m5 = FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", num_labels=5,
                                                                ignore_mismatched_sizes=True)
    assert m5.params["classification_head"]["out_proj"]["kernel"].shape == (16, 5)
    # 4.x's fine-tuning pattern: the new label count in a config object or file, not a keyword
    from flax_bart import BartConfig

    cfg5 = BartConfig.from_pretrained(tmp_path / "cls", num_labels=5)
    cfg5.save_pretrained(tmp_path / "cfg5")
    kept = np.asarray(m5.params["model"]["encoder"]["layers"]["0"]["fc1"]["kernel"])
    for config in (cfg5, str(tmp_path / "cfg5")):
        with pytest.warns(UserWarning, match="out_proj"):
            m = FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", config=config,
                                                                   ignore_mismatched_sizes=True)
        assert m.config.num_labels == 5 and m.params["classification_head"]["out_proj"]["kernel"].shape == (16, 5)
        np.testing.assert_array_equal(np.asarray(m.params["model"]["encoder"]["layers"]["0"]["fc1"]["kernel"]), kept)
    with pytest.raises(Exception, match="out_proj"):
        FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", config=cfg5)
    cfg3 = BartConfig.from_pretrained(tmp_path / "cls")
    shutil.copytree(tmp_path / "cls", tmp_path / "broken")   # its own config.json unreadable: config= serves
    (tmp_path / "broken" / "config.json").write_text("{not json")
    m = FlaxBartForSequenceClassification.from_pretrained(tmp_path / "broken", config=cfg3, ignore_mismatched_sizes=True)
    assert m.params["classification_head"]["out_proj"]["kernel"].shape == (16, 3)


def test_unknown_keywords_are_refused_and_config_keywords_override_as_in_4x(tmp_path):
    from flax_bart import BartConfig, FlaxBartForSequenceClassification

    torch_model("cls", seed=2).save_pretrained(tmp_path / "cls")
    for typo in ({"dtpye": "bfloat16"}, {"foo_bar": 1}, {"return_unused_kwargs": True}):
        with pytest.raises(TypeError, match=f"unexpected keyword arguments \\['{next(iter(typo))}'\\]"):
            FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", **typo)
    m = FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", output_hidden_states=True,
                                                          attention_dropout=0.2)
    assert m.config.output_hidden_states is True and m.config.attention_dropout == 0.2
    with pytest.raises(ValueError, match="token and use_auth_token are both given"):
        FlaxBartForSequenceClassification.from_pretrained(tmp_path / "cls", token="a", use_auth_token="b")
    config, unused = BartConfig.from_pretrained(tmp_path / "cls", dropout=0.3, foo=1, return_unused_kwargs=True)
    assert config.dropout == 0.3 and unused == {"foo": 1}
    assert BartConfig.from_pretrained(tmp_path / "cls", foo=1, proxies={"http": "x"}).dropout == 0.0
    assert BartConfig.from_pretrained(tmp_path / "cls", num_labels=5).num_labels == 5
    aliased = BartConfig.from_pretrained(tmp_path / "cls", hidden_size=32, num_attention_heads=2)  # 4.x's names
    assert (aliased.d_model, aliased.encoder_attention_heads) == (32, 2)
    assert "hidden_size" not in aliased.to_dict() and "num_attention_heads" not in aliased.to_dict()


def test_causal_lm_from_seq2seq_checkpoint_uses_shared_embedding(v5_dir, lm_torch):
    causal = FlaxBartForCausalLM.from_pretrained(v5_dir)
    np.testing.assert_array_equal(np.asarray(causal.params["model"]["decoder"]["embed_tokens"]["embedding"]),
                                  lm_torch.model.shared.weight.detach().numpy())


def test_missing_backbone_weights_fail_naming_them(tmp_path, v5_dir):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "broken"
    d.mkdir()
    shutil.copy(v5_dir / "config.json", d)
    sd = load_file(v5_dir / "model.safetensors")
    del sd["model.encoder.layers.1.fc1.weight"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"missing .*model\.encoder\.layers\.1\.fc1\.weight"):
        FlaxBartForConditionalGeneration.from_pretrained(d)


@pytest.mark.parametrize("head", ["base", "cls", "qa", "causal"])
def test_every_class_loads_a_transformers_checkpoint(tmp_path, head):
    from flax_bart.models import MODEL_CLASSES
    from tests.bart_helpers import OUTPUT_NAMES

    tm = torch_model(head, seed=21)
    tm.save_pretrained(tmp_path)
    model = MODEL_CLASSES[head].from_pretrained(tmp_path)
    ids, mask = batch(seed=8)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask), use_cache=False)
    out = model(ids, attention_mask=mask)
    for name in OUTPUT_NAMES[head]:
        m = None if head == "cls" else mask.astype(bool)
        a, b = np.asarray(getattr(out, name)), getattr(ref, name).numpy()
        assert float(np.abs((a - b) if m is None else (a[m] - b[m])).max()) <= ATOL, name


def test_a_second_save_into_the_same_folder_is_the_one_that_loads(tmp_path, v5_dir):
    """Saves of other formats or shardings into one folder: the last one loads (an earlier msgpack,
    which from_pretrained reads first, never shadows a later safetensors save)."""
    first = FlaxBartForConditionalGeneration.from_pretrained(v5_dir)
    second = FlaxBartForConditionalGeneration.from_pretrained(v5_dir)
    second.params = jax_tree_scale(second.params, 2.0)
    ids, mask = batch(seed=5)
    out = tmp_path / "m"
    for earlier, later in ([{"safe_serialization": True, "max_shard_size": "8KB"}, {"safe_serialization": True}],
                           [{}, {"safe_serialization": True}],
                           [{"safe_serialization": True}, {"max_shard_size": "8KB"}]):
        first.save_pretrained(out, **earlier)
        second.save_pretrained(out, **later)
        back = FlaxBartForConditionalGeneration.from_pretrained(out)
        np.testing.assert_array_equal(np.asarray(back(ids, attention_mask=mask).logits),
                                      np.asarray(second(ids, attention_mask=mask).logits))
        if later.get("safe_serialization") and "max_shard_size" not in later:   # no msgpack left to shadow it
            assert not [f for f in os.listdir(out) if "msgpack" in f], os.listdir(out)


def jax_tree_scale(tree, factor):
    import jax

    return jax.tree_util.tree_map(lambda x: x * factor, tree)


def test_save_pretrained_keeps_a_pytorch_safetensors_file_beside_it(tmp_path, v5_dir):
    import shutil

    out = tmp_path / "both"
    shutil.copytree(v5_dir, out)                                   # the user's PyTorch model.safetensors
    pt_bytes = (out / "model.safetensors").read_bytes()
    model = FlaxBartForConditionalGeneration.from_pretrained(v5_dir)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="8KB")   # msgpack shards
    assert (out / "model.safetensors").read_bytes() == pt_bytes
    model.save_pretrained(out)                                     # plain msgpack
    assert (out / "model.safetensors").read_bytes() == pt_bytes
    assert "flax_model.msgpack" in os.listdir(out) and "flax_model.msgpack.index.json" not in os.listdir(out)
