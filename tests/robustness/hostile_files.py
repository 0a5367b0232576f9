"""Hostile weight files: pickles that run code or import unexpected globals, zip bombs and other
broken archives disguised as `.bin`, corrupted safetensors headers, broken Flax msgpack."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hostile import (
    GIB, Evil, _reduce_pickle, _short, _small_state, case, deflate, flax_dir, pt_dir, pt_state, stored,
    torch_members, torch_zip_with_pickle, weights_only_dir, write_config, write_zip,
)

REFUSED = r"refused to unpickle"
BIN = r"pytorch_model\.bin"


@case("pickle_reduce_open", "pickle", BIN + r".*imports io\.open .*" + REFUSED)
def _(root, marker):
    import torch

    d = root / "src"
    write_config(d)
    torch.save({"model.shared.weight": torch.zeros(64, 16), "x": Evil(marker)}, d / "pytorch_model.bin")
    return d


@case("pickle_os_system", "pickle", BIN + r".*imports os\.system .*" + REFUSED)
def _(root, marker):
    return torch_zip_with_pickle(root, _reduce_pickle("os", "system", f"touch {marker}"))


@case("pickle_builtins_eval", "pickle", BIN + r".*imports builtins\.eval .*" + REFUSED)
def _(root, marker):
    return torch_zip_with_pickle(root, _reduce_pickle("builtins", "eval", f"open({str(marker)!r}, 'w')"))


@case("pickle_builtins_getattr", "pickle", BIN + r".*imports builtins\.getattr .*" + REFUSED)
def _(root, marker):
    return torch_zip_with_pickle(root, _reduce_pickle("builtins", "getattr", "x"))


@case("pickle_stack_global", "pickle", BIN + r".*imports os\.system .*" + REFUSED)
def _(root, marker):
    pkl = b"\x80\x04" + _short("os") + b"\x94" + _short("system") + b"\x94\x93" + _short(f"touch {marker}") + b"\x85R."
    return torch_zip_with_pickle(root, pkl)


@case("pickle_stack_global_from_memo", "pickle", BIN + r".*imports a computed name .*" + REFUSED)
def _(root, marker):
    pkl = (b"\x80\x04" + _short("os") + b"\x94" + _short("system") + b"\x94" + b"00"  # push, memoize, pop both
           + b"h\x00h\x01\x93" + _short(f"touch {marker}") + b"\x85R.")
    return torch_zip_with_pickle(root, pkl)


@case("pickle_ext_registry", "pickle", BIN + r".*copyreg extension registry")
def _(root, marker):
    return torch_zip_with_pickle(root, b"\x80\x02\x82\x01)R.")


@case("pickle_numpy_arrays", "pickle", BIN + r".*imports numpy\._core\.multiarray\._reconstruct .*" + REFUSED)
def _(root, marker):
    import torch

    d = root / "src"
    write_config(d)
    torch.save({"model.shared.weight": np.zeros((64, 16), np.float32)}, d / "pytorch_model.bin")
    return d


@case("pickle_whole_module", "pickle", BIN + r".*imports torch\.nn\.modules\.linear\.Linear .*" + REFUSED)
def _(root, marker):
    import torch

    d = root / "src"
    write_config(d)
    torch.save(torch.nn.Linear(2, 2), d / "pytorch_model.bin")
    return d


@case("pickle_legacy_format", "pickle", BIN + r": not a PyTorch zip checkpoint")
def _(root, marker):
    import torch

    d = root / "src"
    write_config(d)
    torch.save({"x": Evil(marker)}, d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    return d


@case("pickle_plain_file", "pickle", BIN + r": not a PyTorch zip checkpoint")
def _(root, marker):
    return weights_only_dir(root, "pytorch_model.bin", pickle.dumps({"x": Evil(marker)}))


@case("pickle_in_second_shard", "pickle", r"pytorch_model-00002-of-00002\.bin.*imports io\.open .*" + REFUSED)
def _(root, marker):
    import torch

    d = pt_dir(root, "bin", shards=2)
    torch.save({"x": Evil(marker)}, d / "pytorch_model-00002-of-00002.bin")
    return d


@case("pickle_malformed", "pickle", BIN + r".*malformed pickle")
def _(root, marker):
    return torch_zip_with_pickle(root, b"\x80\x02\xff\xfe garbage")


@case("bin_not_a_state_dict", "pickle", BIN + r": a \.bin checkpoint must hold a state dict .* got list")
def _(root, marker):
    import torch

    d = root / "src"
    write_config(d)
    torch.save([torch.zeros(2)], d / "pytorch_model.bin")
    return d


@case("bin_storage_larger_than_record", "pickle", BIN + r": data record .*data/0. holds 280000 bytes, but the pickle "
                                                         r"declares a torch\.FloatStorage of 8589934588 bytes", bounded=True)
def _(root, marker):
    import torch

    members = torch_members({"model.shared.weight": torch.zeros(70000)})
    old = b"J" + struct.pack("<i", 70000)  # numel and size, as BININT
    members = [(n, d.replace(old, b"J" + struct.pack("<i", 2**31 - 1)) if n.endswith("data.pkl") else d)
               for n, d in members]
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", stored(members))
    return d


@case("bin_record_shorter_than_its_storage", "pickle", BIN + r": data record .*data/0. holds 64 bytes, but the pickle "
                                                             r"declares a torch\.FloatStorage of \d+ bytes")
def _(root, marker):
    # memory-mapped loading would take the next records' bytes for the rest of this tensor
    members = [(n, d[:64] if n.endswith("/data/0") else d) for n, d in torch_members(_small_state())]
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", stored(members))
    return d


@case("bin_missing_storage_record", "pickle", BIN + r": the pickle.s torch\.\w+Storage .0. has no data record .*data/0")
def _(root, marker):
    members = [(n, d) for n, d in torch_members(_small_state()) if not n.endswith("/data/0")]
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", stored(members))
    return d


# zip archives
@case("zip_bomb_pickle", "zip", BIN + r": archive member '.*data\.pkl' is compressed", bounded=True)
def _(root, marker):
    out = []
    for n, data in torch_members(_small_state()):
        if n.endswith("/data.pkl"):
            payload, crc, size = deflate(data, zeros=GIB)  # valid pickle, then 1 GiB of zeros
            out.append((n, payload, zipfile.ZIP_DEFLATED, crc, size))
        else:
            out.append((n, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", out)
    return d


@case("zip_bomb_storage", "zip", BIN + r": archive member '.*data/0' is compressed", bounded=True)
def _(root, marker):
    out = []
    for n, data in torch_members(_small_state()):
        if n.endswith("/data/0"):
            payload, crc, size = deflate(b"", zeros=GIB)
            out.append((n, payload, zipfile.ZIP_DEFLATED, crc, size))
        else:
            out.append((n, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", out)
    return d


@case("zip_lying_size", "zip", BIN + r": archive member '.*data/0' declares 3221225472 bytes, more than", bounded=True)
def _(root, marker):
    out = [(n, d, zipfile.ZIP_STORED, zlib.crc32(d), 3 * GIB if n.endswith("/data/0") else len(d))
           for n, d in torch_members(_small_state())]
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", out)
    return d


@case("zip_two_pickles", "zip", BIN + r": not a torch\.save checkpoint: expected one data\.pkl in the archive, found 2")
def _(root, marker):
    members = torch_members(_small_state())
    members += [("other/data.pkl", dict(members)[next(n for n, _ in members if n.endswith("data.pkl"))])]
    d = root / "src"
    write_config(d)
    write_zip(d / "pytorch_model.bin", stored(members))
    return d


@case("zip_truncated", "zip", BIN + r": not a PyTorch zip checkpoint")
def _(root, marker):
    d = pt_dir(root, "bin")
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return d


# safetensors
ST = r"model\.safetensors"


def st_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def st_dir(root: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    return weights_only_dir(root, "model.safetensors", st_bytes(header, data, length))


def _t(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@case("st_header_dense_containers", "safetensors", ST + r": safetensors header of \d+ bytes holds \d+ JSON objects "
      r"and lists and \d+ values, far more than tensor entries need", bounded=True)
def _(root, marker):   # 4 MB of `{},`: ~150 MB of Python dicts if parsed
    junk = b"[" + b",".join([b"{}"] * 1_300_000) + b"]"
    return st_dir(root, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "junk": ' + junk + b"}}",
                  b"\0" * 8)


@case("st_header_dense_numbers", "safetensors", ST + r": safetensors header of \d+ bytes holds .* far more than",
      bounded=True)
def _(root, marker):   # a shape of 2 million ones
    return st_dir(root, b'{"a": {"dtype": "F32", "shape": [' + b",".join([b"1"] * 2_000_000) + b'], '
                  b'"data_offsets": [0, 4]}}', b"\0" * 4)


@case("st_too_many_dims", "safetensors", ST + r": tensor 'a': shape has 65 dimensions; at most 64")
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(1,) * 65, offsets=(0, 4))}, b"\0" * 4)


@case("st_header_over_the_cap", "safetensors", ST + r": safetensors header length 20971520 exceeds the 16777216-byte",
      bounded=True)
def _(root, marker):
    return st_dir(root, b"{}", length=20 * 2**20)


@case("st_overlapping_offsets", "safetensors", ST + r": tensors 'a' \[0, 8\) and 'b' \[4, 12\) overlap")
def _(root, marker):
    return st_dir(root, {"a": _t(), "b": _t(offsets=(4, 12))}, b"\0" * 12)


@case("st_same_offsets_twice", "safetensors", ST + r": tensors .* overlap in the data section")
def _(root, marker):
    return st_dir(root, {"a": _t(), "b": _t()}, b"\0" * 8)


@case("st_offset_past_the_end", "safetensors", ST + r": tensor 'a' ends at data byte 4000 but the file holds only 8")
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(1000,), offsets=(0, 4000))}, b"\0" * 8)


@case("st_header_longer_than_file", "safetensors", ST + r": safetensors header of 10000 bytes points past the end")
def _(root, marker):
    return st_dir(root, b'{"a": 1}', length=10_000)


@case("st_header_length_huge", "safetensors", ST + r": safetensors header length 4611686018427387904 exceeds",
      bounded=True)
def _(root, marker):
    return st_dir(root, b"{}", length=2**62)


@case("st_huge_shape_small_span", "safetensors",
      ST + r": tensor 'a': data_offsets span 8 bytes but F32 x \(1000000000000, 1000000000000\) needs", bounded=True)
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(10**12, 10**12))}, b"\0" * 8)


@case("st_huge_shape_huge_span", "safetensors", ST + r": tensor 'a' ends at data byte 17179869184 but the file holds",
      bounded=True)
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(2**16, 2**16), offsets=(0, 2**34))}, b"\0" * 8)


@case("st_unknown_dtype", "safetensors", ST + r": tensor 'a': unknown dtype 'F33'")
def _(root, marker):
    return st_dir(root, {"a": _t("F33")}, b"\0" * 8)


@case("st_object_dtype", "safetensors", ST + r": tensor 'a': unknown dtype 'O'")
def _(root, marker):
    return st_dir(root, {"a": _t("O")}, b"\0" * 8)


@case("st_negative_shape", "safetensors", ST + r": tensor 'a': shape must be a list of non-negative integers, got \[-2\]")
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(-2,))}, b"\0" * 8)


@case("st_float_shape", "safetensors", ST + r": tensor 'a': shape must be a list of non-negative integers, got \[2\.0\]")
def _(root, marker):
    return st_dir(root, {"a": _t(shape=(2.0,))}, b"\0" * 8)


@case("st_bool_shape", "safetensors", ST + r": tensor 'a': shape must be a list of non-negative integers, got \[True\]")
def _(root, marker):
    return st_dir(root, {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4)


@case("st_reversed_offsets", "safetensors", ST + r": tensor 'a': data_offsets must be \[begin, end\]")
def _(root, marker):
    return st_dir(root, {"a": _t(offsets=(8, 0))}, b"\0" * 8)


@case("st_entry_not_object", "safetensors", ST + r": tensor 'a': header entry must be an object")
def _(root, marker):
    return st_dir(root, {"a": [1, 2]}, b"")


@case("st_header_not_object", "safetensors", ST + r": safetensors header must be a JSON object, got list")
def _(root, marker):
    return st_dir(root, ["not", "an", "object"])


@case("st_header_not_utf8", "safetensors", ST + r": safetensors header is not valid UTF-8 JSON \(not UTF-8")
def _(root, marker):
    return st_dir(root, b'{"\xff\xfe": 1}')


@case("st_header_deep_nesting", "safetensors", ST + r": safetensors header nests JSON deeper than 64 levels")
def _(root, marker):
    # 5000 levels, padded (inside a string) so that the header is not also too dense with lists
    return st_dir(root, b'{"__metadata__": {"pad": "' + b" " * 80_000 + b'"}, "a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")


@case("st_header_huge_integer", "safetensors", ST + r": safetensors header is not valid UTF-8 JSON .*digits")
def _(root, marker):
    return st_dir(root, b'{"a": ' + b"9" * 5000 + b"}")


@case("st_metadata_not_strings", "safetensors", ST + r": safetensors __metadata__ must map strings to strings")
def _(root, marker):
    return st_dir(root, {"__metadata__": {"format": 5}})


@case("st_truncated", "safetensors", ST + r": tensor .* ends at data byte \d+ but the file holds only \d+ data bytes")
def _(root, marker):
    d = pt_dir(root)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return d


@case("st_empty_file", "safetensors", ST + r": truncated safetensors file: 0 bytes")
def _(root, marker):
    return weights_only_dir(root, "model.safetensors", b"")


@case("st_integer_weights", "safetensors", r"model\.shared\.weight: dtype int64; BART parameters are floating point")
def _(root, marker):
    state = pt_state()
    state["model.shared.weight"] = state["model.shared.weight"].astype(np.int64)
    return pt_dir(root, state=state)


@case("st_shapes_contradict_config", "safetensors",
      r"model\.shared\.weight: shape \[64, 8\], but config\.json implies \[64, 16\]")
def _(root, marker):
    state = pt_state()
    state["model.shared.weight"] = state["model.shared.weight"][:, :8].copy()
    return pt_dir(root, state=state)


@case("st_tensor_in_two_shards", "safetensors", r"tensor '.*' appears in both .*model-0000\d-of-00002\.safetensors")
def _(root, marker):
    from safetensors.numpy import save_file

    d = pt_dir(root, shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    k1 = next(k for k, v in index["weight_map"].items() if v.startswith("model-00001"))
    shard2 = d / "model-00002-of-00002.safetensors"
    from safetensors.numpy import load_file

    part = load_file(shard2)
    part[k1] = pt_state()[k1]
    save_file(part, shard2, metadata={"format": "pt"})
    return d


# flax msgpack (a Flax source: `convert --to pytorch`)
MP = r"flax_model\.msgpack: not a valid flax msgpack checkpoint: "


def mp_dir(root: Path, data: bytes) -> Path:
    return weights_only_dir(root, "flax_model.msgpack", data)


def _ext_array(shape, dtype: str, nbytes: int, data: bytes | None = None):
    import msgpack

    payload = b"\x93" + msgpack.packb(list(shape)) + msgpack.packb(dtype) + msgpack.packb(
        data if data is not None else b"\0" * nbytes, use_bin_type=True)
    return msgpack.ExtType(1, payload)


def _packb(obj) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


@case("mp_truncated", "msgpack", MP + r".*(truncated|past the end)", to="pytorch")
def _(root, marker):
    d = flax_dir(root)
    data = (d / "flax_model.msgpack").read_bytes()
    (d / "flax_model.msgpack").write_bytes(data[:-100])
    return d


@case("mp_random_bytes", "msgpack", MP, to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\x85" + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@case("mp_unsupported_extension", "msgpack", MP + r"unsupported msgpack extension type 2", to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\x81\xa1a\xc7\x05\x02hello")


@case("mp_object_dtype", "msgpack", MP + r"array dtype 'O' is not one of", to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb({"a": _ext_array([2], "O", 2)}))


@case("mp_unknown_dtype", "msgpack", MP + r"array dtype 'float33' is not one of", to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb({"a": _ext_array([2], "float33", 8)}))


@case("mp_huge_shape", "msgpack", MP + r"array data of 8 bytes does not match float32\[1000000000000\]",
      bounded=True, to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb({"a": _ext_array([10**12], "float32", 8)}))


@case("mp_bool_shape", "msgpack", MP + r"array shape \[True\] is not a list of non-negative integers", to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb({"a": _ext_array([True], "float32", 4)}))


@case("mp_deep_nesting", "msgpack", MP + r"nesting deeper than 64", to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\x81\xa1a" * 10_000 + b"\xc0")


@case("mp_huge_map_count", "msgpack", MP + r"needs 1 more bytes but the file ends", bounded=True, to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\xdf\xff\xff\xff\xff")


@case("mp_huge_bin_length", "msgpack", MP + r"needs 4294967295 more bytes but the file ends", bounded=True, to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\x81\xa1a\xc6\xff\xff\xff\xff")


@case("mp_many_empty_maps", "msgpack", MP + r"more than 250000 msgpack values besides the array payloads",
      bounded=True, to="pytorch")
def _(root, marker):   # 2 MB of one-byte empty maps: ~150 MB of Python dicts before the value budget
    n = 2_000_000
    return mp_dir(root, b"\x81\xa1a\xdd" + n.to_bytes(4, "big") + b"\x80" * n)


@case("mp_top_level_array", "msgpack", r"flax_model\.msgpack: a flax msgpack checkpoint must hold a map at top level",
      to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb([1, 2, 3]))


@case("mp_key_not_utf8", "msgpack", MP + r"a string is not UTF-8", to="pytorch")
def _(root, marker):
    return mp_dir(root, b"\x81\xa2\xff\xfe\xc0")


@case("mp_trailing_bytes", "msgpack", MP + r"3 trailing bytes after the top-level map", to="pytorch")
def _(root, marker):
    return mp_dir(root, _packb({"a": _ext_array([2], "float32", 8)}) + b"\0\0\0")


@case("mp_chunked_shape_strings", "msgpack",
      r"flax_model\.msgpack: chunked array 'a' has shape \['x', 'y'\], not non-negative integers", to="pytorch")
def _(root, marker):
    tree = {"a": {"__msgpack_chunked_array__": True, "shape": {"0": "x", "1": "y"},
                  "chunks": {"0": _ext_array([2], "float32", 8)}}}
    return mp_dir(root, _packb(tree))


@case("mp_empty_file", "msgpack", MP + r"needs 1 more bytes", to="pytorch")
def _(root, marker):
    return mp_dir(root, b"")
