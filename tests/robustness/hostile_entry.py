"""Run one input through one of the suite's entry points and classify what happened, plus a
filesystem snapshot to prove nothing was written or changed outside the output directory."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import os
import stat
import warnings
from pathlib import Path

BIG_FILE = 16 * 2**20  # larger files (sparse test files) are fingerprinted, not fully hashed


@dataclasses.dataclass
class Outcome:
    kind: str        # "refused" (clear error / exit 2), "accepted", or "crashed" (anything else)
    message: str


def parity_cli_available() -> bool:
    return importlib.util.find_spec("parity.cli") is not None


def run_entry(entry: str, src: Path, out: Path, to: str = "flax") -> Outcome:
    """`entry`: "convert" (convert_checkpoint), "cli" (`flax-bart convert`), "from_pretrained"
    (FlaxBartForConditionalGeneration) or "parity" (`flax-bart parity`)."""
    from convert import ConversionError
    from flax_bart.config import ConfigError
    from flax_bart.hub import CheckpointNotFoundError

    if entry in ("cli", "parity"):
        from flax_bart.cli import main

        argv = (["convert", str(src), str(out), "--to", to, "--quiet"] if entry == "cli"
                else ["parity", str(src), "--out", str(out), "--quiet", "--steps", "0"])
        err, std = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                code = main(argv)
        except BaseException as e:  # noqa: BLE001 - anything escaping the CLI is a crash
            return Outcome("crashed", f"{type(e).__name__}: {e}")
        text = err.getvalue()
        if code == 2 and "Traceback" not in text:
            return Outcome("refused", text)
        return Outcome("accepted" if code in (0, 1) else "crashed", f"exit {code}: {text}{std.getvalue()[-2000:]}")
    try:
        if entry == "convert":
            from convert import convert_checkpoint

            convert_checkpoint(str(src), str(out), to=to)
        elif entry == "from_pretrained":
            from flax_bart.models import FlaxBartForConditionalGeneration

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                FlaxBartForConditionalGeneration.from_pretrained(str(src))
        else:
            raise ValueError(f"unknown entry point {entry!r}")
    except (ConversionError, ConfigError, CheckpointNotFoundError) as e:
        return Outcome("refused", str(e))
    except BaseException as e:  # noqa: BLE001
        return Outcome("crashed", f"{type(e).__name__}: {e}")
    return Outcome("accepted", "")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type and content fingerprint (never opening FIFOs or
    devices, and fingerprinting large sparse files by size, mtime and first MiB)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    if st.st_size > BIG_FILE:
                        h.update(f.read(2**20))
                        out[rel] = ("big", st.st_size, st.st_mtime_ns, h.hexdigest())
                        continue
                    h.update(f.read())
                out[rel] = ("file", st.st_size, h.hexdigest())
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def changes(before: dict, after: dict) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))
