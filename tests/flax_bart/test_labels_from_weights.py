"""A transformers-v5 binary classifier: its config.json names no labels (v5 drops num_labels=2 as a
default), BART's own default is 3, and `classification_head.out_proj` has 2 rows. flax-bart takes the
count from the weights; labels the config or the caller name still win, and a real disagreement is
still refused."""

import json
import logging

import numpy as np
import pytest
import torch

from bart_helpers import torch_model
from convert import ConversionError, convert_checkpoint, load_flax_params
from flax_bart import FlaxBartForSequenceClassification
from flax_bart.config import BartConfig
from parity.checkpoint import open_checkpoint

EOS = 2


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """(directory, torch model) of a v5-written 2-label classifier, as v5 saves it."""
    d = tmp_path_factory.mktemp("cls2")
    model = torch_model("cls", num_labels=2)
    model.save_pretrained(d)
    data = json.loads((d / "config.json").read_text())
    for key in ("num_labels", "id2label", "label2id"):  # what transformers 5.24 writes (and older v5 may not)
        data.pop(key, None)
    (d / "config.json").write_text(json.dumps(data))
    return d, model


def _inputs():
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 99, (2, 9)).astype(np.int64)
    ids[:, -1] = EOS
    return ids, np.ones_like(ids)


def test_config_without_labels_is_marked():
    assert BartConfig.from_dict({}).labels_given is False and BartConfig.from_dict({}).num_labels == 3
    assert BartConfig.from_dict({"num_labels": 3}).labels_given is True
    assert BartConfig.from_dict({}).replace(num_labels=2).labels_given is True
    cfg = BartConfig.from_dict({})
    assert "labels_given" not in cfg.to_dict()
    assert BartConfig.from_dict(cfg.to_dict()).labels_given is True  # a saved config names its labels


def test_v5_binary_classifier_loads_without_keywords_and_matches_pytorch(binary, caplog):
    d, tmodel = binary
    with caplog.at_level(logging.WARNING, logger="flax_bart"):
        model = FlaxBartForSequenceClassification.from_pretrained(d)
    assert model.config.num_labels == 2
    assert [r.getMessage() for r in caplog.records if "names no labels" in r.getMessage()] == [
        f"config.json names no labels; {d}'s classification_head.out_proj has 2 rows: num_labels=2"]
    ids, mask = _inputs()
    with torch.no_grad():
        want = tmodel(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    got = np.asarray(model(ids.astype(np.int32), attention_mask=mask.astype(np.int32)).logits)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_named_labels_win_and_real_disagreements_are_refused(binary, tmp_path):
    d, _ = binary
    assert FlaxBartForSequenceClassification.from_pretrained(d, num_labels=2).config.num_labels == 2
    with pytest.raises((ValueError, ConversionError), match=r"shape \[2, 16\], but config.json implies \[5, 16\]"):
        FlaxBartForSequenceClassification.from_pretrained(d, num_labels=5)
    named = tmp_path / "named5"
    named.mkdir()
    for f in d.iterdir():
        (named / f.name).write_bytes(f.read_bytes())
    data = json.loads((named / "config.json").read_text())
    data["id2label"] = {str(i): f"L{i}" for i in range(5)}
    (named / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"classification_head.out_proj.weight: shape \[2, 16\]"):
        FlaxBartForSequenceClassification.from_pretrained(named)


def test_convert_both_ways_and_parity_checkpoint_use_the_weights_count(binary, tmp_path):
    d, _ = binary
    summary = convert_checkpoint(str(d), str(tmp_path / "flax"), to="flax")
    assert summary.target["tensors"] > 0
    params, _ = load_flax_params(str(tmp_path / "flax"), None, "cls")
    assert params["classification_head"]["out_proj"]["kernel"].shape == (16, 2)
    convert_checkpoint(str(tmp_path / "flax"), str(tmp_path / "back"), to="pytorch")
    from safetensors.numpy import load_file

    a, b = load_file(str(d / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)
    assert open_checkpoint(d).config.num_labels == 2
