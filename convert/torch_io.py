"""PyTorch `.bin` checkpoints. Read only through `torch.load(weights_only=True, mmap=True)`: a
pickle that names anything but tensors and plain containers is refused before it can run code.
torch is imported here and nowhere else at module level of this package's readers.

Before torch sees a file, the archive itself is checked (`check_archive`): every member stored
uncompressed, as `torch.save` writes them (a compressed member could be a decompression bomb that
the zip reader would expand in memory), exactly one `data.pkl`, and that pickle's opcodes name no
global outside `TORCH_GLOBALS` (so even a widened `torch.serialization.add_safe_globals` allowlist in
the same process cannot let a checkpoint's pickle call anything else).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile

import numpy as np

from convert.errors import ConversionError


def load_state_dict(path: str) -> dict:
    """{key: torch.Tensor} from a `.bin`, memory-mapped; a clear error for anything else."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading a PyTorch .bin checkpoint needs torch (the CPU build: pip install "
                              "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)") from None
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"{path}: not a PyTorch zip checkpoint (legacy or corrupted file); only files written by "
            f"torch.save with the default zip format are read"
        )
    check_archive(path)
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
        what = (f"key {k!r} is {type(k).__name__}, expected a str" if not isinstance(k, str)
                else f"entry {k!r} is {type(obj[k]).__name__}, expected a tensor")
        raise ConversionError(f"{path}: not a state dict: {what}"
                              + (f" ({len(bad)} such entries)" if len(bad) > 1 else ""))
    return obj


# What a state dict's pickle may name: containers, tensor rebuilders, storages and dtypes (besides
# these, `torch.<X>Storage` classes and `torch.<dtype>` objects).
TORCH_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch.storage", "UntypedStorage"),
})
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_OPS = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}


def _allowed_global(module: str, name: str) -> bool:
    if (module, name) in TORCH_GLOBALS:
        return True
    if module != "torch" or not name.isidentifier():
        return False
    if name.endswith("Storage") and name[:1].isupper():
        return True
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


def check_archive(path: str) -> None:
    """Refuse a `.bin` whose zip members are compressed, oversized or not one checkpoint, or whose
    pickle names a global outside TORCH_GLOBALS; nothing is unpickled here."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ConversionError(
                        f"{path}: archive member {info.filename!r} is compressed (method {info.compress_type}); "
                        f"torch.save stores members uncompressed, and a compressed one could expand to "
                        f"{info.file_size} bytes in memory, so the file is refused"
                    )
                if info.file_size > size or info.compress_size > size:
                    raise ConversionError(
                        f"{path}: archive member {info.filename!r} declares {info.file_size} bytes, more than "
                        f"the {size}-byte file: corrupted or hostile"
                    )
            pickles = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                raise ConversionError(
                    f"{path}: not a torch.save checkpoint: expected one data.pkl in the archive, found {len(pickles)}"
                )
            data = z.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{path}: not a readable zip archive ({type(e).__name__}: {e})") from None
    where = f"{path}: {pickles[0].filename}"
    scan_pickle(data, where)
    prefix = pickles[0].filename[: -len("data.pkl")]
    sizes = {i.filename: i.file_size for i in infos}
    for key, (nbytes, storage) in _storage_records(data, where).items():
        record = f"{prefix}data/{key}"
        if record not in sizes:
            raise ConversionError(f"{path}: the pickle's {storage} {key!r} has no data record {record!r} in the archive")
        if sizes[record] != nbytes:
            # torch.load(mmap=True) would read the missing bytes from whatever follows the record
            raise ConversionError(
                f"{path}: data record {record!r} holds {sizes[record]} bytes, but the pickle declares a "
                f"{storage} of {nbytes} bytes there: truncated or corrupted"
            )


class _Inert(dict):
    """What a stand-in's call returns: takes items (SETITEMS) and state (BUILD), does nothing."""

    def __setstate__(self, state):
        pass


