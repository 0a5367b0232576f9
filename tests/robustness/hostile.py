"""The hostile-input corpus: checkpoints built by the tests (nothing downloaded) that try to run code,
exhaust memory, read files outside the checkpoint, or feed absurd configs to the loaders.

This module holds the machinery (the `Case` registry and the builders of valid and broken files);
the cases themselves are in `hostile_files.py` (pickles, zip archives, safetensors, msgpack) and
`hostile_layout.py` (indexes, paths, config.json, contradictory weights), gathered by `corpus.py`.
Each `Case` builds its input under a fresh directory and says which entry points must refuse it and
with which message (a regex naming the file, key or config field). `test_hostile_inputs.py` runs
every case against every entry point it lists; `bounded_runner.py` re-runs the cases marked
`bounded` under an address-space limit.

Pickle payloads write a marker file when executed; the tests assert it never appears.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from flax_bart.config import BartConfig

ENTRIES = ("convert", "cli", "from_pretrained", "parity")
CONVERT_ONLY = ("convert", "cli")
GIB = 2**30

CONFIG = BartConfig.from_dict(dict(
    vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=1, encoder_ffn_dim=24, decoder_ffn_dim=20,
    encoder_attention_heads=2, decoder_attention_heads=4, max_position_embeddings=32, dropout=0.0,
))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    family: str
    build: Callable[[Path, Path], Path]   # (root, marker) -> SRC
    expect: str                           # regex the error message must match
    entries: tuple[str, ...] = ENTRIES
    bounded: bool = False                 # could allocate: also run under an address-space limit
    to: str = "flax"                      # `convert --to` (the other framework than the source's)


CASES: dict[str, Case] = {}


def case(name, family, expect, *, entries=ENTRIES, bounded=False, to="flax"):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = Case(name, family, fn, expect, tuple(entries), bounded, to)
        return fn
    return register


# ---- valid checkpoints to start from --------------------------------------------------------------
def flax_params(seed: int = 0) -> dict:
    from tests.convert.convert_helpers import random_flax_params

    return random_flax_params(CONFIG, "lm", np.float32, seed)


def pt_state(seed: int = 0) -> dict:
    from convert import flax_to_pt

    return flax_to_pt(flax_params(seed), CONFIG, "lm", tied="drop")


def write_config(d: Path, config: BartConfig = CONFIG) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(config.to_json_string())


def pt_dir(root: Path, fmt: str = "safetensors", shards: int = 1, state: dict | None = None) -> Path:
    from tests.convert.convert_helpers import write_pt_checkpoint

    d = root / "src"
    write_pt_checkpoint(d, pt_state() if state is None else state, fmt, shards)
    write_config(d)
    return d


def flax_dir(root: Path, shards: int = 1) -> Path:
    from tests.convert.convert_helpers import write_flax_msgpack

    d = root / "src"
    write_flax_msgpack(d, flax_params(), shards)
    write_config(d)
    return d


def config_dir(root: Path, raw: bytes | None = None, **changes) -> Path:
    """Valid weights with a config.json of `changes` applied (or `raw` bytes)."""
    d = pt_dir(root)
    if raw is None:
        cfg = json.loads(CONFIG.to_json_string())
        for k, v in changes.items():
            if v is _DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        raw = json.dumps(cfg).encode()
    (d / "config.json").write_bytes(raw)
    return d


_DROP = object()


def weights_only_dir(root: Path, name: str, data: bytes) -> Path:
    d = root / "src"
    write_config(d)
    (d / name).write_bytes(data)
    return d


def sparse_file(path: Path, size: int, head: bytes = b"") -> None:
    """A file of `size` bytes that takes no disk space (a hole after `head`)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


# ---- pickles and zip archives ---------------------------------------------------------------------
class Evil:
    """Unpickling it runs `open(marker, "w")`: the file appearing means code was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _short(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def torch_members(obj) -> list[tuple[str, bytes]]:
    """The members of `torch.save(obj)` (name, data)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


@functools.lru_cache(maxsize=8)
def deflate(data: bytes, zeros: int = 0) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, size) of `data` followed by `zeros` zero bytes, built in
    O(len(data) + zeros / 1 MiB) time: after a full flush, every 1 MiB block of zeros compresses to
    the same bytes, so a gigabyte costs a few kilobytes and a fraction of a second."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(data)
    chunk = b"\0" * 2**20
    n, rest = divmod(zeros, len(chunk))
    if n:
        block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
        out.append(block * n)
        for _ in range(n):
            crc = zlib.crc32(chunk, crc)
    if rest:
        out.append(c.compress(b"\0" * rest))
        crc = zlib.crc32(b"\0" * rest, crc)
    out.append(c.flush(zlib.Z_FINISH))
    return b"".join(out), crc, len(data) + zeros


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip written by hand: members (name, payload as stored, method, crc32, declared size); the
    declared size may lie. zipfile cannot write a pre-compressed member or a lying size."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in members:
        offset, raw = len(out), name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload), size, len(raw), 0)
        out += raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(raw), 0, 0, 0, 0, 0, offset) + raw
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    path.write_bytes(bytes(out))


def stored(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes, int, int, int]]:
    return [(n, d, zipfile.ZIP_STORED, zlib.crc32(d), len(d)) for n, d in members]


def torch_zip_with_pickle(root: Path, pkl: bytes, name: str = "pytorch_model.bin") -> Path:
    """A torch.save archive of a real state dict whose data.pkl is replaced by `pkl`."""
    members = [(n, pkl if n.endswith("/data.pkl") else d) for n, d in torch_members(_small_state())]
    d = root / "src"
    write_config(d)
    write_zip(d / name, stored(members))
    return d


def _small_state():
    import torch

    return {"model.shared.weight": torch.zeros(CONFIG.vocab_size, CONFIG.d_model)}


def _reduce_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol 2: module.name(arg) via GLOBAL + REDUCE."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + _unicode(arg) + b"\x85R."
