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


def test_float64_weights_are_not_narrowed_into_orbax_silently(tmp_path, capsys):
    """JAX holds float64 only with x64 on: a float64 source is refused (exit 2, DST not created) unless
    --dtype asks for the cast."""
    from safetensors.numpy import save_file

    src = tmp_path / "pt"
    torch_model("qa", seed=4).save_pretrained(src)
    wide = {k: v.astype(np.float64) for k, v in load_file(src / "model.safetensors").items()}
    save_file(wide, src / "model.safetensors", metadata={"format": "pt"})
    before = (src / "model.safetensors").read_bytes()
    for cast in ([], ["--dtype", "float64"]):   # as stored, or cast to float64 on purpose: narrowed the same
        assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax", "--quiet", *cast]) == 2
        err = capsys.readouterr().err
        assert "tensors would be float64" in err and "narrow float64 to float32" in err and "Traceback" not in err
        assert not (tmp_path / "orbax").exists() and (src / "model.safetensors").read_bytes() == before
    assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax", "--dtype", "float32", "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "back"), "--to", "pytorch", "--quiet"]) == 0
    back = load_file(tmp_path / "back" / "model.safetensors")
    for k, v in wide.items():
        np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)


def test_orbax_source_refuses_links_out_and_names_a_broken_description(tmp_path, capsys):
    """An orbax directory comes from a stranger like any checkpoint: a side file linked to a file
    elsewhere is not copied into the output, and its params folder may not lead out of it."""
    import shutil

    src = tmp_path / "pt"
    torch_model("qa", seed=4).save_pretrained(src)
    assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax", "--quiet"]) == 0
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    linked = tmp_path / "linked"
    shutil.copytree(tmp_path / "orbax", linked)
    (linked / "vocab.json").symlink_to(secret)
    assert main(["convert", str(linked), str(tmp_path / "out"), "--to", "pytorch", "--quiet"]) == 2
    assert "'vocab.json' resolves to" in capsys.readouterr().err and not (tmp_path / "out").exists()

    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "orbax", moved)
    shutil.rmtree(moved / "params")
    (moved / "params").symlink_to(tmp_path / "orbax" / "params")
    assert main(["convert", str(moved), str(tmp_path / "out"), "--to", "pytorch", "--quiet"]) == 2
    assert "orbax params directory 'params' resolves to" in capsys.readouterr().err

    (linked / "vocab.json").unlink()
    (linked / "flax_bart_orbax.json").write_text("{")
    assert main(["convert", str(linked), str(tmp_path / "out"), "--to", "pytorch", "--quiet"]) == 2
    assert f"{linked / 'flax_bart_orbax.json'}: not a flax-bart-orbax description (invalid JSON" in capsys.readouterr().err


def test_orbax_honours_head_and_the_allow_flags(tmp_path, capsys):
    """--head, --allow-unexpected and --allow-missing-head mean the same with orbax as without."""
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "lm"
    tm = torch_model("lm", seed=4)
    tm.save_pretrained(src)
    assert main(["convert", str(src), str(tmp_path / "orbax"), "--to", "orbax", "--quiet"]) == 0
    # another head than the stored one: refused by name, as from the PyTorch checkpoint itself
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "cls"), "--to", "pytorch", "--head", "cls"]) == 2
    assert "classification_head" in capsys.readouterr().err and not (tmp_path / "cls").exists()
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "base"), "--to", "pytorch", "--head", "base",
                 "--quiet"]) == 0
    assert not any(k.startswith(("lm_head", "final_logits_bias")) for k in load_file(tmp_path / "base" /
                                                                                     "model.safetensors"))
    # an unexpected tensor: refused unless --allow-unexpected
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "config.json").write_text((src / "config.json").read_text())
    sd = {k: v.clone() for k, v in tm.state_dict().items() if "embed_tokens" not in k and k != "lm_head.weight"}
    sd["model.encoder.version"] = torch.tensor([2.0])
    save_file(sd, extra / "model.safetensors", metadata={"format": "pt"})
    assert main(["convert", str(extra), str(tmp_path / "o2"), "--to", "orbax"]) == 2
    assert "model.encoder.version" in capsys.readouterr().err
    assert main(["convert", str(extra), str(tmp_path / "o2"), "--to", "orbax", "--allow-unexpected", "--quiet"]) == 0
    assert main(["convert", str(src), str(tmp_path / "o3"), "--to", "orbax", "--allow-missing-head"]) == 2
    assert "--allow-missing-head with --to orbax" in capsys.readouterr().err


def test_a_failed_orbax_write_is_one_paragraph_without_orbax_s_traceback(tmp_path):
    """A full disk (here a file-size limit: EFBIG) while orbax writes: exit 2, nothing left, and no
    traceback logged by orbax's writer thread."""
    import os
    import resource
    import subprocess
    import sys

    src = tmp_path / "src"
    torch_model("lm", seed=4, vocab_size=20000, d_model=64).save_pretrained(src)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "convert", str(src), str(tmp_path / "out"), "--to", "orbax"],
                          capture_output=True, text=True, preexec_fn=limit, cwd=root, timeout=300)
    assert done.returncode == 2, done.stderr
    # the one-paragraph message and nothing else: no traceback from orbax's thread, tensorstore or asyncio
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(("flax-bart convert: cannot write the output:", "flax-bart convert: error:"))
    assert lines[1].startswith("DST was left as it was"), lines
    assert not (tmp_path / "out").exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


_LEFTOVER = """
import asyncio, gc, resource, sys
from flax_bart.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))
code = main(["convert", sys.argv[1], sys.argv[2], "--to", "orbax"] + sys.argv[3:])
# a future of a closed loop whose exception nobody retrieved, collected after the command returned
# (as orbax's may be, at exit): asyncio logs it unless the failed command quietened it
loop = asyncio.new_event_loop()
fut = loop.create_future()
fut.set_exception(OSError("disk full"))
loop.close()
del fut
gc.collect()
sys.exit(code)
"""


def test_futures_left_by_a_failed_orbax_write_are_not_logged_after_the_message(tmp_path):
    """The late asyncio log seen in 1 CI run of about 10, made certain: a future with an unretrieved
    exception collected after the failed command; with --debug it is logged (so the check can fail)."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    torch_model("lm", seed=4, vocab_size=20000, d_model=64).save_pretrained(src)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def run(name, *extra):
        return subprocess.run([sys.executable, "-c", _LEFTOVER, str(src), str(tmp_path / name), *extra],
                              capture_output=True, text=True, cwd=root, timeout=300)

    quiet = run("out")
    assert quiet.returncode == 2 and len(quiet.stderr.splitlines()) == 2, quiet.stderr[-3000:]
    loud = run("out2", "--debug")
    assert loud.returncode == 2 and "exception was never retrieved" in loud.stderr, loud.stderr[-3000:]


def test_the_unretrieved_future_filter_drops_only_those_records():
    import logging

    from convert.cli import _UnretrievedFutures

    def record(msg):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    f = _UnretrievedFutures()
    assert not f.filter(record("_GatheringFuture exception was never retrieved\nfuture: <...>"))
    assert not f.filter(record("Task exception was never retrieved"))
    assert f.filter(record("Executing <Task> took 0.2 seconds"))
    assert f.filter(record("Unclosed event loop; exception was never retrieved elsewhere"))
