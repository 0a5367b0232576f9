"""Flax msgpack checkpoints (`flax.serialization.to_bytes` of a nested dict), read and written
streaming.

Reading scans the structure without loading data: each array leaf is located by its byte offset and
read on demand. Writing emits map headers and array payloads as they come, in exactly the bytes
`flax.serialization.to_bytes` produces for the same nested dict (same key order), including flax's
chunked form for arrays over `MAX_CHUNK_SIZE` bytes.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Sequence

import msgpack
import numpy as np

from convert.dtypes import MSGPACK_DTYPES
from convert.errors import ConversionError
from convert.safetensors_io import finish, write_array

MAX_CHUNK_SIZE = 2**30  # flax.serialization.MAX_CHUNK_SIZE
_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3
_CHUNKED = "__msgpack_chunked_array__"
_MAX_DEPTH = 64
# msgpack values outside array payloads (keys, maps, shapes, ...): a BART checkpoint holds a few thousand;
# the budget bounds what a small hostile file (say a list of 10^7 empty maps) costs as Python objects
MAX_VALUES = 250_000


class _Leaf:
    """An array inside a msgpack file: where its bytes are, and what they are."""

    __slots__ = ("offset", "shape", "dtype")

    def __init__(self, offset, shape, dtype):
        self.offset, self.shape, self.dtype = offset, shape, dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Chunked:
    __slots__ = ("shape", "dtype", "chunks")

    def __init__(self, shape, dtype, chunks):
        self.shape, self.dtype, self.chunks = shape, dtype, chunks


class _Scanner:
    """Parses msgpack from a file, skipping over array payloads."""

    def __init__(self, path: str, f):
        self.path, self.f = path, f
        self.size = os.fstat(f.fileno()).st_size
        self.values = 0

    def fail(self, what: str):
        raise ConversionError(f"{self.path}: not a valid flax msgpack checkpoint: {what} (at byte {self.f.tell()})")

    def take(self, n: int) -> bytes:
        if self.f.tell() + n > self.size:
            self.fail(f"needs {n} more bytes but the file ends at byte {self.size} (truncated?)")
        return self.f.read(n)

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def value(self, depth: int = 0):
        if depth > _MAX_DEPTH:
            self.fail(f"nesting deeper than {_MAX_DEPTH}")
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail(f"more than {MAX_VALUES} msgpack values besides the array payloads (a BART checkpoint "
                      f"holds a few thousand)")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return [self.value(depth + 1) for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        if b in (0xCC, 0xCD, 0xCE, 0xCF):
            return self.uint(1 << (b - 0xCC))
        if b in (0xD0, 0xD1, 0xD2, 0xD3):
            n = 1 << (b - 0xD0)
            return int.from_bytes(self.take(n), "big", signed=True)
        if b == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if b in (0xD9, 0xDA, 0xDB):
            return self.text(self.uint(1 << (b - 0xD9)))
        if b in (0xC4, 0xC5, 0xC6):
            return self.take(self.uint(1 << (b - 0xC4)))
        if b in (0xDC, 0xDD):
            return [self.value(depth + 1) for _ in range(self.uint(2 if b == 0xDC else 4))]
        if b in (0xDE, 0xDF):
            return self.map(self.uint(2 if b == 0xDE else 4), depth)
        if b in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
            return self.ext(1 << (b - 0xD4))
        if b in (0xC7, 0xC8, 0xC9):
            return self.ext(self.uint(1 << (b - 0xC7)))
        self.fail(f"unsupported msgpack type byte 0x{b:02x}")

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            self.fail("a string is not UTF-8")

    def map(self, n: int, depth: int) -> dict:
        out = {}
        for _ in range(n):
            k = self.value(depth + 1)
            if not isinstance(k, str):
                self.fail(f"map key {k!r} is not a string")
            if k in out:
                self.fail(f"duplicate map key {k!r}")
            out[k] = self.value(depth + 1)
        return out

    def ext(self, length: int):
        code = int.from_bytes(self.take(1), "big", signed=True)
        start = self.f.tell()
        if start + length > self.size:
            self.fail(f"an extension of {length} bytes runs past the end of the file ({self.size} bytes)")
        if code not in (_EXT_NDARRAY, _EXT_NPSCALAR):
            self.fail(f"unsupported msgpack extension type {code}")
        if self.take(1) != b"\x93":
            self.fail("an array payload is not a (shape, dtype, data) triple")
        shape = self.value(_MAX_DEPTH - 1)
        dtype_name = self.value(_MAX_DEPTH - 1)
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            self.fail(f"array shape {shape!r} is not a list of non-negative integers")
        if dtype_name not in MSGPACK_DTYPES:
            self.fail(f"array dtype {dtype_name!r} is not one of {sorted(MSGPACK_DTYPES)}")
        b = self.take(1)[0]
        if b not in (0xC4, 0xC5, 0xC6):
            self.fail("array data is not a msgpack bin")
        nbytes = self.uint(1 << (b - 0xC4))
        leaf = _Leaf(self.f.tell(), tuple(shape), MSGPACK_DTYPES[dtype_name])
        if nbytes != leaf.nbytes or leaf.offset + nbytes != start + length:
            self.fail(f"array data of {nbytes} bytes does not match {dtype_name}{list(shape)} or its extension length")
        if leaf.offset + nbytes > self.size:
            self.fail(f"array data runs past the end of the file ({self.size} bytes)")
        self.f.seek(nbytes, os.SEEK_CUR)
        return leaf


def _flatten(path: str, node, prefix: tuple, out: dict) -> None:
    if isinstance(node, dict) and _CHUNKED in node:
        node = _chunked(path, prefix, node)
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(path, v, prefix + (k,), out)
    elif isinstance(node, (_Leaf, _Chunked)):
        out[prefix] = node
    else:
        raise ConversionError(f"{path}: {'/'.join(prefix)!r} holds {type(node).__name__}, not an array")


def _chunked(path, prefix, node) -> _Chunked:
    name = "/".join(prefix)
    try:
        shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
        chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    except (KeyError, TypeError):
        raise ConversionError(f"{path}: chunked array {name!r} is malformed") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ConversionError(f"{path}: chunked array {name!r} has shape {list(shape)!r}, not non-negative integers")
    if not chunks or not all(isinstance(c, _Leaf) and c.dtype == chunks[0].dtype for c in chunks):
        raise ConversionError(f"{path}: chunked array {name!r} has no chunks or chunks of mixed dtype")
    if sum(math.prod(c.shape) for c in chunks) != math.prod(shape):
        raise ConversionError(f"{path}: chunks of {name!r} do not add up to its shape {list(shape)}")
    return _Chunked(shape, chunks[0].dtype, chunks)


class MsgpackFile:
    """The leaves of a flax msgpack file by path tuple; `read(path)` loads one as a new array."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            scanner = _Scanner(path, f)
            top = scanner.value()
            if f.tell() != scanner.size:
                scanner.fail(f"{scanner.size - f.tell()} trailing bytes after the top-level map")
        if not isinstance(top, dict):
            raise ConversionError(f"{path}: a flax msgpack checkpoint must hold a map at top level")
        self.entries: dict[tuple[str, ...], _Leaf | _Chunked] = {}
        _flatten(path, top, (), self.entries)

    def read(self, key: tuple[str, ...]) -> np.ndarray:
        node = self.entries[key]
        parts = node.chunks if isinstance(node, _Chunked) else [node]
        out = np.empty(sum(p.nbytes for p in parts), dtype=np.uint8)
        pos = 0
        with open(self.path, "rb", buffering=0) as f:
            for p in parts:
                f.seek(p.offset)
                view = memoryview(out)[pos:pos + p.nbytes]
                got = 0
                while got < p.nbytes:
                    n = f.readinto(view[got:])
                    if not n:
                        raise ConversionError(f"{self.path}: file ended inside {'/'.join(key)!r}")
                    got += n
                pos += p.nbytes
        return out.view(node.dtype).reshape(node.shape)


