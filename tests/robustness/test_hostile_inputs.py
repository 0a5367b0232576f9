"""Every hostile case of the corpus against every entry point that reads it: a clear error that names
the file / key / field (exit code 2 from the CLIs, no traceback), no code executed, nothing written
or changed anywhere (the output directory is never created), the input untouched."""

from __future__ import annotations

import re

import pytest

from hostile_entry import changes, parity_cli_available, run_entry, snapshot
from corpus import CASES

PARITY = parity_cli_available()
MATRIX = [(name, entry) for name, case in sorted(CASES.items()) for entry in case.entries
          if entry != "parity" or PARITY]


@pytest.mark.parametrize("name,entry", MATRIX, ids=[f"{n}-{e}" for n, e in MATRIX])
def test_hostile_input_is_refused_cleanly(name, entry, tmp_path, monkeypatch):
    case = CASES[name]
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)  # relative paths an entry point might write to land under the snapshot
    marker = root / "PWNED"
    src = case.build(root, marker)
    before = snapshot(root)
    out = root / "out"

    outcome = run_entry(entry, src, out, case.to)

    assert outcome.kind == "refused", f"{entry} did not refuse {name} cleanly: {outcome}"
    assert re.search(case.expect, outcome.message, re.DOTALL), (
        f"{entry} refused {name} but the message does not name what is wrong:\n  want /{case.expect}/\n"
        f"  got  {outcome.message}")
    assert not marker.exists(), f"{name}: the payload ran ({marker} was created)"
    assert not out.exists(), f"{entry} created the output directory for refused input {name}"
    assert changes(before, snapshot(root)) == [], f"{entry} changed files while refusing {name}"


def test_the_corpus_covers_every_family_the_issue_lists():
    families = {c.family for c in CASES.values()}
    assert families == {"pickle", "zip", "safetensors", "msgpack", "index", "paths", "config", "weights"}
    names = set(CASES)
    for required in ("pickle_reduce_open", "pickle_numpy_arrays", "zip_bomb_pickle", "st_overlapping_offsets",
                     "st_offset_past_the_end", "st_header_longer_than_file", "st_huge_shape_huge_span",
                     "st_unknown_dtype", "idx_absolute_path", "idx_dotdot", "idx_symlink_out", "cfg_d_model_huge",
                     "cfg_heads_zero", "cfg_heads_negative", "cfg_heads_not_dividing", "cfg_not_an_object",
                     "cfg_not_utf8", "mp_truncated"):
        assert required in names
    for c in CASES.values():
        assert {"convert", "cli"} <= set(c.entries), c.name
    # what only the converter does: copy side files (and their config), refuse unexpected tensors
    # (from_pretrained drops them with a warning, like transformers)
    convert_only = sorted(n for n, c in CASES.items() if "from_pretrained" not in c.entries)
    assert convert_only == ["config_symlink_out", "side_file_symlink_secret", "unexpected_tensor"]


def test_the_side_file_secret_never_reaches_an_output(tmp_path):
    """The symlinked secret is refused before anything is written (checked above); here: the same
    conversion without the symlink works, so the refusal is about the symlink alone."""
    import os

    from convert import convert_checkpoint

    case = CASES["side_file_symlink_secret"]
    src = case.build(tmp_path, tmp_path / "PWNED")
    os.remove(src / "vocab.json")
    (src / "vocab.json").write_text('{"a": 0}')
    convert_checkpoint(str(src), str(tmp_path / "out"), to="flax")
    assert (tmp_path / "out" / "vocab.json").read_text() == '{"a": 0}'
    for dirpath, _, files in os.walk(tmp_path / "out"):
        for f in files:
            assert b"TOP-SECRET-TOKEN" not in open(os.path.join(dirpath, f), "rb").read()


def test_the_pickle_scan_accepts_what_torch_save_writes_for_every_dtype(tmp_path):
    """The opcode scan refuses unexpected globals, not real checkpoints: every dtype a checkpoint
    may hold (float8 and unsigned ints go through torch's v3 rebuild and dtype globals), Parameters,
    OrderedDict with metadata."""
    import collections

    import torch

    from convert.torch_io import check_archive, load_state_dict

    state = collections.OrderedDict(
        (str(dt).removeprefix("torch."), torch.zeros(3, dtype=dt))
        for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                   torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                   torch.uint16, torch.uint32, torch.uint64, torch.bool))
    state["param"] = torch.nn.Parameter(torch.ones(2))
    state._metadata = {"": {"version": 1}}
    torch.save(state, tmp_path / "pytorch_model.bin")
    check_archive(str(tmp_path / "pytorch_model.bin"))
    assert set(load_state_dict(str(tmp_path / "pytorch_model.bin"))) == set(state)
