"""Flax BART params as orbax-checkpoint checkpoints (`ocp.StandardCheckpointer`), the format training
stacks built on orbax restore from, sharded or not.

`save_orbax` / `restore_orbax` move a param tree (restored straight into target shardings when
given). `convert_to_orbax` turns any checkpoint `from_pretrained` reads into a directory

    DST/config.json (+ generation/tokenizer files)   DST/flax_bart_orbax.json   DST/params/  (orbax)

reading each tensor slice by slice into its sharding (no whole-model host copy), and
`load_orbax_as_flax` / `convert_from_orbax` read such a directory back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, SingleDeviceSharding

from flax_bart.config import CONFIG_NAME, BartConfig

ORBAX_INFO_NAME = "flax_bart_orbax.json"
PARAMS_DIR = "params"
FORMAT_TAG = "flax-bart-orbax"


class OrbaxError(ValueError):
    """A checkpoint directory or tree that does not fit; the message names the path and params."""


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _flat(tree) -> dict:
    if isinstance(tree, dict) and tree and all(isinstance(k, tuple) for k in tree):
        return dict(tree)
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _own_file(directory: str, name: str, what: str) -> str:
    """The real path of `name` in `directory`, refused when it leads (through a symlink) out of it:
    a converted orbax directory comes from a stranger like any checkpoint (convert.containment)."""
    from convert.containment import contained
    from convert.errors import ConversionError

    try:
        return contained(directory, name, what)
    except ConversionError as e:
        raise OrbaxError(str(e)) from None


def _params_dir(directory) -> str:
    """The orbax checkpoint inside `directory`: `directory` itself, or `params/` of a converted one."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.isfile(os.path.join(directory, ORBAX_INFO_NAME)):
        _own_file(directory, PARAMS_DIR, "orbax params directory")
        return os.path.join(directory, PARAMS_DIR)
    return directory