class _Stub:
    """What a vetted global stands for while `_storage_records` walks a pickle: callable, inert."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        return _Inert()


def _storage_records(data: bytes, where: str) -> dict[str, tuple[int, str]]:
    """{data record key: (bytes, storage type name)} that a vetted torch.save pickle declares, read by
    an unpickler whose every global is an inert stand-in (nothing is imported or called)."""
    import torch

    records: dict[str, tuple[int, str]] = {}

    class Walker(pickle.Unpickler):
        def find_class(self, module, name):   # scan_pickle allowed only TORCH_GLOBALS' kind
            return _Stub(f"{module}.{name}")

        def persistent_load(self, pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                    and isinstance(pid[1], _Stub) and isinstance(pid[2], str) and isinstance(pid[4], int)):
                raise ConversionError(f"{where}: unexpected persistent id {pid!r}: not a torch.save storage")
            storage, key, numel = pid[1].name, pid[2], pid[4]
            module, _, cls = storage.rpartition(".")
            with warnings.catch_warnings():   # torch.<X>Storage.dtype warns that typed storages are deprecated
                warnings.simplefilter("ignore")
                dtype = getattr(getattr(torch, cls, None), "dtype", None) if module == "torch" else None
            if storage == "torch.storage.UntypedStorage":
                itemsize = 1
            elif isinstance(dtype, torch.dtype):
                itemsize = dtype.itemsize
            else:
                raise ConversionError(f"{where}: storage type {storage} of data record {key!r} is not a tensor storage")
            if numel < 0:
                raise ConversionError(f"{where}: data record {key!r} declares {numel} elements")
            records[key] = (numel * itemsize, storage)
            return None

    try:
        Walker(io.BytesIO(data)).load()
    except ConversionError:
        raise
    except Exception as e:  # a malformed pickle: the stand-ins make no sense of it
        raise ConversionError(f"{where}: malformed pickle ({type(e).__name__}: {e})") from None
    return records


def scan_pickle(data: bytes, where: str) -> None:
    """Walk a pickle's opcodes (without executing them) and refuse any global it would import that
    a tensor state dict does not need; also refuse the ways to import one that a scan cannot name."""
    recent: list = []  # string literals pushed lately (operands of STACK_GLOBAL)
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                if not _allowed_global(module, name):
                    raise ConversionError(
                        f"{where}: the pickle imports {module}.{name} (byte {pos}), which a tensor state dict never "
                        f"needs: refused to unpickle it (unpickling it could run code)"
                    )
            elif op.name == "STACK_GLOBAL":
                if len(recent) < 2 or not _allowed_global(recent[-2], recent[-1]):
                    named = f"{recent[-2]}.{recent[-1]}" if len(recent) >= 2 else "a computed name"
                    raise ConversionError(
                        f"{where}: the pickle imports {named} (byte {pos}), which a tensor state dict never needs; "
                        f"refused to unpickle it (unpickling it could run code)"
                    )
            elif op.name in ("EXT1", "EXT2", "EXT4"):
                raise ConversionError(f"{where}: the pickle imports through the copyreg extension registry "
                                      f"(byte {pos}): refused to unpickle it")
            if op.name in _STRING_OPS:
                recent = (recent + [arg if isinstance(arg, str) else str(arg)])[-2:]
            elif op.name not in _MEMO_OPS:
                recent = []
    except ConversionError:
        raise
    except Exception as e:  # pickletools raises ValueError and friends on malformed input
        raise ConversionError(f"{where}: malformed pickle ({type(e).__name__}: {e})") from None


def save_state_dict(state: dict[str, np.ndarray], path: str) -> None:
    """torch.save of numpy arrays as tensors (same bits; bf16 through an integer view); an array given
    under several names is one tensor there, as torch.save writes tied weights. A failed
    write raises OSError (torch's zip writer would otherwise mask it behind a RuntimeError)."""
    import torch

    from convert.dtypes import numpy_to_torch

    tensors, made = {}, {}
    for k, v in state.items():   # one array under several names (tied copies): one storage, saved once
        if id(v) not in made:
            made[id(v)] = numpy_to_torch(v)
        tensors[k] = made[id(v)]
    try:
        with open(path, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as e:
        cause = e.__context__
        while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
            cause = cause.__context__
        if isinstance(cause, KeyboardInterrupt):  # Ctrl-C inside torch's zip writer: an interrupt, not a bad disk
            raise KeyboardInterrupt from None
        if isinstance(cause, OSError):
            raise cause from None
        raise OSError(f"{path}: torch.save failed ({e})") from e
