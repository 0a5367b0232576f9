"""PyTorch `.bin` checkpoints. Read only through `torch.load(weights_only=True, mmap=True)`: a
pickle that names anything but tensors and plain containers is refused before it can run code.
torch is imported here and nowhere else at module level of this package's readers."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np

from convert.errors import ConversionError


def load_state_dict(path: str) -> dict:
    """{key: torch.Tensor} from a `.bin`, memory-mapped; a clear error for anything else."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading a PyTorch .bin checkpoint needs torch (pip install torch)") from None
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: not a PyTorch zip checkpoint (legacy or corrupted file); only files written by "
            f"torch.save with the default zip format are read"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"{path}: refused to unpickle: the file contains objects other than tensors and plain "
            f"containers (weights_only=True), so it was not loaded ({first})"
        ) from None
    except Exception as e:  # torch raises RuntimeError/ValueError/EOFError... for corrupt archives
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: a .bin checkpoint must hold a state dict (dict of tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        k = bad[0]
        raise ConversionError(
            f"{path}: not a state dict: entry {k!r} is {type(obj[k]).__name__}, expected a tensor"
            + (f" ({len(bad)} such entries)" if len(bad) > 1 else "")
        )
    return obj


def save_state_dict(state: dict[str, np.ndarray], path: str) -> None:
    """torch.save of numpy arrays as tensors (same bits; bf16 through an integer view)."""
    import torch

    from convert.dtypes import numpy_to_torch

    with open(path, "wb") as f:
        torch.save({k: numpy_to_torch(v) for k, v in state.items()}, f)
        f.flush()
        os.fsync(f.fileno())
