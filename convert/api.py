"""File-level entry points: load a checkpoint of any format as Flax params, save Flax params, and
convert a checkpoint directory streaming from source files to target files."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Iterable, Mapping

import numpy as np

from flax_bart.config import CONFIG_NAME, BartConfig, ConfigError, read_json_file

from convert import engine, rules
from convert.containment import contained
from convert.dtypes import is_float, parse_dtype
from convert.errors import ConversionError
from convert.plan import classifier_rows, infer_head, make_plan, with_layout_of
from convert.resolve import resolve_source
from convert.sources import WEIGHT_FILES, open_source, shard_file_of
from convert.staging import StagedOutput
from convert.summary import Summary
from convert.tree import _flax_input, unflatten
from convert.writers import CheckpointWriter

SUMMARY_NAME = "conversion_summary.json"
# Small files that travel with the weights.
SIDE_FILES = (CONFIG_NAME, "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")
FORMATS = {"flax": ("msgpack", "safetensors"), "pt": ("safetensors", "bin")}


def _config_for(path: str, config) -> BartConfig:
    if isinstance(config, BartConfig):
        return config
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    cfg_path = config or os.path.join(directory, CONFIG_NAME)
    if config is None and os.path.lexists(cfg_path):
        contained(directory, CONFIG_NAME, "config file")  # the checkpoint's own, not a symlink out of it
    if not os.path.exists(cfg_path):   # a FIFO or a folder there: read_json_file names it
        raise ConversionError(f"no {CONFIG_NAME} at {cfg_path}: the config is needed to check shapes (pass one explicitly)")
    try:
        return BartConfig.from_json_file(cfg_path)
    except ConfigError as e:
        raise ConversionError(str(e)) from None


def load_flax_params(directory_or_file, config: BartConfig | str | None, head: str, *, dtype=None,
                     allow_missing: Iterable[str] = (), allow_unexpected: bool = False,
                     prefer: str = "flax", quiet: bool = True):
    """(nested numpy params in the 4.x Flax layout of `head`, Summary) from any supported
    checkpoint. In a directory holding both, files of framework `prefer` ("flax" or "pt") win.
    `config`: a BartConfig, a path to a config.json, or None for the one beside the weights.

    Head-only params absent from the checkpoint are an error unless their prefix is in
    `allow_missing` (see `rules.head_only_prefixes`); they are then listed in `summary.missing`
    and left out of the tree for the caller to initialise.
    """
    path = os.fspath(directory_or_file)
    if prefer not in ("flax", "pt"):
        raise ConversionError(f"prefer={prefer!r}: expected 'flax' or 'pt'")
    source = open_source(path, prefer=prefer)
    config = _config_for(path, config).with_labels_from_weights(classifier_rows(source.infos, source.framework), path)
    config = with_layout_of(config, source.infos, source.framework, source.read, head, path)
    plan = make_plan(source.infos, source.framework, config, head, "flax", allow_missing=allow_missing,
                     allow_unexpected=allow_unexpected, describe=f"checkpoint {path}",
                     file_of=shard_file_of(source))
    summary = engine.start_summary(plan, source)
    flat: dict = {}
    engine.run(plan, source, [s.target for s in plan.steps], flat.__setitem__, summary,
               dtype=parse_dtype(dtype), quiet=quiet)
    summary.target = {"framework": "flax", "format": "memory", "files": [], "tensors": len(flat),
                      "bytes": sum(a.nbytes for a in flat.values())}
    return unflatten(flat), summary


def _weight_file_pattern(fmt: str) -> re.Pattern:
    single, index = WEIGHT_FILES[fmt]
    stem, ext = single.rsplit(".", 1)
    return re.compile(rf"^({re.escape(single)}|{re.escape(index)}|{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.{ext})$")


def _replaceable(directory: str, name: str, written: str) -> bool:
    """Whether an earlier weight file is this save's to replace: one of the format written, or a Flax
    file of the other format; a PyTorch safetensors file beside them is the user's, and stays."""
    safetensors = _weight_file_pattern("safetensors")
    if _weight_file_pattern(written).match(name) or not safetensors.match(name):
        return True
    if name.endswith(".index.json"):   # as its shards are
        shards = sorted(n for n in os.listdir(directory) if safetensors.match(n) and not n.endswith(".json")
                        and n != WEIGHT_FILES["safetensors"][0])
        return not shards or _replaceable(directory, shards[0], written)
    try:
        from safetensors import safe_open

        with safe_open(os.path.join(directory, name), "np") as f:
            return (f.metadata() or {}).get("format") == "flax"
    except Exception:   # unreadable: not known to be ours
        return False


