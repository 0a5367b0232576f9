"""Against transformers (PyTorch, v5): its checkpoints convert, ours load into it with no missing or
unexpected keys and give identical outputs; and the Flax model agrees on converted weights."""

from __future__ import annotations

import os

import numpy as np
import pytest

from convert import convert_checkpoint, flax_to_pt, load_flax_params
from convert.rules import expected_flax_shapes

from convert_helpers import HEADS, FIXTURES, flat, hf_model, random_flax_params, tiny_config, write_config, write_flax_msgpack

torch = pytest.importorskip("torch")

IDS = np.array([[0, 5, 17, 9, 33, 2], [0, 8, 8, 41, 2, 1]], dtype=np.int64)


def _outputs(model, head):
    ids = torch.from_numpy(IDS)
    mask = (ids != 1).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    name = {"base": "last_hidden_state", "lm": "logits", "cls": "logits", "qa": "start_logits", "causal": "logits"}[head]
    return getattr(out, name).numpy()


def _assert_loads_cleanly(hf, head, directory):
    from convert_helpers import HF_CLASSES

    model, info = getattr(hf, HF_CLASSES[head]).from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("head", HEADS)
def test_transformers_checkpoint_round_trips_through_flax(hf, tmp_path, head, tie):
    config = tiny_config(tie_word_embeddings=tie)
    model = hf_model(hf, config, head, seed=7)
    model.save_pretrained(tmp_path / "hf")  # v5: model.safetensors without the tied copies
    summary = convert_checkpoint(tmp_path / "hf", tmp_path / "flax", to="flax")
    assert summary.head == head and not summary.missing and not summary.unexpected and not summary.unused
    params, _ = load_flax_params(tmp_path / "flax", None, head)
    sd = model.state_dict()
    if head != "causal":
        prefix = ("model",) if head != "base" else ()
        np.testing.assert_array_equal(flat(params)[prefix + ("shared", "embedding")], sd[("model." if head != "base" else "") + "shared.weight"].numpy())
    convert_checkpoint(tmp_path / "flax", tmp_path / "pt", to="pytorch")
    back = _assert_loads_cleanly(hf, head, tmp_path / "pt")
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k
    np.testing.assert_array_equal(_outputs(back, head), _outputs(model, head))