# ---- writing ----------------------------------------------------------------------------------
def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def _ext_header(n: int, code: int) -> bytes:
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
    if n in fixed:
        head = fixed[n]
    elif n < 1 << 8:
        head = b"\xc7" + struct.pack(">B", n)
    elif n < 1 << 16:
        head = b"\xc8" + struct.pack(">H", n)
    else:
        head = b"\xc9" + struct.pack(">I", n)
    return head + struct.pack(">b", code)


def _array_header(shape: tuple[int, ...], dtype: np.dtype) -> tuple[bytes, int]:
    """Bytes before the data of one flax ndarray extension, and the data length."""
    nbytes = math.prod(shape) * dtype.itemsize
    inner = b"\x93" + msgpack.packb(list(shape)) + msgpack.packb(dtype.name) + _bin_header(nbytes)
    return _ext_header(len(inner) + nbytes, _EXT_NDARRAY) + inner, nbytes


def _leaf_pieces(shape, dtype) -> list[tuple[bytes, int]]:
    """(header bytes, data bytes that follow) for one leaf, in flax's chunked form when large."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes <= MAX_CHUNK_SIZE:
        return [_array_header(shape, dtype)]
    size = math.prod(shape)
    per = max(1, int(MAX_CHUNK_SIZE / dtype.itemsize))
    n_chunks = -(-size // per)
    head = _map_header(3) + msgpack.packb(_CHUNKED) + msgpack.packb(True)
    head += msgpack.packb("shape") + msgpack.packb({str(i): s for i, s in enumerate(shape)})
    head += msgpack.packb("chunks") + _map_header(n_chunks)
    pieces = []
    for i, start in enumerate(range(0, size, per)):
        h, n = _array_header((min(per, size - start),), dtype)
        pieces.append(((head if i == 0 else b"") + msgpack.packb(str(i)) + h, n))
    return pieces


def _map_header(n: int) -> bytes:
    if n < 16:
        return struct.pack(">B", 0x80 | n)
    if n < 1 << 16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def nest(paths: Sequence[tuple[str, ...]]) -> dict:
    """A nested dict skeleton (leaves None) in first-seen order; refuses a path that is both a leaf
    and a prefix of another."""
    root: dict = {}
    for path in paths:
        node = root
        for i, k in enumerate(path):
            last = i == len(path) - 1
            if last:
                if k in node:
                    raise ConversionError(f"path {'/'.join(path)!r} given twice or also used as a prefix")
                node[k] = None
            else:
                child = node.setdefault(k, {})
                if child is None:
                    raise ConversionError(f"path {'/'.join(path[:i + 1])!r} is both a leaf and a prefix")
                node = child
    return root


class MsgpackWriter:
    """Streams a nested dict of arrays to a flax msgpack file.

    `order` is the order in which `write` must be called: depth-first over the nesting of the given
    paths, each level in first-seen order (the order a nested dict built from `specs` iterates in).
    """

    def __init__(self, path: str, specs: Sequence[tuple[tuple[str, ...], tuple[int, ...], np.dtype]]):
        self.path = path
        shapes = {p: (tuple(s), np.dtype(d)) for p, s, d in specs}
        if len(shapes) != len(specs):
            raise ConversionError(f"{path}: a parameter path is given twice")
        self.order: list[tuple[str, ...]] = []
        self._prefix: list[bytes] = []
        pending = [b""]

        def walk(node: dict, prefix: tuple):
            pending[0] += _map_header(len(node))
            for k, child in node.items():
                pending[0] += msgpack.packb(k)
                if child is None:
                    self.order.append(prefix + (k,))
                    self._prefix.append(pending[0])
                    pending[0] = b""
                else:
                    walk(child, prefix + (k,))

        walk(nest([p for p, _, _ in specs]), ())
        self._tail = pending[0]
        self._shapes = shapes
        self.nbytes = sum(len(b) for b in self._prefix) + len(self._tail) + sum(
            len(h) + n for p in self.order for h, n in _leaf_pieces(*shapes[p]))
        self._next = 0
        self._f = open(path, "wb")

    def write(self, path: tuple[str, ...], arr: np.ndarray) -> None:
        want = self.order[self._next]
        shape, dtype = self._shapes[want]
        if path != want or arr.shape != shape or arr.dtype != dtype:
            raise ConversionError(
                f"{self.path}: expected {'/'.join(want)!r} {dtype.name}{list(shape)} next, "
                f"got {'/'.join(path)!r} {arr.dtype.name}{list(arr.shape)}"
            )
        self._f.write(self._prefix[self._next])
        flat = np.ascontiguousarray(arr).reshape(-1)
        pos = 0
        for header, nbytes in _leaf_pieces(shape, dtype):
            self._f.write(header)
            n = nbytes // dtype.itemsize if dtype.itemsize else 0
            write_array(self._f, flat[pos:pos + n])
            pos += n
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            self._f.close()
            raise ConversionError(f"{self.path}: closed after {self._next} of {len(self.order)} arrays")
        self._f.write(self._tail)
        finish(self._f)

    def abort(self) -> None:
        self._f.close()