def save_flax_params(params: Mapping, directory, *, format: str = "msgpack", max_shard_size=None,
                     sharded_format: str | None = None) -> list[str]:
    """Write Flax params as 4.x `save_pretrained` would (`flax_model.msgpack`, or Flax-format
    `model.safetensors`; sharded with an index past `max_shard_size`). Each file appears
    atomically; earlier weight files of the same format in `directory` are replaced. `sharded_format`:
    the format to write instead when the params need several shards (4.x's `save_pretrained` wrote
    msgpack shards even with `safe_serialization=True`, and 4.x cannot read sharded safetensors); the
    earlier Flax weight files of both formats are then replaced (a PyTorch safetensors file stays)."""
    if format not in FORMATS["flax"]:
        raise ConversionError(f"format {format!r}: Flax params are saved as one of {FORMATS['flax']}")
    flat = {k: np.asarray(v) for k, v in _flax_input(params).items()}
    directory = os.fspath(directory)
    original = format
    # with `sharded_format` (save_pretrained) an earlier save of any Flax format is replaced (an old
    # msgpack would be read before a new safetensors file)
    patterns = [_weight_file_pattern(f) for f in (FORMATS["flax"] if sharded_format else (format,))]
    if sharded_format is not None and sharded_format != format:
        specs = [(k, a.shape, a.dtype) for k, a in flat.items()]
        if len(CheckpointWriter(directory, format, "flax", specs, max_shard_size).files) > 1:  # plans only
            format = sharded_format
    stale = tuple(n for n in (os.listdir(directory) if os.path.isdir(directory) else ())
                  if any(p.match(n) for p in patterns) and _replaceable(directory, n, format))
    with StagedOutput(directory, merge=True) as staged:
        writer = CheckpointWriter(staged.path, format, "flax", [(k, a.shape, a.dtype) for k, a in flat.items()],
                                  max_shard_size)
        try:
            for key in writer.order:
                writer.write(key, flat[key])
        except BaseException:
            writer.abort()
            raise
        files = writer.close()
        entries = [WEIGHT_FILES[format][1], WEIGHT_FILES[format][0]]
        if sharded_format is not None:   # the other format's old entry files go first, before the new ones appear
            entries += [n for f in (sharded_format, original) for n in WEIGHT_FILES[f][::-1] if n not in entries]
        staged.commit(stale=stale, last=tuple(entries))
    return [os.path.join(directory, f) for f in files]


def _check_not_overlapping(src_path: str, inputs: list[str], dst: str) -> None:
    """Refuse a DST that is, contains or lies inside what the conversion reads: a source directory
    (nothing is written into a checkpoint being read, even as a new subfolder), and every input file
    (weights, index, config, side files) of a source given as a file. With `--overwrite` such a DST
    would replace the input by the output."""
    dst_real = os.path.realpath(dst)
    if os.path.isdir(src_path):
        src_real = os.path.realpath(src_path)
        if os.path.commonpath([src_real, dst_real]) in (src_real, dst_real):
            raise ConversionError(f"output {dst} is the source directory {src_path}, inside it or contains it; "
                                  f"choose a DST outside the checkpoint")
    for p in [src_path] + inputs:
        real = os.path.realpath(p)
        if real == dst_real or os.path.commonpath([real, dst_real]) == dst_real:
            raise ConversionError(f"output {dst} is an input of the conversion or contains one ({p}); "
                                  f"choose another DST")


def _side_files(src_dir: str) -> list[str]:
    """The side files to copy, checked before anything is written: each must be a regular file of
    the checkpoint itself (a symlink to e.g. ~/.ssh/id_rsa must not be copied into an output that
    may be published)."""
    names = []
    for name in SIDE_FILES:
        p = os.path.join(src_dir, name)
        if not os.path.lexists(p):
            continue
        real = contained(src_dir, name, "side file")
        if not os.path.isfile(real):
            raise ConversionError(f"{p}: side file {name!r} is not a regular file")
        names.append(name)
    return names


