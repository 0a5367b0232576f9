"""The parameter tree of every class is the 4.x Flax BART layout, key for key and shape for shape."""

import json

import pytest

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES

FIXTURES = "tests/fixtures/bart4x"
# Fixture config: vocab 99, d 16, enc 2 layers (ffn 24), dec 3 layers (ffn 20), max_pos 40, 3 labels.
V, D, EF, DF, P = 99, 16, 24, 20, 42


def _attn(prefix):
    out = {}
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out[f"{prefix}/{p}/kernel"] = (D, D)
        out[f"{prefix}/{p}/bias"] = (D,)
    return out


def _ln(prefix):
    return {f"{prefix}/scale": (D,), f"{prefix}/bias": (D,)}


def _layer(prefix, ffn, cross):
    out = {**_attn(f"{prefix}/self_attn"), **_ln(f"{prefix}/self_attn_layer_norm"),
           f"{prefix}/fc1/kernel": (D, ffn), f"{prefix}/fc1/bias": (ffn,),
           f"{prefix}/fc2/kernel": (ffn, D), f"{prefix}/fc2/bias": (D,), **_ln(f"{prefix}/final_layer_norm")}
    if cross:
        out.update(_attn(f"{prefix}/encoder_attn"))
        out.update(_ln(f"{prefix}/encoder_attn_layer_norm"))
    return out


def _stack(prefix, n, ffn, cross):
    out = {f"{prefix}/embed_positions/embedding": (P, D), **_ln(f"{prefix}/layernorm_embedding")}
    for i in range(n):
        out.update(_layer(f"{prefix}/layers/{i}", ffn, cross))
    return out


def _backbone(prefix=""):
    return {f"{prefix}shared/embedding": (V, D), **_stack(f"{prefix}encoder", 2, EF, False),
            **_stack(f"{prefix}decoder", 3, DF, True)}


EXPECTED = {
    "base": _backbone(),
    "lm": {**_backbone("model/"), "final_logits_bias": (1, V)},
    "lm_untied": {**_backbone("model/"), "final_logits_bias": (1, V), "lm_head/kernel": (D, V)},
    "cls": {**_backbone("model/"), "classification_head/dense/kernel": (D, D), "classification_head/dense/bias": (D,),
            "classification_head/out_proj/kernel": (D, 3), "classification_head/out_proj/bias": (3,)},
    "qa": {**_backbone("model/"), "qa_outputs/kernel": (D, 2), "qa_outputs/bias": (2,)},
    "causal": {**_stack("model/decoder", 3, DF, True), "model/decoder/embed_tokens/embedding": (V, D)},
}


def _tree(name):
    cfg = BartConfig.from_json_file(f"{FIXTURES}/{name}/config.json")
    head = "lm" if name.startswith("lm") else name
    model = MODEL_CLASSES[head](cfg, _do_init=False)
    return {"/".join(k): tuple(v.shape) for k, v in model.params_shape_tree().items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tree_equals_hard_coded_4x_layout(name):
    assert _tree(name) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tree_equals_tree_written_by_transformers_4x(name):
    keys = json.load(open(f"{FIXTURES}/{name}/param_keys.json"))
    assert _tree(name) == {e["path"]: tuple(e["shape"]) for e in keys}


@pytest.mark.parametrize("head", ["base", "lm", "cls", "qa", "causal"])
def test_untied_causal_and_asymmetric_widths(head):
    cfg = BartConfig(vocab_size=50, d_model=12, encoder_layers=1, decoder_layers=2, encoder_attention_heads=3,
                     decoder_attention_heads=2, encoder_ffn_dim=7, decoder_ffn_dim=5, max_position_embeddings=9,
                     tie_word_embeddings=False)
    tree = {"/".join(k): tuple(v.shape) for k, v in MODEL_CLASSES[head](cfg, _do_init=False).params_shape_tree().items()}
    has_lm_head = head in ("lm", "causal")
    assert ("lm_head/kernel" in tree) == has_lm_head
    if has_lm_head:
        assert tree["lm_head/kernel"] == (12, 50)
    prefix = "" if head == "base" else "model/"
    assert tree[f"{prefix}decoder/layers/1/fc1/kernel"] == (12, 5)
    if head != "causal":
        assert tree[f"{prefix}encoder/layers/0/fc1/kernel"] == (12, 7)
        assert f"{prefix}encoder/layers/1/fc1/kernel" not in tree


def test_cache_tree_matches_4x_layout():
    """The self-attention cache keys of 4.x, plus the cross-attention K/V computed once."""
    cfg = BartConfig.from_json_file(f"{FIXTURES}/lm/config.json")
    model = MODEL_CLASSES["lm"](cfg)
    enc = model.encode(__import__("numpy").full((2, 5), 5, "int32"))
    from flax import traverse_util
    cache = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(model.init_cache(2, 8, enc)).items()}
    expected_4x = {e["path"]: tuple(e["shape"]) for e in json.load(open(f"{FIXTURES}/lm/cache_keys.json"))}
    assert {k: v for k, v in cache.items() if "/self_attn/" in k} == expected_4x
    assert {k: v for k, v in cache.items() if "/encoder_attn/" in k} == {
        f"model/decoder/layers/{i}/encoder_attn/{n}": (2, 5, 2, 8) for i in range(3) for n in ("cached_key", "cached_value")
    }
