"""Load a checkpoint straight into sharded `jax.Array`s: no host ever holds the whole model.

`convert`'s plan says which source tensor (and whether transposed) feeds each Flax parameter and
checks names and shapes before any data is read. Each parameter is then built with
`jax.make_array_from_callback`: for every addressable device the callback reads just that device's
slice from a memory map of the file (safetensors, or flax msgpack leaves under 1 GiB), transposing
PyTorch `Linear` weights on the fly. On several processes each process reads only the slices of
its own devices. Formats with no byte-addressable layout (`pytorch_model.bin`, chunked msgpack
leaves) fall back to reading one whole tensor at a time, so memory stays bounded by the largest
tensor; `LoadReport.whole_tensor_reads` counts those.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping

import jax
import numpy as np

from flax_bart.config import BartConfig


@dataclasses.dataclass
class LoadReport:
    """What a sharded load did (the convert plan's key lists, plus what was read)."""

    missing: list           # target params the checkpoint lacks (allowed head params)
    unused: list            # BART tensors of other heads
    unexpected: list        # source tensors that are not BART tensors
    mismatched: list        # (target path, checkpoint shape) where the model's shape differs (not loaded)
    tensors: int = 0
    bytes_read: int = 0     # bytes copied out of the files (slices; replicated slices read once)
    whole_tensor_reads: int = 0
    tied_checked: int = 0


class _View:
    """One source tensor as an array-like: a read-only memory map when the format allows, else
    the whole tensor read once."""

    def __init__(self, source, key, headers: dict):
        from convert.sources import MsgpackSource, SafetensorsSource

        info = source.infos[key]
        self.whole = False
        self._map = None
        span = None
        if isinstance(source, SafetensorsSource):
            span = _safetensors_span(source, key, headers)
        elif isinstance(source, MsgpackSource):
            span = _msgpack_span(source, key, headers)
        if info.nbytes == 0:
            self.array = np.zeros(info.shape, info.dtype)
        elif span is not None:
            path, offset = span
            self._map = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(info.nbytes,))
            self.array = self._map.view(info.dtype).reshape(info.shape)
        else:
            self.array = source.read(key)
            self.whole = True

    def close(self) -> None:
        self._map = self.array = None  # the last reference: the file is unmapped here


def _header(headers: dict, kind: str, path: str):
    """The parsed safetensors header / msgpack leaf table of `path`, parsed once per load."""
    if path not in headers:
        if kind == "safetensors":
            from convert.safetensors_io import SafetensorsFile

            headers[path] = SafetensorsFile(path)
        else:
            from convert.msgpack_io import MsgpackFile

            headers[path] = MsgpackFile(path)
    return headers[path]


def _safetensors_span(source, key, headers):
    path = source.file_of(key)
    f = _header(headers, "safetensors", path)
    _, _, begin, _ = f.entries[source.name(key)]
    return path, f.data_start + begin


def _msgpack_span(source, key, headers):
    path = source.file_of(key)
    leaf = _header(headers, "msgpack", path).entries[key]
    if not hasattr(leaf, "offset"):  # a chunked leaf (> 1 GiB): no single byte range
        return None
    return path, leaf.offset


def _slices(index, shape) -> tuple[slice, ...]:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def materialise(source, step, sharding, dtype, report: LoadReport, headers: dict | None = None) -> jax.Array:
    """The Flax parameter of plan `step` as a `jax.Array` with `sharding`, read slice by slice.
    `headers`: parsed file headers to share between the calls of one load."""
    from convert.dtypes import is_float

    headers = {} if headers is None else headers
    info = source.infos[step.source]
    out_dtype = np.dtype(dtype) if dtype is not None and is_float(info.dtype) else info.dtype
    views = [_View(source, step.source, headers)] + [_View(source, d, headers) for d in step.tied]
    report.whole_tensor_reads += sum(v.whole for v in views)
    done: dict = {}

    def read(index):
        sl = _slices(index, step.shape)
        key = tuple((s.start, s.stop, s.step) for s in sl)
        if key not in done:
            src_index = tuple(reversed(sl)) if step.transpose else sl
            parts = [v.array[src_index] for v in views]
            for dup, part in zip(step.tied, parts[1:]):
                if not _same_bits(parts[0], part):
                    from convert.errors import ConversionError

                    where = ", ".join(f"{s.start}:{s.stop}" for s in src_index)
                    raise ConversionError(
                        f"tied copies differ: {source.name(dup)} is not equal to {source.name(step.source)} "
                        f"(in [{where}]); the Flax layout holds one word embedding, so the checkpoint cannot "
                        f"be loaded faithfully"
                    )
            main = parts[0].T if step.transpose else parts[0]
            out = np.array(main, dtype=out_dtype, order="C", copy=True)  # never a view of the file
            report.bytes_read += main.nbytes
            done[key] = out
        return done[key]

    try:
        arr = jax.make_array_from_callback(tuple(step.shape), sharding, read)
    finally:
        for v in views:
            v.close()
        done.clear()
    report.tensors += 1
    report.tied_checked += len(step.tied)
    return arr


def load_into_shards(weights: str, config: BartConfig, head: str, shape_tree: Mapping, shardings: Mapping, *,
                     dtype=None, allow_missing: Iterable[str] = (), allow_unexpected: bool = True
                     ) -> tuple[dict, LoadReport]:
    """({path tuple: sharded jax.Array}, LoadReport) for the params of `shape_tree` ({path tuple:
    ShapeDtypeStruct}) that the checkpoint at `weights` holds, each placed by `shardings` ({path
    tuple: Sharding}). Floating tensors are cast to `dtype` when given (else kept as stored).
    Params whose checkpoint shape differs from `shape_tree` are left out and listed."""
    from convert.plan import make_plan
    from convert.sources import open_source, shard_file_of

    path = os.fspath(weights)
    source = open_source(path, prefer="flax")
    plan = make_plan(source.infos, source.framework, config, head, "flax", allow_missing=allow_missing,
                     allow_unexpected=allow_unexpected, describe=f"checkpoint {path}",
                     file_of=shard_file_of(source))
    report = LoadReport(list(plan.missing), list(plan.unused), list(plan.unexpected), [])
    out, headers = {}, {}
    for step in plan.steps:
        want = shape_tree.get(step.target)
        if want is None:
            continue
        if tuple(want.shape) != tuple(step.shape):
            report.mismatched.append((step.target, tuple(step.shape)))
            continue
        out[step.target] = materialise(source, step, shardings[step.target], dtype, report, headers)
    return out, report