@pytest.mark.parametrize("fmt,shard", [("bin", None), ("bin", "3KB"), ("safetensors", "3KB")])
def test_our_pytorch_output_loads_into_transformers(hf, tmp_path, fmt, shard):
    config = tiny_config()
    write_flax_msgpack(tmp_path / "src", random_flax_params(config, "lm", seed=4))
    write_config(tmp_path / "src", config)
    convert_checkpoint(tmp_path / "src", tmp_path / "pt", to="pytorch", format=fmt, max_shard_size=shard)
    model = _assert_loads_cleanly(hf, "lm", tmp_path / "pt")
    params, _ = load_flax_params(tmp_path / "src", config, "lm")
    want = flax_to_pt(params, config, "lm")
    assert set(model.state_dict()) == set(want)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), want[k], err_msg=k)
    if fmt == "bin" and shard is None:   # the tied copies are one storage, saved once (as torch.save does)
        state = torch.load(tmp_path / "pt" / "pytorch_model.bin", weights_only=True)
        tied = ["model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                "lm_head.weight"]
        assert len({state[k].untyped_storage().data_ptr() for k in tied}) == 1


def test_old_bin_with_all_four_tied_copies_converts(hf, tmp_path):
    config = tiny_config()
    model = hf_model(hf, config, "lm", seed=3)
    os.makedirs(tmp_path / "old")
    state = model.state_dict()
    assert {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
            "lm_head.weight"} <= set(state)
    torch.save(state, tmp_path / "old" / "pytorch_model.bin")
    write_config(tmp_path / "old", config)
    summary = convert_checkpoint(tmp_path / "old", tmp_path / "flax", to="flax")
    assert summary.tied == {"model/shared/embedding": ["model.shared.weight", "model.decoder.embed_tokens.weight",
                                                       "model.encoder.embed_tokens.weight", "lm_head.weight"]}
    assert summary.target["tensors"] == len(expected_flax_shapes(config, "lm"))
    convert_checkpoint(tmp_path / "flax", tmp_path / "pt", to="pytorch")
    np.testing.assert_array_equal(_outputs(_assert_loads_cleanly(hf, "lm", tmp_path / "pt"), "lm"), _outputs(model, "lm"))


@pytest.mark.parametrize("name,head", [("lm", "lm"), ("lm_untied", "lm"), ("lm_sharded", "lm"), ("qa", "qa"), ("cls", "cls")])
def test_4x_flax_checkpoints_convert_to_transformers_with_4x_outputs(hf, tmp_path, name, head):
    convert_checkpoint(os.path.join(FIXTURES, name), tmp_path / "pt", to="pytorch")
    model = _assert_loads_cleanly(hf, head, tmp_path / "pt")
    z = np.load(os.path.join(FIXTURES, name, "expected_outputs.npz"))
    ids, mask = torch.from_numpy(z["input_ids"]).long(), torch.from_numpy(z["attention_mask"]).long()
    with torch.no_grad():
        if head == "lm":
            out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.from_numpy(z["decoder_input_ids"]).long(),
                        decoder_attention_mask=torch.from_numpy(z["decoder_attention_mask"]).long())
            got, want = out.logits.numpy(), z["logits"]
        elif head == "qa":
            got, want = model(input_ids=ids, attention_mask=mask).start_logits.numpy(), z["start_logits"]
        else:
            got, want = model(input_ids=ids, attention_mask=mask).logits.numpy(), z["logits"]
    if head == "qa":  # padded positions carry no meaning (see REFERENCE-FACTS); compare where the mask is on
        keep = z["attention_mask"].astype(bool)
        got, want = got[keep], want[keep]
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_flax_model_gives_transformers_outputs_on_converted_weights(hf, tmp_path):
    models = pytest.importorskip("flax_bart.models")
    config = tiny_config()
    model = hf_model(hf, config, "lm", seed=11)
    model.save_pretrained(tmp_path / "hf")
    params, summary = load_flax_params(tmp_path / "hf", None, "lm")
    assert summary.source["framework"] == "pt"
    flax_model = models.FlaxBartForConditionalGeneration(config, _do_init=False)
    ids = IDS.astype(np.int32)
    mask = (ids != 1).astype(np.int32)
    out = flax_model(ids, attention_mask=mask, params=params)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(mask).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(out.logits), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("labels", [2, 5])
def test_the_label_count_read_from_the_weights_is_written_into_the_output_config(hf, tmp_path, labels):
    """transformers v5 leaves two labels out of config.json, and 4.x then built three: the converted
    config.json names the count the classifier's rows gave, so every reader builds the same head."""
    import json

    model = hf_model(hf, tiny_config(id2label={i: f"LABEL_{i}" for i in range(labels)}), "cls")
    model.save_pretrained(tmp_path / "src")
    src_cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    for key in ("id2label", "label2id", "num_labels"):
        src_cfg.pop(key, None)
    (tmp_path / "src" / "config.json").write_text(json.dumps(src_cfg))   # as v5 writes a 2-label config
    convert_checkpoint(tmp_path / "src", tmp_path / "flax", to="flax")
    out_cfg = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert out_cfg["id2label"] == {str(i): f"LABEL_{i}" for i in range(labels)}
    assert out_cfg["label2id"] == {f"LABEL_{i}": i for i in range(labels)}
    assert {k: v for k, v in out_cfg.items() if k not in ("id2label", "label2id")} == src_cfg
    convert_checkpoint(tmp_path / "flax", tmp_path / "back", to="pytorch")
    back = _assert_loads_cleanly(hf, "cls", tmp_path / "back")
    assert back.config.num_labels == labels
    np.testing.assert_array_equal(_outputs(back, "cls"), _outputs(model, "cls"))
