"""The mapping table against ground truth: 4.x Flax checkpoints and transformers' PyTorch models."""

from __future__ import annotations

import os

import pytest

from flax_bart.config import BartConfig

from convert import rules
from convert.errors import ConversionError

from convert_helpers import FIXTURES, HEADS, hf_model, read_json, tiny_config

FIXTURE_HEADS = {"base": "base", "lm": "lm", "lm_untied": "lm", "cls": "cls", "qa": "qa", "causal": "causal"}


def fixture_config(name: str) -> BartConfig:
    raw = read_json(os.path.join(FIXTURES, name, "config.json"))
    raw.pop("is_decoder", None)  # 4.x wrote is_decoder=true for ForCausalLM; layout is unaffected
    return BartConfig.from_dict(raw)


@pytest.mark.parametrize("name", sorted(FIXTURE_HEADS))
def test_expected_flax_shapes_equal_4x_checkpoint_layout(name):
    keys = read_json(os.path.join(FIXTURES, name, "param_keys.json"))
    want = {tuple(e["path"].split("/")): tuple(e["shape"]) for e in keys}
    got = rules.expected_flax_shapes(fixture_config(name), FIXTURE_HEADS[name])
    assert got == want
    assert all(all(isinstance(k, str) for k in path) for path in got)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("head", HEADS)
def test_expected_pt_shapes_equal_transformers_state_dict(hf, head, tie):
    config = tiny_config(tie_word_embeddings=tie)
    model = hf_model(hf, config, head)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert rules.expected_pt_shapes(config, head, tied="all") == want


@pytest.mark.parametrize("head", HEADS)
def test_dropped_copies_are_what_transformers_v5_saves(hf, head, tmp_path):
    from safetensors import safe_open

    config = tiny_config()
    hf_model(hf, config, head).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        saved = set(f.keys())
    assert set(rules.expected_pt_shapes(config, head, tied="drop")) == saved


def test_rule_table_counts_for_a_tiny_config():
    config = tiny_config()  # encoder 2 layers, decoder 1 layer
    params = rules.head_params(config, "lm")
    per_rule = {}
    for p in params:
        per_rule[p.rule] = per_rule.get(p.rule, 0) + 1
    # encoder layer: 4 attn + fc1 + fc2 = 6 linears; decoder layer: 8 attn + 2 = 10
    assert per_rule == {"embedding": 3, "layernorm_weight": 2 * 2 + 3 + 2, "layernorm_bias": 2 * 2 + 3 + 2,
                        "linear_weight": 2 * 6 + 10, "linear_bias": 2 * 6 + 10, "verbatim": 1}
    fc1 = next(p for p in params if p.pt == "encoder.layers.1.fc1.weight")
    assert fc1.flax == ("encoder", "layers", "1", "fc1", "kernel")
    assert (fc1.flax_shape, fc1.pt_shape) == ((16, 24), (24, 16))


def test_head_only_prefixes():
    tied, untied = tiny_config(), tiny_config(tie_word_embeddings=False)
    assert rules.head_only_prefixes(tied, "lm") == ("final_logits_bias",)
    assert rules.head_only_prefixes(untied, "lm") == ("final_logits_bias", "lm_head")
    assert rules.head_only_prefixes(tied, "qa") == ("qa_outputs",)
    assert rules.head_only_prefixes(tied, "cls") == ("classification_head",)
    assert rules.head_only_prefixes(tied, "base") == ()
    assert rules.head_only_prefixes(untied, "causal") == ("lm_head",)


def test_unknown_head_is_refused():
    with pytest.raises(ConversionError, match="head 'seq2seq' is not one of"):
        rules.expected_flax_shapes(tiny_config(), "seq2seq")
