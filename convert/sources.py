"""Checkpoint sources: find the weights in a directory or file, validate indexes, and read tensors
one at a time, whatever the format (safetensors, flax msgpack, torch .bin, sharded or not)."""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import re
from typing import Any, Iterable, Mapping

import numpy as np

from flax_bart.config import read_json_file

from convert.containment import check_not_staging, contained
from convert.errors import ConversionError

# format -> (single file, index of shards)
WEIGHT_FILES = {
    "msgpack": ("flax_model.msgpack", "flax_model.msgpack.index.json"),
    "safetensors": ("model.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model.bin", "pytorch_model.bin.index.json"),
}


def shard_pattern(single: str) -> re.Pattern:
    """The shard names of weights file `single` (`model-00001-of-00002.safetensors`, any digit count)."""
    stem, ext = single.rsplit(".", 1)
    return re.compile(rf"^{re.escape(stem)}-\d+-of-\d+\.{re.escape(ext)}$")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Source(abc.ABC):
    """The tensors of one checkpoint. Keys are strings ("model.shared.weight") for PyTorch and path
    tuples (("model", "shared", "embedding")) for Flax. `read` returns a new array."""

    framework: str  # "pt" or "flax"
    format: str
    files: list[str]
    infos: dict[Any, TensorInfo]

    @abc.abstractmethod
    def read(self, key) -> np.ndarray:
        """One tensor as a new array the caller owns."""

    def name(self, key) -> str:
        return "/".join(key) if isinstance(key, tuple) else key

    def describe(self) -> dict:
        return {"framework": self.framework, "format": self.format, "files": list(self.files),
                "tensors": len(self.infos), "bytes": sum(i.nbytes for i in self.infos.values())}


class MemorySource(Source):
    """An in-memory state dict (torch tensors or arrays) or a (nested or flat) Flax param tree.
    `read` hands out copies, unless `borrow`: then the caller's own arrays (for callers that never
    write to what they get, e.g. a same-framework re-keying of weights kept read-only)."""

    def __init__(self, tensors: Mapping, framework: str, borrow: bool = False):
        from convert.dtypes import torch_dtype_to_numpy

        self.framework, self.format, self.files, self.borrow = framework, "memory", [], borrow
        self._tensors, self.infos = {}, {}
        for key, value in tensors.items():
            if type(value).__module__.startswith("torch"):
                info = TensorInfo(tuple(value.shape), torch_dtype_to_numpy(value.dtype))
            elif hasattr(value, "shape") and hasattr(value, "dtype"):
                info = TensorInfo(tuple(value.shape), np.dtype(value.dtype))
            else:
                raise ConversionError(f"{self.name(key)!r} is {type(value).__name__}, not an array or tensor")
            self._tensors[key], self.infos[key] = value, info

    def read(self, key) -> np.ndarray:
        from convert.dtypes import torch_to_numpy

        value = self._tensors[key]
        arr = torch_to_numpy(value) if type(value).__module__.startswith("torch") else np.asarray(value)
        return arr if self.borrow else np.array(arr, copy=True)  # by default never hand out the caller's memory


class _FileSource(Source):
    """Tensors spread over one or more files of one format."""

    def __init__(self, fmt: str, files: list[str]):
        self.format, self.files = fmt, list(files)
        self.infos, self._where = {}, {}
        frameworks = set()
        for path in self.files:
            handle, framework = self._open(path)
            frameworks.add(framework)
            for key, info in self._entries(handle, framework):
                if key in self._where:
                    raise ConversionError(
                        f"tensor {self.name(key)!r} appears in both {self._where[key][0]} and {path}"
                    )
                self._where[key] = (path, handle)
                self.infos[key] = info
        if len(frameworks) > 1:
            raise ConversionError(f"shards {self.files} mix PyTorch and Flax layouts")
        self.framework = frameworks.pop() if frameworks else "pt"

    def file_of(self, key) -> str:
        return self._where[key][0]


class SafetensorsSource(_FileSource):
    def _open(self, path):
        from convert.safetensors_io import SafetensorsFile

        f = SafetensorsFile(path)
        fmt = f.metadata.get("format")
        if fmt in ("flax", "jax"):
            return f, "flax"
        if fmt in ("pt", "torch", "np", "numpy", "tf") or fmt is None and not _looks_flax(f.entries):
            return f, "pt"
        if fmt is None:
            return f, "flax"
        raise ConversionError(f"{path}: safetensors metadata format={fmt!r} is not 'pt' or 'flax'")

    def _entries(self, f, framework):
        for key, (shape, dtype, _, _) in f.entries.items():
            k = tuple(key.split(".")) if framework == "flax" else key
            yield k, TensorInfo(shape, dtype)

    def name(self, key) -> str:
        return ".".join(key) if isinstance(key, tuple) else key

    def read(self, key):
        handle = self._where[key][1]
        return handle.read(self.name(key))


def _looks_flax(keys: Iterable[str]) -> bool:
    leaves = {k.rsplit(".", 1)[-1] for k in keys}
    return bool(leaves & {"kernel", "scale", "embedding"}) and "weight" not in leaves


class MsgpackSource(_FileSource):
    def _open(self, path):
        from convert.msgpack_io import MsgpackFile

        return MsgpackFile(path), "flax"

    def _entries(self, f, framework):
        for key, leaf in f.entries.items():
            yield key, TensorInfo(tuple(leaf.shape), leaf.dtype)

    def read(self, key):
        return self._where[key][1].read(key)


class TorchSource(_FileSource):
    def _open(self, path):
        from convert.torch_io import load_state_dict

        return load_state_dict(path), "pt"

    def _entries(self, state, framework):
        from convert.dtypes import torch_dtype_to_numpy

        for key, t in state.items():
            yield key, TensorInfo(tuple(t.shape), torch_dtype_to_numpy(t.dtype))

    def read(self, key):
        from convert.dtypes import torch_to_numpy

        return np.array(torch_to_numpy(self._where[key][1][key]), copy=True)


