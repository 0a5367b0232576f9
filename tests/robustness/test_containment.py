"""Path containment must refuse what leaves a checkpoint without refusing the layouts that are
legitimate: symlinks inside the checkpoint, and the huggingface_hub cache, whose snapshot files are
symlinks into the repository's `blobs/` directory (a sharded checkpoint there used to be refused)."""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pytest

from convert import ConversionError, convert_checkpoint, load_flax_params
from hostile import CONFIG, flax_params, pt_dir
from tests.convert.convert_helpers import assert_bits_equal, flat


def _hub_cache(tmp_path, shards: int = 2):
    """A huggingface_hub cache holding `org/tiny` at revision main, files as blob symlinks."""
    stage = pt_dir(tmp_path / "stage", shards=shards)
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap.name)
    for f in sorted(stage.iterdir()):
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), snap / f.name)
    return tmp_path / "hub", snap


@pytest.mark.parametrize("shards", [1, 2])
def test_hub_cache_snapshots_load_and_convert(tmp_path, shards):
    from flax_bart.models import FlaxBartForConditionalGeneration

    cache, snap = _hub_cache(tmp_path, shards)
    params, _ = load_flax_params(str(snap), None, "lm")
    assert_bits_equal(flat(params), flat(flax_params()))
    convert_checkpoint("org/tiny", str(tmp_path / "out"), to="flax", cache_dir=str(cache))
    assert (tmp_path / "out" / "config.json").is_file()  # side files through blob symlinks too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FlaxBartForConditionalGeneration.from_pretrained(str(snap))
    assert_bits_equal(flat(model.params), flat(flax_params()))


def test_a_snapshot_symlink_out_of_the_blobs_is_still_refused(tmp_path):
    cache, snap = _hub_cache(tmp_path)
    (tmp_path / "secret.safetensors").write_bytes((snap / "model-00001-of-00002.safetensors").read_bytes())
    os.remove(snap / "model-00001-of-00002.safetensors")
    os.symlink(os.path.join("..", "..", "blobs", "..", "..", "..", "secret.safetensors"),
               snap / "model-00001-of-00002.safetensors")
    with pytest.raises(ConversionError, match="outside the checkpoint directory"):
        load_flax_params(str(snap), None, "lm")


def test_symlinks_that_stay_inside_the_checkpoint_are_followed(tmp_path):
    src = pt_dir(tmp_path, shards=2)
    (src / "shards").mkdir()
    os.rename(src / "model-00002-of-00002.safetensors", src / "shards" / "real.safetensors")
    os.symlink(os.path.join("shards", "real.safetensors"), src / "model-00002-of-00002.safetensors")
    params, _ = load_flax_params(str(src), None, "lm")
    assert_bits_equal(flat(params), flat(flax_params()))


def test_an_explicit_weights_file_or_config_elsewhere_is_the_callers_choice(tmp_path):
    """Containment is about what a checkpoint directory makes the converter read; a path the user
    names on the command line (a weights file, --config) is read where it is."""
    src = pt_dir(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.rename(src / "config.json", other / "config.json")
    convert_checkpoint(str(src / "model.safetensors"), str(tmp_path / "out"), to="flax",
                       config=str(other / "config.json"))
    got, _ = load_flax_params(str(tmp_path / "out"), CONFIG, "lm")
    assert_bits_equal(flat(got), flat(flax_params()))
    assert np.isfinite(flat(got)[("final_logits_bias",)]).all()
