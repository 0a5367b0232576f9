"""In-memory pt_to_flax / flax_to_pt: bit-exact round trips, head adaptation, strictness, summary."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from convert import ConversionError, flax_to_pt, pt_to_flax
from convert.rules import expected_flax_shapes, expected_pt_shapes, head_only_prefixes

from convert_helpers import DTYPES, HEADS, assert_bits_equal, flat, random_flax_params, tiny_config


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("head", HEADS)
def test_round_trips_are_bit_exact(head, dtype, tie):
    config = tiny_config(tie_word_embeddings=tie)
    params = random_flax_params(config, head, DTYPES[dtype], seed=1)
    snapshot = copy.deepcopy(params)
    pt = flax_to_pt(params, config, head)
    assert {k: v.shape for k, v in pt.items()} == expected_pt_shapes(config, head)
    assert all(v.dtype == DTYPES[dtype] for v in pt.values())
    back = pt_to_flax(pt, config, head)  # Flax -> PT -> Flax
    assert_bits_equal(flat(back), flat(params))
    assert_bits_equal(flat(params), flat(snapshot))  # the input was not modified
    again = flax_to_pt(back, config, head)  # PT -> Flax -> PT
    assert_bits_equal(again, pt)


def test_kernels_are_transposed_and_names_follow_the_table():
    config = tiny_config()
    params = random_flax_params(config, "lm")
    pt = flax_to_pt(params, config, "lm")
    k = params["model"]["decoder"]["layers"]["0"]["encoder_attn"]["out_proj"]["kernel"]
    np.testing.assert_array_equal(pt["model.decoder.layers.0.encoder_attn.out_proj.weight"], k.T)
    ln = params["model"]["encoder"]["layers"]["1"]["final_layer_norm"]["scale"]
    np.testing.assert_array_equal(pt["model.encoder.layers.1.final_layer_norm.weight"], ln)
    emb = params["model"]["shared"]["embedding"]
    for key in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                "lm_head.weight"):
        np.testing.assert_array_equal(pt[key], emb)
    assert pt["final_logits_bias"].shape == (1, 64)


def test_torch_tensors_in_numpy_out_and_caller_dict_untouched():
    import torch

    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "qa", DTYPES["bfloat16"]), config, "qa")
    tensors = {k: torch.from_numpy(v.view(np.int16)).view(torch.bfloat16) for k, v in pt.items()}
    before = {k: t.clone() for k, t in tensors.items()}
    params, summary = pt_to_flax(tensors, config, "qa", return_summary=True)
    leaf = params["qa_outputs"]["kernel"]
    assert isinstance(leaf, np.ndarray) and leaf.dtype == DTYPES["bfloat16"]
    leaf[...] = 0  # the output owns its memory
    assert all(torch.equal(tensors[k].view(torch.int16), before[k].view(torch.int16)) for k in tensors)
    assert summary.rules["linear_weight"] == 2 * 6 + 10 + 1
    assert summary.tied == {"model/shared/embedding": ["model.shared.weight", "model.decoder.embed_tokens.weight",
                                                       "model.encoder.embed_tokens.weight"]}


def test_base_checkpoint_into_head_models_and_back():
    config = tiny_config()
    base_pt = flax_to_pt(random_flax_params(config, "base"), config, "base")
    assert "shared.weight" in base_pt and not any(k.startswith("model.") for k in base_pt)
    with pytest.raises(ConversionError, match=r"missing .*'qa_outputs.weight', 'qa_outputs.bias'"):
        pt_to_flax(base_pt, config, "qa")
    qa, summary = pt_to_flax(base_pt, config, "qa", allow_missing=head_only_prefixes(config, "qa"),
                             return_summary=True)
    assert summary.missing == ["qa_outputs/kernel", "qa_outputs/bias"]
    assert set(flat(qa)) == set(expected_flax_shapes(config, "qa")) - {("qa_outputs", "kernel"), ("qa_outputs", "bias")}
    np.testing.assert_array_equal(qa["model"]["shared"]["embedding"], base_pt["shared.weight"])
    # head model -> base: the prefix is stripped and the head's tensors are reported unused
    lm_pt = flax_to_pt(random_flax_params(config, "lm"), config, "lm")
    base, summary = pt_to_flax(lm_pt, config, "base", return_summary=True)
    assert set(flat(base)) == set(expected_flax_shapes(config, "base"))
    assert summary.unused == ["final_logits_bias"] and summary.source_head == "lm"


def test_missing_backbone_is_an_error_even_with_head_allowance():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "qa"), config, "qa")
    del pt["model.encoder.layers.1.fc2.bias"]
    with pytest.raises(ConversionError, match=r"model\.encoder\.layers\.1\.fc2\.bias"):
        pt_to_flax(pt, config, "qa", allow_missing=head_only_prefixes(config, "qa"))


def test_seq2seq_checkpoint_as_causal_lm_keeps_the_decoder():
    config = tiny_config()
    lm_params = random_flax_params(config, "lm")
    lm_pt = flax_to_pt(lm_params, config, "lm", tied="drop")
    causal, summary = pt_to_flax(lm_pt, config, "causal", return_summary=True)
    assert set(flat(causal)) == set(expected_flax_shapes(config, "causal"))
    np.testing.assert_array_equal(causal["model"]["decoder"]["embed_tokens"]["embedding"],
                                  lm_params["model"]["shared"]["embedding"])
    assert any(u.startswith("model.encoder.layers.0.") for u in summary.unused)
    assert "final_logits_bias" in summary.unused
    # Flax side too: a 4.x seq2seq tree converts to the causal layout and to its PyTorch keys
    causal_pt = flax_to_pt(lm_params, config, "causal", tied="drop")
    assert set(causal_pt) == set(expected_pt_shapes(config, "causal", tied="drop"))
    np.testing.assert_array_equal(causal_pt["model.decoder.embed_tokens.weight"], lm_params["model"]["shared"]["embedding"])


def test_flax_trees_of_another_head_are_adapted():
    config = tiny_config()
    lm = random_flax_params(config, "lm")
    base_pt = flax_to_pt(lm, config, "base")  # strips model/ and drops final_logits_bias
    assert set(base_pt) == set(expected_pt_shapes(config, "base"))
    base = random_flax_params(config, "base")
    cls_pt = flax_to_pt({"params": base}, config, "cls", allow_missing=["classification_head"])
    assert "model.shared.weight" in cls_pt and "classification_head.dense.weight" not in cls_pt


def test_tied_copies_that_differ_are_refused():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "lm"), config, "lm")
    pt["model.decoder.embed_tokens.weight"] = pt["model.decoder.embed_tokens.weight"].copy()
    pt["model.decoder.embed_tokens.weight"][3, 2] += 1.0
    with pytest.raises(ConversionError, match=r"tied copies differ: model.decoder.embed_tokens.weight is not equal to model.shared.weight \(1 of 1024 values differ, max \|diff\| 1"):
        pt_to_flax(pt, config, "lm")


def test_shapes_contradicting_the_config_are_all_reported():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "lm"), config, "lm", tied="drop")
    pt["model.encoder.layers.0.fc1.weight"] = np.zeros((32, 16), np.float32)
    pt["model.shared.weight"] = np.zeros((65, 16), np.float32)
    with pytest.raises(ConversionError) as e:
        pt_to_flax(pt, config, "lm")
    msg = str(e.value)
    assert "2 problems" in msg
    assert "model.encoder.layers.0.fc1.weight: shape [32, 16], but config.json implies [24, 16] (d_model=16, encoder_ffn_dim=24)" in msg
    assert "model.shared.weight: shape [65, 16], but config.json implies [64, 16] (vocab_size=64, d_model=16)" in msg


def test_unexpected_keys_fail_unless_allowed():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "lm"), config, "lm")
    pt["model.encoder.layers.2.fc1.weight"] = np.zeros((24, 16), np.float32)
    pt["some.other.tensor"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected keys.*model.encoder.layers.2.fc1.weight \(config.json has encoder_layers=2\)"):
        pt_to_flax(pt, config, "lm")
    params, summary = pt_to_flax(pt, config, "lm", allow_unexpected=True, return_summary=True)
    assert summary.unexpected == ["model.encoder.layers.2.fc1.weight (config.json has encoder_layers=2)", "some.other.tensor"]
    assert set(flat(params)) == set(expected_flax_shapes(config, "lm"))


def test_non_float_parameter_is_refused():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "base"), config, "base")
    pt["encoder.layernorm_embedding.bias"] = np.zeros(16, np.int32)
    with pytest.raises(ConversionError, match="encoder.layernorm_embedding.bias: dtype int32; BART parameters are floating point"):
        pt_to_flax(pt, config, "base")


def test_nan_and_inf_are_converted_faithfully_and_counted():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "lm"), config, "lm")
    w = pt["model.encoder.layers.0.self_attn.k_proj.weight"]
    w[0, :3] = np.nan
    w[1, 0], w[2, 0] = np.inf, -np.inf
    params, summary = pt_to_flax(pt, config, "lm", return_summary=True)
    kernel = params["model"]["encoder"]["layers"]["0"]["self_attn"]["k_proj"]["kernel"]
    assert kernel.T.tobytes() == w.tobytes()
    assert summary.nonfinite == {"model/encoder/layers/0/self_attn/k_proj/kernel": {"nan": 3, "inf": 2}}
    assert (summary.nan_total, summary.inf_total) == (3, 2)


def test_dtype_casts_floating_tensors_only_and_counts_them():
    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "base"), config, "base")
    params, summary = pt_to_flax(pt, config, "base", dtype="bf16", return_summary=True)
    leaves = flat(params)
    assert all(v.dtype == DTYPES["bfloat16"] for v in leaves.values())
    assert summary.casts == {"float32->bfloat16": len(leaves)}
    x = pt["encoder.layers.0.fc2.bias"]
    np.testing.assert_array_equal(params["encoder"]["layers"]["0"]["fc2"]["bias"], x.astype(DTYPES["bfloat16"]))
    with pytest.raises(ConversionError, match="dtype 'int8' is not supported"):
        pt_to_flax(pt, config, "base", dtype="int8")


def test_borrow_hands_out_the_callers_arrays_only_when_asked():
    from convert.tree import convert_tree

    config = tiny_config()
    pt = flax_to_pt(random_flax_params(config, "lm", seed=3), config, "lm")
    key = "model.encoder.layers.0.self_attn_layer_norm.weight"   # no transpose, no cast: passed through
    copied, _ = convert_tree(pt, "pt", config, "qa", "pt", tied="drop", allow_missing=head_only_prefixes(config, "qa"))
    borrowed, _ = convert_tree(pt, "pt", config, "qa", "pt", tied="drop", allow_missing=head_only_prefixes(config, "qa"),
                               borrow=True)
    assert not np.shares_memory(copied[key], pt[key])
    assert borrowed[key] is pt[key]
    assert_bits_equal(borrowed, copied)
    kernel = "model.encoder.layers.0.fc1.weight"
    to_flax, _ = convert_tree(pt, "pt", config, "lm", "flax", borrow=True)   # a transposed kernel is new memory
    assert not np.shares_memory(to_flax[("model", "encoder", "layers", "0", "fc1", "kernel")], pt[kernel])
