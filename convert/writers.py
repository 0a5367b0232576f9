"""Checkpoint writers: one format, sharded like Hugging Face (`max_shard_size`), streaming.

Tensors are announced up front (name, shape, dtype), then written one at a time in `order`; each
shard file is opened when its first tensor arrives and finished (fsynced) when its last one has
been written. The index is written last.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np

from convert.errors import ConversionError
from convert.sources import WEIGHT_FILES

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value) -> int | None:
    """`max_shard_size` as bytes: an int, or "500MB" / "2GiB" / "10GB" like transformers, which reads a
    decimal unit written with a lowercase b ("500Mb", "12kb") as bits."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(value).upper())
        if not m:
            raise ConversionError(f"max_shard_size {value!r}: expected bytes or a size like '500MB' or '2GiB'")
        size = int(float(m.group(1)) * _UNITS[m.group(2)])
        if len(m.group(2)) == 2 and m.group(2)[1] == "B" and str(value).rstrip().endswith("b"):
            size //= 8
    if size <= 0:
        raise ConversionError(f"max_shard_size {value!r} must be positive")
    return size


def shard_name(fmt: str, i: int, n: int) -> str:
    single = WEIGHT_FILES[fmt][0]
    stem, ext = single.rsplit(".", 1)
    return f"{stem}-{i:05d}-of-{n:05d}.{ext}"


def key_name(key, fmt: str) -> str:
    """A tensor's name in files of `fmt`: Flax paths are "/"-joined in msgpack indexes and
    "."-joined in Flax safetensors (as 4.x wrote them)."""
    if isinstance(key, tuple):
        return ("/" if fmt == "msgpack" else ".").join(key)
    return key


# safetensors' dtype order (its `Dtype` enum); the library lays tensors out by dtype, descending, then name.
_SAFETENSORS_DTYPE_RANK = {name: i for i, name in enumerate((
    "bool", "uint8", "int8", "float8_e5m2", "float8_e4m3fn", "int16", "uint16", "float16", "bfloat16", "int32",
    "uint32", "float32", "float64", "int64", "uint64"))}


def _safetensors_order(name: str, dtype: np.dtype) -> tuple:
    return (-_SAFETENSORS_DTYPE_RANK.get(np.dtype(dtype).name, -1), name)


class CheckpointWriter:
    """Writes `specs` [(key, shape, dtype)] into `directory` as format `fmt`, in shards of at most
    `max_shard_size` bytes of tensor data (a larger tensor gets a shard of its own)."""

    def __init__(self, directory: str, fmt: str, framework: str,
                 specs: Sequence[tuple[Any, tuple[int, ...], np.dtype]], max_shard_size=None):
        if fmt not in WEIGHT_FILES:
            raise ConversionError(f"format {fmt!r} is not one of {sorted(WEIGHT_FILES)}")
        if fmt == "msgpack" and framework != "flax" or fmt == "bin" and framework != "pt":
            raise ConversionError(f"format {fmt!r} cannot hold a {framework} checkpoint")
        self.directory, self.fmt, self.framework = directory, fmt, framework
        specs = [(k, tuple(s), np.dtype(d)) for k, s, d in specs]
        if fmt == "msgpack":  # msgpack is written depth-first: fix that order before splitting
            from convert.msgpack_io import nest

            by_key = {k: (k, s, d) for k, s, d in specs}
            specs = [by_key[k] for k in _dfs(nest([k for k, _, _ in specs]))]
        limit = parse_size(max_shard_size)
        shards: list[list] = [[]]
        size = 0
        for spec in specs:
            nbytes = math.prod(spec[1]) * spec[2].itemsize
            if limit is not None and shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += nbytes
        if fmt == "safetensors":  # the layout the safetensors library itself writes: files byte-identical
            shards = [sorted(shard, key=lambda spec: _safetensors_order(key_name(spec[0], fmt), spec[2]))
                      for shard in shards]
        self.shards = shards
        n = len(shards)
        self.files = [WEIGHT_FILES[fmt][0]] if n == 1 else [shard_name(fmt, i + 1, n) for i in range(n)]
        self.order = [k for shard in shards for k, _, _ in shard]
        self.total_size = sum(math.prod(s) * d.itemsize for k, s, d in specs)
        self._shard, self._writer, self._count, self._bin = -1, None, 0, {}

    def _open_next(self) -> None:
        self._shard += 1
        self._count = 0
        path = os.path.join(self.directory, self.files[self._shard])
        specs = [(key_name(k, self.fmt), s, d) for k, s, d in self.shards[self._shard]]
        if self.fmt == "safetensors":
            from convert.safetensors_io import SafetensorsWriter

            self._writer = SafetensorsWriter(path, specs, {"format": self.framework})
        elif self.fmt == "msgpack":
            from convert.msgpack_io import MsgpackWriter

            self._writer = MsgpackWriter(path, self.shards[self._shard])
        else:
            self._writer, self._bin = None, {}

    def write(self, key, arr: np.ndarray) -> None:
        if self._shard < 0 or self._count == len(self.shards[self._shard]):
            self._open_next()
        shard = self.shards[self._shard]
        want, shape, dtype = shard[self._count]
        if self.fmt == "bin":
            if key != want or arr.shape != shape or arr.dtype != dtype:
                raise ConversionError(f"expected {want!r} {dtype.name}{list(shape)} next, got {key!r} {arr.dtype.name}{list(arr.shape)}")
            self._bin[key] = arr
        else:
            self._writer.write(key_name(key, self.fmt) if self.fmt == "safetensors" else key, arr)
        self._count += 1
        if self._count == len(shard):
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self.fmt == "bin":
            from convert.torch_io import save_state_dict

            save_state_dict(self._bin, os.path.join(self.directory, self.files[self._shard]))
            self._bin = {}
        else:
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        """Finish (writing the index when sharded); returns the file names written."""
        if self._shard < 0 and self.shards == [[]]:  # nothing to write: an empty file of the format
            self._open_next()
            self._finish_shard()
        done = self._shard == len(self.shards) - 1 and self._count == len(self.shards[-1])
        if not done:
            raise ConversionError(f"{self.directory}: writer closed before all {len(self.order)} tensors were written")
        if len(self.files) == 1:
            return list(self.files)
        weight_map = {key_name(k, self.fmt): self.files[i] for i, shard in enumerate(self.shards) for k, _, _ in shard}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        index_name = WEIGHT_FILES[self.fmt][1]
        with open(os.path.join(self.directory, index_name), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return list(self.files) + [index_name]

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _dfs(tree: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, child in tree.items():
        if child is None:
            out.append(prefix + (k,))
        else:
            out.extend(_dfs(child, prefix + (k,)))
    return out
