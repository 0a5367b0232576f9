"""Dtype names across safetensors, flax msgpack, torch and numpy; casts; non-finite counts.

bfloat16 and the float8 types are `ml_dtypes` numpy dtypes, so every dtype round-trips bit for bit
without a float32 detour.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from convert.errors import ConversionError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# safetensors header name -> numpy dtype
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": BFLOAT16,
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}
# flax msgpack stores `dtype.name`; only plain numeric names are accepted (never object dtypes).
MSGPACK_DTYPES: dict[str, np.dtype] = {d.name: d for d in SAFETENSORS_DTYPES.values()}

FLOAT_DTYPES = frozenset(
    SAFETENSORS_DTYPES[k] for k in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
)

_USER_NAMES = {
    "float32": "F32", "fp32": "F32", "f32": "F32", "float": "F32",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "bfloat16": "BF16", "bf16": "BF16",
    "float64": "F64", "fp64": "F64", "double": "F64",
}


def is_float(dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES


def parse_dtype(value) -> np.dtype | None:
    """A user-given dtype (`"bf16"`, `"float16"`, `np.float32`, `jnp.bfloat16`, None) as numpy."""
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower().removeprefix("torch.").removeprefix("jnp.").removeprefix("np.")
        if key not in _USER_NAMES:
            raise ConversionError(
                f"dtype {value!r} is not supported; expected one of {sorted(set(_USER_NAMES))}"
            )
        return SAFETENSORS_DTYPES[_USER_NAMES[key]]
    try:
        d = np.dtype(getattr(value, "dtype", value))
    except TypeError as e:
        raise ConversionError(f"dtype {value!r} is not a dtype ({e})") from None
    if d not in FLOAT_DTYPES:
        raise ConversionError(f"dtype {value!r}: only floating dtypes can be a target, got {d.name}")
    return d


def safetensors_name(dtype) -> str:
    d = np.dtype(dtype)
    if d not in _TO_SAFETENSORS:
        raise ConversionError(f"dtype {d.name} cannot be stored in safetensors")
    return _TO_SAFETENSORS[d]


def cast(arr: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """Cast floating arrays to `dtype` (round to nearest even); leave other arrays alone."""
    if dtype is None or arr.dtype == dtype or not is_float(arr.dtype):
        return arr
    return arr.astype(dtype)


# ---- torch (imported lazily by callers that already have torch objects) ----------------------
def torch_to_numpy(t) -> np.ndarray:
    """A CPU torch tensor as a numpy array with the same bits (bf16/fp8 through ml_dtypes)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    special = {
        torch.bfloat16: (torch.int16, BFLOAT16),
        torch.float8_e4m3fn: (torch.uint8, SAFETENSORS_DTYPES["F8_E4M3"]),
        torch.float8_e5m2: (torch.uint8, SAFETENSORS_DTYPES["F8_E5M2"]),
    }
    if t.dtype in special:
        carrier, target = special[t.dtype]
        return t.view(carrier).numpy().view(target)
    return t.numpy()


def torch_dtype_to_numpy(torch_dtype) -> np.dtype:
    import torch

    table = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
        torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    if torch_dtype not in table:
        raise ConversionError(f"torch dtype {torch_dtype} is not supported in a checkpoint")
    return SAFETENSORS_DTYPES[table[torch_dtype]]


def numpy_to_torch(arr: np.ndarray):
    """A torch tensor sharing `arr`'s memory (bf16/fp8 through an integer view)."""
    import torch

    arr = np.ascontiguousarray(arr)
    if arr.dtype == BFLOAT16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    if arr.dtype == SAFETENSORS_DTYPES["F8_E4M3"]:
        return torch.from_numpy(arr.view(np.uint8)).view(torch.float8_e4m3fn)
    if arr.dtype == SAFETENSORS_DTYPES["F8_E5M2"]:
        return torch.from_numpy(arr.view(np.uint8)).view(torch.float8_e5m2)
    return torch.from_numpy(arr)


# ---- non-finite values ------------------------------------------------------------------------
_BITS = {BFLOAT16: (np.uint16, 0x7F80, 0x007F)}  # dtype -> (unsigned view, exponent, mantissa)
_CHUNK = 1 << 20


def count_nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """(number of NaN, number of ±Inf) in a floating array, in bounded extra memory."""
    if not is_float(arr.dtype) or arr.size == 0:
        return 0, 0
    flat = np.ascontiguousarray(arr).reshape(-1)
    nan = inf = 0
    bits = _BITS.get(arr.dtype)
    native = arr.dtype in (np.float16, np.float32, np.float64)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        if native:
            if np.isfinite(part).all():
                continue
            nan += int(np.isnan(part).sum())
            inf += int(np.isinf(part).sum())
        elif bits is not None:  # bfloat16: look at the exponent bits
            utype, exp, man = bits
            u = part.view(utype)
            special = (u & utype(exp)) == utype(exp)
            if not special.any():
                continue
            s = u[special]
            n = int(((s & utype(man)) != 0).sum())
            nan += n
            inf += int(s.size) - n
        else:  # float8: through float32 (rare, small)
            f = part.astype(np.float32)
            nan += int(np.isnan(f).sum())
            inf += int(np.isinf(f).sum())
    return nan, inf


def transpose2d(a: np.ndarray) -> np.ndarray:
    """`a.T` as a new C-contiguous array, copied in strips of rows (several times faster than
    `np.ascontiguousarray(a.T)` on large matrices, which walks memory with a huge stride)."""
    out = np.empty(a.shape[::-1], a.dtype)
    for i in range(0, a.shape[0], 16):
        out[:, i:i + 16] = a[i:i + 16].T
    return out
