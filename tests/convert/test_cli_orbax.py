"""`flax-bart convert --to orbax` and back: exact round trip through an orbax-checkpoint directory."""

import numpy as np
from safetensors.numpy import load_file

from flax_bart.cli import main
from tests.bart_helpers import torch_model


def test_convert_to_orbax_and_back_is_exact(tmp_path, capsys):
    src = tmp_path / "pt"
    torch_model("qa", seed=4).save_pretrained(src)
    assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax", "--quiet"]) == 0
    assert (tmp_path / "orbax" / "flax_bart_orbax.json").is_file() and (tmp_path / "orbax" / "config.json").is_file()
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "back"), "--to", "pytorch", "--quiet"]) == 0
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # An orbax source cannot be converted to orbax again; a bad source is exit 2 without traceback.
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "again"), "--to", "orbax"]) == 2
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "x"), "--to", "orbax"]) == 2
    assert "Traceback" not in capsys.readouterr().err