def _copy_side_files(src_dir: str, out_dir: str, names: list[str], dtype: np.dtype | None,
                     labels: int | None = None) -> list[str]:
    """Copy the side files; config.json gets `dtype`, and the label count the classifier's rows gave
    (`labels`) where it names none (transformers v5 leaves two labels out; 4.x then assumed three)."""
    copied = []
    for name in names:
        p = os.path.join(src_dir, name)
        cfg = read_json_file(p, "config", ConversionError) if name == CONFIG_NAME else None
        unlabelled = cfg is not None and labels is not None and not {"id2label", "label2id", "num_labels"} & set(cfg)
        if cfg is not None and (dtype is not None or unlabelled):
            if dtype is not None:
                cfg["dtype"] = dtype.name
                if "torch_dtype" in cfg:
                    cfg["torch_dtype"] = dtype.name
            if unlabelled:
                cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
                cfg["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(json.dumps(cfg, indent=2) + "\n")
        else:
            shutil.copyfile(p, os.path.join(out_dir, name))
        copied.append(name)
    return copied


def convert_checkpoint(src, dst, *, to: str, format: str | None = None, head: str | None = None,
                       dtype=None, max_shard_size=None, overwrite: bool = False,
                       allow_unexpected: bool = False, allow_missing_head: bool = False,
                       config: str | None = None, quiet: bool = True, cache_dir: str | None = None,
                       revision: str | None = None) -> Summary:
    """Convert the checkpoint at `src` (directory, weights file or hub id) to `dst`, a new directory
    holding the weights in `format`, config/generation/tokenizer files and `conversion_summary.json`."""
    t0 = time.perf_counter()
    target = {"flax": "flax", "pytorch": "pt", "pt": "pt"}.get(to)
    if target is None:
        raise ConversionError(f"--to {to!r}: expected 'flax' or 'pytorch'")
    format = format or FORMATS[target][0]
    if format not in FORMATS[target]:
        raise ConversionError(f"--format {format!r} cannot hold a {to} checkpoint; expected one of {list(FORMATS[target])}")
    dtype = parse_dtype(dtype)
    src_path = resolve_source(os.fspath(src), cache_dir=cache_dir, revision=revision)
    src_dir = src_path if os.path.isdir(src_path) else os.path.dirname(os.path.abspath(src_path))
    source = open_source(src_path, prefer="pt" if target == "flax" else "flax")
    rows = classifier_rows(source.infos, source.framework)
    cfg = _config_for(src_path, config).with_labels_from_weights(rows, src_path)
    head = rules.check_head(head) if head else infer_head(source.infos, source.framework)
    cfg = with_layout_of(cfg, source.infos, source.framework, source.read, head, src_path)
    plan = make_plan(
        source.infos, source.framework, cfg, head, target,
        tied="drop" if format == "safetensors" else "all",
        allow_missing=rules.head_only_prefixes(cfg, head) if allow_missing_head else (),
        allow_unexpected=allow_unexpected, describe=f"checkpoint {src_path}",
        file_of=shard_file_of(source),
    )
    side_names = _side_files(src_dir)
    _check_not_overlapping(src_path, source.files + [os.path.join(src_dir, n) for n in side_names]
                           + ([os.fspath(config)] if isinstance(config, (str, os.PathLike)) else []), os.fspath(dst))
    specs = []
    for step in plan.steps:
        src_dtype = source.infos[step.source].dtype
        specs.append((step.target, step.shape, dtype if dtype is not None and is_float(src_dtype) else src_dtype))
    summary = engine.start_summary(plan, source)
    with StagedOutput(os.fspath(dst), overwrite=overwrite) as staged:
        writer = CheckpointWriter(staged.path, format, target, specs, max_shard_size)
        try:
            engine.run(plan, source, writer.order, writer.write, summary, dtype=dtype, quiet=quiet)
        except BaseException:
            writer.abort()
            raise
        files = writer.close()
        side = _copy_side_files(src_dir, staged.path, side_names, dtype,
                                labels=cfg.num_labels if rows is not None and head == "cls" else None)
        summary.target = {"framework": target, "format": format, "files": files, "side_files": side,
                          "tensors": len(specs), "bytes": writer.total_size,
                          "directory": os.path.abspath(os.fspath(dst))}
        summary.seconds = time.perf_counter() - t0
        with open(os.path.join(staged.path, SUMMARY_NAME), "w", encoding="utf-8") as f:
            f.write(summary.to_json())
        staged.commit()
    return summary