def save_orbax(params, directory, *, overwrite: bool = False) -> str:
    """Write `params` (nested dict of numpy or jax arrays, sharded or not) as an orbax checkpoint at
    `directory`; orbax writes into a temporary name and renames when complete. Returns the path."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory) and not overwrite:
        raise OrbaxError(f"{directory} already exists; pass overwrite=True to replace it")
    flat = _flat(params)
    if not flat:
        raise OrbaxError("save_orbax: params is empty")
    bad = ["/".join(k) for k, v in flat.items() if not hasattr(v, "shape") or not hasattr(v, "dtype")]
    if bad:
        raise OrbaxError(f"save_orbax: leaves that are not arrays: {bad[:20]}")
    ckptr = _checkpointer()
    try:
        ckptr.save(directory, traverse_util.unflatten_dict(flat), force=overwrite)
        ckptr.wait_until_finished()
    except BaseException:
        # a failed write (a full disk) leaves orbax's background work running: stop it here, before the
        # caller reports the failure, not after (it printed "Event loop is closed" tracebacks then)
        try:
            ckptr.close()
        except Exception:
            pass
        raise
    return directory


def orbax_shapes(directory) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """{path tuple: ShapeDtypeStruct} of the arrays stored at `directory` (metadata only)."""
    path = _params_dir(directory)
    if not os.path.isdir(path):
        raise OrbaxError(f"{path}: no orbax checkpoint directory")
    ckptr = _checkpointer()
    try:
        meta = ckptr.metadata(path)
    except Exception as e:  # orbax raises several types for a directory that is no checkpoint
        raise OrbaxError(f"{path}: not a readable orbax checkpoint ({type(e).__name__}: {e})") from None
    finally:   # its background work on a broken manifest, left running, prints tracebacks at exit
        ckptr.close()
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        raise OrbaxError(f"{path}: the orbax checkpoint holds no array tree metadata")
    return {k: jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype)) for k, v in _flat(tree).items()}


def _check_fits(path: str, stored: dict, wanted: dict) -> None:
    problems = [f"missing {'/'.join(k)} {tuple(v.shape)}" for k, v in wanted.items() if k not in stored]
    problems += [f"unexpected {'/'.join(k)}" for k in stored if k not in wanted]
    problems += [f"{'/'.join(k)}: stored shape {tuple(stored[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in wanted.items() if k in stored and tuple(stored[k].shape) != tuple(v.shape)]
    if problems:
        raise OrbaxError(f"{path}: the orbax checkpoint does not fit the requested tree: " + "; ".join(problems))


def restore_orbax(directory, shape_tree=None, shardings=None):
    """The nested param tree stored at `directory` (an orbax checkpoint, or a directory written by
    `convert_to_orbax`).

    shape_tree: the expected {path: ShapeDtypeStruct} (nested or flat); every missing, unexpected or
    wrongly shaped param is named before anything is read; a different dtype is a cast. Default:
    the stored shapes and dtypes (an exact round trip).
    shardings: a tree (nested or flat) of target `Sharding`s, each array is read straight into its
    shards (on several processes: only the addressable ones). Default: the first local device."""
    path = _params_dir(directory)
    stored = orbax_shapes(path)
    wanted = stored if shape_tree is None else {k: jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype))
                                                 for k, v in _flat(shape_tree).items()}
    _check_fits(path, stored, wanted)
    flat_shardings = _flat(shardings) if shardings is not None else {}
    lacking = ["/".join(k) for k in wanted if shardings is not None and k not in flat_shardings]
    if lacking:
        raise OrbaxError(f"restore_orbax: shardings has no entry for {lacking[:20]}")
    default = SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=flat_shardings.get(k, default))
              for k, v in wanted.items()}
    return _checkpointer().restore(path, traverse_util.unflatten_dict(target))


# ---- converted checkpoint directories -----------------------------------------------------------
def _model_shapes(config: BartConfig, head: str) -> dict:
    from flax_bart.models import MODEL_CLASSES

    if head not in MODEL_CLASSES:
        raise OrbaxError(f"head {head!r} is not one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[head](config, _do_init=False).params_shape_tree()


def convert_to_orbax(src_checkpoint_dir, dst, head: str | None = None, *, config=None, dtype=None,
                     mesh: Mesh | None = None, partition_rules=None, overwrite: bool = False,
                     cache_dir=None, revision=None, allow_unexpected: bool = False) -> dict:
    """Convert any checkpoint `from_pretrained` reads (Flax msgpack, Flax or PyTorch safetensors,
    `.bin`, sharded or not; a directory, weights file or hub id) into an orbax directory at `dst`.

    head: the model head (default: the checkpoint's own). Every param of the head must be in the
    checkpoint (unexpected tensors are refused unless `allow_unexpected`, then listed in the info).
    dtype casts floating tensors. Tensors are read slice by slice into their shardings
    on `mesh` (default: one local device) and orbax writes them from there; the output appears
    atomically. Returns the info written to `flax_bart_orbax.json`."""
    from convert.api import SIDE_FILES
    from convert.dtypes import parse_dtype
    from convert.plan import infer_head
    from convert.resolve import resolve_source
    from convert.sources import open_source
    from convert.staging import StagedOutput
    from flax_bart.shard_loading import load_into_shards
    from flax_bart.sharding import auto_mesh, tree_shardings

    src_path = resolve_source(os.fspath(src_checkpoint_dir), cache_dir=cache_dir, revision=revision)
    src_dir = src_path if os.path.isdir(src_path) else os.path.dirname(os.path.abspath(src_path))
    cfg = _read_config(src_dir, config)
    source = open_source(src_path, prefer="flax")
    if head is None:
        head = infer_head(source.infos, source.framework)
    # the arrays pass through JAX, which holds float64 only with x64 enabled: refuse what it would narrow
    cast = parse_dtype(dtype)
    wide = sorted(k for k, info in source.infos.items()
                  if (cast if cast is not None and np.issubdtype(np.dtype(info.dtype), np.floating)
                      else np.dtype(info.dtype)) == np.float64)
    if wide and not jax.config.jax_enable_x64:
        from convert.errors import ConversionError

        raise ConversionError(f"{src_path}: {len(wide)} tensors would be float64 (e.g. {wide[0]!r}); an orbax "
                              "checkpoint here holds them as JAX arrays, which narrow float64 to float32 unless "
                              "JAX_ENABLE_X64 is set: pass --dtype float32 (or another) to cast them on purpose, or "
                              "convert to msgpack/safetensors, which keep float64")
    mesh = auto_mesh(mesh if mesh is not None else Mesh(np.array(jax.local_devices()[:1]), ("dp",)))
    shapes = _model_shapes(cfg, head)
    shardings = tree_shardings(shapes, mesh, partition_rules, config=cfg)
    flat, report = load_into_shards(src_path, cfg, head, shapes, shardings, dtype=parse_dtype(dtype),
                                    allow_unexpected=allow_unexpected)
    info = {"format": FORMAT_TAG, "version": 1, "head": head, "params_dir": PARAMS_DIR,
            "tensors": len(flat), "bytes": int(sum(a.nbytes for a in flat.values())),
            "source": os.path.abspath(src_path), "unused": report.unused, "unexpected": report.unexpected,
            "dtypes": sorted({np.dtype(a.dtype).name for a in flat.values()})}
    with StagedOutput(os.fspath(dst), overwrite=overwrite) as staged:
        save_orbax(traverse_util.unflatten_dict(flat), os.path.join(staged.path, PARAMS_DIR))
        del flat
        for name in SIDE_FILES:
            p = os.path.join(src_dir, name)
            if os.path.isfile(p) and not (name == CONFIG_NAME and config is not None):
                shutil.copyfile(p, os.path.join(staged.path, name))
        if not os.path.isfile(os.path.join(staged.path, CONFIG_NAME)):
            cfg.save_pretrained(staged.path)
        if dtype is not None:
            _set_config_dtype(os.path.join(staged.path, CONFIG_NAME), parse_dtype(dtype).name)
        with open(os.path.join(staged.path, ORBAX_INFO_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        staged.commit()
    return info


def _read_config(directory: str, config) -> BartConfig:
    if isinstance(config, BartConfig):
        return config
    path = os.fspath(config) if config is not None else os.path.join(directory, CONFIG_NAME)
    if config is None and os.path.lexists(path):
        _own_file(directory, CONFIG_NAME, "config file")
    if not os.path.isfile(path):
        raise OrbaxError(f"no {CONFIG_NAME} at {path}: the config is needed for the parameter shapes (pass config=)")
    return BartConfig.from_json_file(path)


def _set_config_dtype(path: str, name: str) -> None:
    with open(path, "rb") as f:
        cfg = json.loads(f.read().decode("utf-8"))
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(cfg, indent=2) + "\n")


def read_orbax_info(directory) -> dict:
    p = os.path.join(os.fspath(directory), ORBAX_INFO_NAME)
    if not os.path.isfile(p):
        return {}
    _own_file(os.fspath(directory), ORBAX_INFO_NAME, "orbax description")
    try:
        with open(p, "rb") as f:
            info = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OrbaxError(f"{p}: not a {FORMAT_TAG} description (invalid JSON: {e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_TAG:
        raise OrbaxError(f"{p}: not a {FORMAT_TAG} description")
    return info


def load_orbax_as_flax(directory, *, head: str | None = None, config=None, mesh: Mesh | None = None,
                       partition_rules=None, shardings=None) -> tuple[dict, BartConfig, str]:
    """(params, config, head) from an orbax directory written by `convert_to_orbax` (or a bare orbax
    checkpoint with `config=`). The tree is checked against the head's layout; with `mesh` (and
    `partition_rules`) or `shardings` it is restored straight into shards."""
    from convert.plan import infer_head

    directory = os.path.abspath(os.fspath(directory))
    info = read_orbax_info(directory)
    config = _read_config(directory, config)
    stored = orbax_shapes(directory)
    head = head or info.get("head") or infer_head(list(stored), "flax")
    want = {k: jax.ShapeDtypeStruct(v.shape, stored[k].dtype if k in stored else v.dtype)
            for k, v in _model_shapes(config, head).items()}
    if mesh is not None and shardings is None:
        from flax_bart.sharding import auto_mesh, tree_shardings

        shardings = tree_shardings(want, auto_mesh(mesh), partition_rules, config=config)
    return restore_orbax(directory, want, shardings), config, head


def convert_from_orbax(src, dst, *, to: str = "pytorch", format: str | None = None, dtype=None,
                       max_shard_size=None, overwrite: bool = False, quiet: bool = True, head: str | None = None,
                       config=None, allow_missing_head: bool = False) -> Any:
    """Convert an orbax directory from `convert_to_orbax` to a Hugging Face checkpoint (`to` =
    "pytorch" or "flax") through `convert.convert_checkpoint`. The params pass through one host
    copy and a temporary Flax safetensors file beside `dst`. `head` (default: the stored one) and
    `allow_missing_head` mean what they mean to convert_checkpoint: another head's params the orbax
    tree lacks are refused, by name. Returns the conversion Summary."""
    from convert import convert_checkpoint, save_flax_params
    from convert.api import _side_files

    params, config, stored_head = load_orbax_as_flax(src, config=config)
    try:   # the side files convert copies from any checkpoint, each a regular file of this directory
        side = [n for n in _side_files(os.fspath(src)) if n != CONFIG_NAME]
    except ValueError as e:
        raise OrbaxError(str(e)) from None
    dst = os.path.abspath(os.fspath(dst))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", suffix=".orbax-tmp", dir=os.path.dirname(dst))
    try:
        config.save_pretrained(tmp)
        for name in side:
            shutil.copyfile(os.path.join(os.fspath(src), name), os.path.join(tmp, name))
        save_flax_params(jax.device_get(params), tmp, format="safetensors")
        del params
        return convert_checkpoint(tmp, dst, to=to, format=format, head=head or stored_head, dtype=dtype,
                                  max_shard_size=max_shard_size, overwrite=overwrite, quiet=quiet,
                                  allow_missing_head=allow_missing_head)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
