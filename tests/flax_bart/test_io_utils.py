"""Atomic writes: whole file or nothing, and the mode a plain `open()` gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from flax_bart.io_utils import atomic_write_bytes, atomic_write_text, new_file_mode


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert new_file_mode() == mode
        atomic_write_text(tmp_path / "config.json", "{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    got = stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode)
    assert got == mode == stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode)


def test_converted_checkpoint_directory_gets_the_mkdir_mode(tmp_path):
    from convert.staging import StagedOutput

    old = os.umask(0o022)
    try:
        with StagedOutput(str(tmp_path / "out")) as out:
            atomic_write_text(os.path.join(out.path, "config.json"), "{}")
            out.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "config.json").st_mode) == 0o644


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, 123)  # fails inside the write, after the temporary file exists
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
