import json

import pytest

from flax_bart import BartConfig, ConfigError

FIXTURES = "tests/fixtures/bart4x"

LEGACY_HUB_CONFIG = {
    "model_type": "bart", "vocab_size": 50265, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
    "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
    "add_bias_logits": False, "add_final_layer_norm": False, "normalize_before": False, "normalize_embedding": True,
    "static_position_embeddings": False, "extra_pos_embeddings": 2, "output_past": False,
    "gradient_checkpointing": False, "torch_dtype": "float32", "forced_bos_token_id": 0,
    "task_specific_params": {"summarization": {"length_penalty": 2.0, "num_beams": 4}},
    "id2label": {"0": "NEG", "1": "POS"}, "label2id": {"NEG": 0, "POS": 1}, "some_future_field": [1, 2],
}


def test_legacy_hub_config_round_trips(tmp_path):
    cfg = BartConfig.from_dict(LEGACY_HUB_CONFIG)
    assert cfg.num_labels == 2 and cfg.id2label == {0: "NEG", 1: "POS"} and cfg.label2id == {"NEG": 0, "POS": 1}
    assert cfg.forced_bos_token_id == 0 and cfg.d_model == 768
    cfg.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for k, v in LEGACY_HUB_CONFIG.items():
        assert written[k] == v, k
    assert BartConfig.from_json_file(tmp_path / "config.json") == cfg


def test_v5_dtype_key_kept(tmp_path):
    cfg = BartConfig.from_dict({**LEGACY_HUB_CONFIG, "dtype": "bfloat16"})
    assert cfg.to_dict()["dtype"] == "bfloat16" and cfg.to_dict()["torch_dtype"] == "float32"


@pytest.mark.parametrize("field,value", [
    ("normalize_before", True), ("add_final_layer_norm", True), ("static_position_embeddings", True),
    ("normalize_embedding", False), ("extra_pos_embeddings", 0), ("add_bias_logits", True),
    ("activation_function", "swiglu"), ("model_type", "t5"),
])
def test_unhonourable_fields_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        BartConfig.from_dict({**LEGACY_HUB_CONFIG, field: value})


@pytest.mark.parametrize("field,value", [
    ("d_model", 0), ("d_model", -4), ("encoder_attention_heads", 0), ("vocab_size", 1.5),
    ("decoder_layers", "3"), ("dropout", 1.5), ("pad_token_id", 10**9),
])
def test_bad_sizes_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        BartConfig.from_dict({**LEGACY_HUB_CONFIG, field: value})


def test_heads_must_divide_d_model():
    with pytest.raises(ConfigError, match="not divisible by decoder_attention_heads=5"):
        BartConfig.from_dict({**LEGACY_HUB_CONFIG, "decoder_attention_heads": 5})


def test_not_an_object_and_not_utf8(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        BartConfig.from_json_file(p)
    p.write_bytes(b'{"d_model": "\xff"}')
    with pytest.raises(ConfigError, match="UTF-8"):
        BartConfig.from_json_file(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BartConfig.from_json_file(p)


def test_frozen_and_replace_does_not_touch_original():
    cfg = BartConfig.from_dict(LEGACY_HUB_CONFIG)
    with pytest.raises(Exception):
        cfg.d_model = 4
    other = cfg.replace(num_labels=5, scale_embedding=True, brand_new=1)
    assert other.num_labels == 5 and other.extra["brand_new"] == 1 and other.scale_embedding
    assert cfg.num_labels == 2 and "brand_new" not in cfg.extra and not cfg.scale_embedding
    assert hash(cfg) == hash(BartConfig.from_dict(LEGACY_HUB_CONFIG))


def test_caller_dict_is_not_modified():
    d = json.loads(json.dumps(LEGACY_HUB_CONFIG))
    BartConfig.from_dict(d).replace(vocab_size=7)
    assert d == LEGACY_HUB_CONFIG


@pytest.mark.parametrize("name", ["base", "lm", "lm_untied", "cls", "qa", "causal"])
def test_4x_fixture_configs_load(name):
    cfg = BartConfig.from_json_file(f"{FIXTURES}/{name}/config.json")
    assert cfg.d_model == 16 and cfg.decoder_layers == 3 and cfg.encoder_layers == 2
    assert cfg.tie_word_embeddings == (name != "lm_untied")


def test_4x_constructor_keywords_aliases_and_attributes():
    c = BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, num_labels=5, is_decoder=True,
                   custom_key="x")
    assert c.num_labels == 5 and c.labels_given and c.is_decoder is True and c.custom_key == "x"
    assert c.num_attention_heads == 4 and c.hidden_size == 32 and c.model_type == "bart"
    assert BartConfig(hidden_size=64, encoder_attention_heads=4, decoder_attention_heads=4).d_model == 64
    assert BartConfig(label2id={"neg": 0, "pos": 1}).id2label == {0: "neg", 1: "pos"}
    with pytest.raises(ConfigError, match="disagree"):
        BartConfig(hidden_size=64, d_model=32)
    with pytest.raises(ConfigError, match="num_labels"):
        BartConfig(num_labels=0)
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        c.not_there
    assert json.loads(c.to_json_string())["is_decoder"] is True


def test_assignments_are_checked_and_a_refused_one_changes_nothing():
    c = BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4)
    before = c.to_dict()
    c.output_hidden_states = True
    c.num_labels = 2
    c.num_attention_heads = 8
    assert c.output_hidden_states and c.num_labels == 2 and c.encoder_attention_heads == 8
    for name, value, words in (("d_model", 33, "not divisible"), ("dropout", 2.0, "probability"),
                               ("normalize_before", True, "not supported"), ("num_labels", -1, "num_labels")):
        snapshot = c.to_dict()
        with pytest.raises(ConfigError, match=words):
            setattr(c, name, value)
        assert c.to_dict() == snapshot
    assert c.to_dict() != before and hash(c) == hash(BartConfig.from_dict(c.to_dict()))


def test_derived_fields_refuse_assignment_and_keyword_configs_keep_their_labels():
    c = BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4)
    with pytest.raises(AttributeError, match="num_hidden_layers is encoder_layers"):
        c.num_hidden_layers = 5
    with pytest.raises(AttributeError, match="cannot be set"):
        c.eos_token_ids = (2,)
    assert "num_hidden_layers" not in c.extra
    k = BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, is_decoder=False)
    assert k.labels_given and k.num_labels == c.num_labels == 3
    assert k.with_labels_from_weights(5) is k      # named (default) labels win over a classifier's rows
    assert hash(BartConfig.from_dict({"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4})) \
        == hash(BartConfig(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4))   # labels_given aside
