"""safetensors read tensor by tensor (validated header, plain reads, no mmap) and written streaming.

Reading copies one tensor at a time from the file into a fresh array, so a converter never keeps
the whole file resident. The header is checked before any data is touched: offsets inside the
file, sizes matching dtype x shape, no overlaps.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Sequence

import numpy as np

from flax_bart.config import parse_json

from convert.dtypes import SAFETENSORS_DTYPES, safetensors_name
from convert.errors import ConversionError

# The safetensors library allows 100 MB, but a header parsed into Python objects takes up to ~45 times
# its size; a BART checkpoint's header is well under 1 MiB (about 150 bytes a tensor).
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_DIMS = 64   # NumPy's limit


def _outside_strings(raw: bytes) -> bytes:
    """The JSON text between its strings (linear, in C): escaped backslashes and quotes go first, so that
    every quote left delimits a string."""
    parts = raw.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')
    return b"".join(parts[0::2])


def _check_density(raw: bytes, path: str) -> None:
    """Each tensor's entry is one object and two lists in at least ~50 bytes: a header packed with far
    more JSON containers (`[[],[],...]`, `{}` junk) is refused before it is parsed into Python objects."""
    bare = _outside_strings(raw)   # what strings hold (names, metadata) is not structure
    containers, commas = bare.count(b"{") + bare.count(b"["), bare.count(b",")
    if containers > len(raw) // 12 + 64 or commas > len(raw) // 4 + 64:
        raise ConversionError(f"{path}: safetensors header of {len(raw)} bytes holds {containers} JSON objects "
                              f"and lists and {commas} values, far more than tensor entries need (corrupted or not "
                              f"a safetensors file)")


class SafetensorsFile:
    """The header of one safetensors file; `read(key)` returns one tensor as a new array."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.read(8)
            if len(first) < 8:
                raise ConversionError(
                    f"{path}: truncated safetensors file: {size} bytes, the 8-byte header length is incomplete"
                )
            (n,) = struct.unpack("<Q", first)
            if n > MAX_HEADER_BYTES:
                raise ConversionError(
                    f"{path}: safetensors header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit (corrupted file?)"
                )
            if 8 + n > size:
                raise ConversionError(
                    f"{path}: safetensors header of {n} bytes points past the end of the file ({size} bytes): truncated or corrupted"
                )
            raw = f.read(n)
        _check_density(raw, path)
        header = parse_json(raw, path, "safetensors header", ConversionError, unique_keys=True)
        if not isinstance(header, dict):
            raise ConversionError(f"{path}: safetensors header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise ConversionError(f"{path}: safetensors __metadata__ must map strings to strings, got {meta!r}")
        self.metadata: dict[str, str] = dict(meta or {})
        self.data_start = 8 + n
        data_size = size - self.data_start
        self.entries: dict[str, tuple[tuple[int, ...], np.dtype, int, int]] = {}
        spans = []
        for key, info in header.items():
            shape, dtype, begin, end = self._entry(key, info)
            if end > data_size:
                raise ConversionError(
                    f"{path}: tensor {key!r} ends at data byte {end} but the file holds only {data_size} "
                    f"data bytes: truncated or corrupted"
                )
            self.entries[key] = (shape, dtype, begin, end)
            spans.append((begin, end, key))
        # As the safetensors library requires: the tensors tile the data section, no overlap, no gap.
        covered, last = 0, None   # end of the data covered so far, and the tensor that reaches it
        for b1, e1, k1 in sorted(spans):
            if b1 < covered and e1 > b1:
                b0, e0, k0 = last
                raise ConversionError(
                    f"{path}: tensors {k0!r} [{b0}, {e0}) and {k1!r} [{b1}, {e1}) overlap in the data section"
                )
            if b1 > covered:
                raise ConversionError(f"{path}: data bytes [{covered}, {b1}) belong to no tensor (before {k1!r}): "
                                      f"corrupted or not a safetensors file")
            if e1 >= covered:
                covered, last = e1, (b1, e1, k1)
        if covered != data_size:
            raise ConversionError(f"{path}: the last {data_size - covered} data bytes belong to no tensor: "
                                  f"corrupted or not a safetensors file")

    def _entry(self, key, info):
        where = f"{self.path}: tensor {key!r}"
        if not isinstance(info, dict):
            raise ConversionError(f"{where}: header entry must be an object, got {info!r}")
        dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
            raise ConversionError(f"{where}: unknown dtype {dtype_name!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
        if isinstance(shape, list) and len(shape) > MAX_DIMS:
            raise ConversionError(f"{where}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ConversionError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ConversionError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        dtype = SAFETENSORS_DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise ConversionError(
                f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but {dtype_name} x {tuple(shape)} "
                f"needs {nbytes}"
            )
        return tuple(shape), dtype, offsets[0], offsets[1]

    def read(self, key: str) -> np.ndarray:
        shape, dtype, begin, end = self.entries[key]
        buf = np.empty(end - begin, dtype=np.uint8)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + begin)
            got = 0
            while got < len(buf):
                n = f.readinto(view[got:])
                if not n:
                    raise ConversionError(f"{self.path}: file ended while reading tensor {key!r} (truncated?)")
                got += n
        return buf.view(dtype).reshape(shape)


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are given up front (names, shapes, dtypes) and whose
    data then arrives one tensor at a time, in that order."""

    def __init__(self, path: str, specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
                 metadata: dict[str, str] | None = None):
        header: dict = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        self._order = []
        for key, shape, dtype in specs:
            if key in header:
                raise ConversionError(f"{path}: tensor {key!r} given twice")
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            header[key] = {"dtype": safetensors_name(dtype), "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
            self._order.append((key, tuple(shape), np.dtype(dtype)))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors library writes
        self.path = path
        self.nbytes = 8 + len(raw) + offset
        self._next = 0
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)

    def write(self, key: str, arr: np.ndarray) -> None:
        want_key, shape, dtype = self._order[self._next]
        if key != want_key or arr.shape != shape or arr.dtype != dtype:
            raise ConversionError(
                f"{self.path}: expected tensor {want_key!r} {dtype.name}{list(shape)} next, "
                f"got {key!r} {arr.dtype.name}{list(arr.shape)}"
            )
        write_array(self._f, arr)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._f.close()
            raise ConversionError(f"{self.path}: closed after {self._next} of {len(self._order)} tensors")
        finish(self._f)

    def abort(self) -> None:
        self._f.close()


def write_array(f, arr: np.ndarray) -> None:
    """Write the C-order bytes of `arr` without an extra copy when it is contiguous."""
    arr = np.ascontiguousarray(arr)
    if arr.size:
        f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def finish(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