_SOURCES = {"safetensors": SafetensorsSource, "msgpack": MsgpackSource, "bin": TorchSource}


# ---- indexes ----------------------------------------------------------------------------------
def read_index(index_path: str) -> dict[str, str]:
    """weight_map of a sharded checkpoint index: tensor name -> shard path (checked to exist and
    to stay inside the checkpoint directory, symlinks resolved; see `containment`)."""
    index = read_json_file(index_path, "index", ConversionError, unique_keys=True)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise ConversionError(f"{index_path}: index must be an object with a 'weight_map' of name -> shard file")
    directory = os.path.dirname(os.path.abspath(index_path))
    out, checked = {}, {}
    for key, shard in wmap.items():
        if shard not in checked:
            checked[shard] = _shard_path(index_path, directory, shard)
        out[key] = checked[shard]
    return out


def _shard_path(index_path: str, directory: str, shard: str) -> str:
    if not shard.strip():
        raise ConversionError(f"{index_path}: a shard file name in the index is empty")
    try:
        real = contained(directory, shard, "shard path")
    except ConversionError as e:
        raise ConversionError(f"{index_path}: {e}") from None
    if not os.path.isfile(real):
        raise ConversionError(f"{index_path}: shard {shard!r} named in the index is missing or not a file "
                              f"({os.path.join(directory, shard)})")
    if real == os.path.realpath(index_path):
        raise ConversionError(f"{index_path}: the index names itself as shard {shard!r}; its shards are weight files")
    return real


def open_sharded(fmt: str, index_path: str) -> Source:
    wmap = read_index(index_path)
    files = list(dict.fromkeys(wmap.values()))
    if not files:
        raise ConversionError(f"{index_path}: the index names no shards")
    source = _SOURCES[fmt](fmt, files)
    by_name = {source.name(k): source.file_of(k) for k in source.infos}
    problems = [f"{k!r} is listed in the index but in no shard" for k in wmap if k not in by_name]
    problems += [f"{k!r} is in shard {os.path.basename(p)} but not in the index" for k, p in by_name.items() if k not in wmap]
    problems += [f"{k!r} is in {os.path.basename(by_name[k])}, the index says {os.path.basename(p)}"
                 for k, p in wmap.items() if k in by_name and by_name[k] != p]
    if problems:
        raise ConversionError.collect(problems, f"{index_path}: index and shards disagree")
    return source


# ---- detection --------------------------------------------------------------------------------
def kind_of_file(path: str) -> tuple[str, bool]:
    """(format, is_index) of a single weights file, by name, else by content."""
    base = os.path.basename(path)
    for fmt, (_, index) in WEIGHT_FILES.items():
        if base == index:
            return fmt, True
    if base.endswith(".index.json"):
        inner = base[: -len(".index.json")]
        for fmt, ext in (("safetensors", ".safetensors"), ("msgpack", ".msgpack"), ("bin", ".bin")):
            if inner.endswith(ext):
                return fmt, True
    for fmt, exts in (("safetensors", (".safetensors",)), ("msgpack", (".msgpack",)), ("bin", (".bin", ".pt", ".pth"))):
        if base.endswith(exts):
            return fmt, False
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "bin", False
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors", False
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return "msgpack", False
    raise ConversionError(f"{path}: cannot tell the checkpoint format (expected .safetensors, .msgpack or .bin)")


_kind_of_file = kind_of_file  # older name, used by flax_bart.loading


def open_file(path: str) -> Source:
    fmt, is_index = kind_of_file(path)
    return open_sharded(fmt, path) if is_index else _SOURCES[fmt](fmt, [path])


def candidates(directory: str) -> list[str]:
    """Weight files present in `directory`, in the default order (Flax, safetensors, .bin); a
    symlink leading out of the checkpoint (see `containment`) is refused, not followed."""
    found = []
    for fmt, (single, index) in WEIGHT_FILES.items():
        for name in (single, index):
            if os.path.lexists(os.path.join(directory, name)):
                real = contained(directory, name, "weights file")
                if os.path.isfile(real):
                    found.append(os.path.join(directory, name))
                    break
    return found


def open_source(path: str, prefer: str | None = None) -> Source:
    """Open the checkpoint at `path` (a directory or a weights/index file). In a directory holding
    several formats, one of framework `prefer` ("pt" or "flax") wins when there is one."""
    check_not_staging(path)
    if os.path.isdir(path):
        found = candidates(path)
        if not found:
            present = sorted(os.listdir(path))[:20]
            wanted = [n for pair in WEIGHT_FILES.values() for n in pair]
            odd = [n for n in wanted if os.path.exists(os.path.join(path, n))]   # present, not regular files
            if odd:
                raise ConversionError(f"{path}: {odd[0]} is not a regular file (a directory?); a weights file is "
                                      f"expected there")
            raise ConversionError(f"{path}: no checkpoint weights found; looked for {wanted}, the directory holds {present}")
        opened: dict[str, Source] = {}

        def get(p):
            if p not in opened:
                opened[p] = open_file(p)
            return opened[p]

        for p in found if prefer else ():
            framework = {"msgpack": "flax", "bin": "pt"}.get(kind_of_file(p)[0]) or get(p).framework
            if framework == prefer:
                return get(p)
        return get(found[0])
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such file or directory")
    return open_file(path)


def shard_file_of(source: Source):
    """For messages: a sharded source's key -> shard file (None for one file, or a source in memory)."""
    return source.file_of if len(getattr(source, "files", ())) > 1 and hasattr(source, "file_of") else None
