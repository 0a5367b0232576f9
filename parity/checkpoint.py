"""Open a checkpoint for the parity gate: config, PyTorch weights, Flax weights per head, hashes.

The PyTorch weights are the yardstick. The Flax weights come from a Flax checkpoint when there is one
(`--flax PATH`, or a Flax file next to the PyTorch weights: checked as they are, the gate for a
published conversion); otherwise they are converted on the fly, in memory, from the PyTorch weights.

A head the checkpoint was not saved with (e.g. "qa" from a BartForConditionalGeneration checkpoint)
takes the shared body from the checkpoint; head-only weights it lacks (`qa_outputs`, ...) are drawn
from the seed in PyTorch and converted, so both frameworks hold the same ones. Such heads are listed
in :attr:`Checkpoint.drawn` and in the report.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from convert import pt_to_flax, rules
from convert.api import load_flax_params
from convert.dtypes import count_nonfinite, is_float
from convert.errors import ConversionError
from convert.plan import classifier_rows, infer_head, with_layout_of
from convert.sources import open_source
from convert.tree import convert_tree, flatten, unflatten
from flax_bart.config import CONFIG_NAME, BartConfig, ConfigError
from parity.report import checkpoint_hash, config_hash

# Fields a separate Flax checkpoint's config must share with the PyTorch one: the architecture, and the
# special token ids (the gate runs both sides with the PyTorch config, so a Flax checkpoint whose config
# starts decoding from another token would pass here and generate otherwise where it is used).
_ARCH_FIELDS = ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
                "encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads",
                "activation_function", "scale_embedding", "tie_word_embeddings", "pad_token_id", "bos_token_id",
                "eos_token_id", "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id")


class ParityInputError(ValueError):
    """Input the parity gate cannot run on (exit code 2); the message says what and where."""


@dataclass
class Checkpoint:
    path: str
    directory: str
    config: BartConfig
    state_dict: dict[str, np.ndarray]
    source_head: str
    pt_files: list[str]
    flax_path: str | None
    flax_files: list[str]
    nonfinite: dict[str, dict[str, int]]
    drawn: dict[str, list[str]] = field(default_factory=dict)
    flax_nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    # parity.reference.random_head_weights: the random generator's state after the body's draws
    _after_body: dict = field(default_factory=dict, repr=False)
    _hash: Future | None = field(default=None, repr=False)   # checkpoint_hash, computing in a worker thread

    @property
    def flax_origin(self) -> str:
        return (f"Flax checkpoint {self.flax_path} (checked as it is)" if self.flax_path
                else f"converted on the fly from the PyTorch weights in {self.path}")

    def checkpoint_hash(self) -> str:
        if self._hash is not None:
            return self._hash.result()
        return checkpoint_hash(self.hashed_files())

    def hashed_files(self) -> list[str]:
        return _hashed_files(self.pt_files, self.flax_files)

    def config_hash(self) -> str:
        return config_hash(self.config.to_dict())

    def nan_messages(self) -> list[str]:
        """One line per weight tensor holding NaN (PyTorch and Flax weights)."""
        lines = [f"{k}: {v['nan']} NaN" for k, v in sorted(self.nonfinite.items()) if v["nan"]]
        lines += [f"{k} (Flax): {v['nan']} NaN" for k, v in sorted(self.flax_nonfinite.items()) if v["nan"]]
        return lines

    def reference_weights(self, head: str, seed: int) -> dict[str, np.ndarray]:
        """The PyTorch state dict of `head` (the checkpoint's own, or adapted with drawn head weights)."""
        if head == self.source_head:
            return self.state_dict
        missing_ok = rules.head_only_prefixes(self.config, head)
        try:
            # re-keyed, not copied: the checkpoint's arrays are read-only to the gate
            flat, summary = convert_tree(self.state_dict, "pt", self.config, head, "pt", tied="drop",
                                         allow_missing=missing_ok, borrow=True)
        except ConversionError as e:
            raise ParityInputError(f"the {self.source_head!r} checkpoint {self.path} cannot serve head {head!r}: {e}") \
                from None
        if summary.missing:
            from parity.reference import random_head_weights

            fresh = random_head_weights(self.config, head, seed, self._after_body)
            missing = [k for k in fresh if k not in flat]
            flat.update({k: fresh[k] for k in missing})
            self.drawn[head] = sorted(missing)
        return flat

    def flax_weights(self, head: str, reference_sd: Mapping[str, np.ndarray]) -> dict:
        """Flax params of `head`. From a Flax checkpoint: read from its files for each head, checked as
        they are; head-only params it lacks are converted from `reference_sd` (drawn there). Without
        one: `reference_sd` (the checkpoint's PyTorch weights as the reference holds them) converted in
        memory, so that each head costs one pass of transposes and no reading of files. (Reusing one head's
        converted body for the next saved that pass but kept its arrays alive, and the Flax runs then paid as
        much in fresh pages: no change in the demo gate's wall time, measured alternately on 2026-12-04.)"""
        if not self.flax_path:   # errors name the checkpoint, as a conversion of its files would
            flat, _ = convert_tree(reference_sd, "pt", self.config, head, "flax", describe=f"checkpoint {self.path}")
            return unflatten(flat)
        allow = rules.head_only_prefixes(self.config, head) if head in self.drawn else ()
        params, summary = load_flax_params(self.flax_path, self.config, head, allow_missing=allow)
        self.flax_nonfinite.update(summary.nonfinite)
        if summary.missing:
            flat = flatten(params)
            full = flatten(pt_to_flax(reference_sd, self.config, head))
            flat.update({k: v for k, v in full.items() if k not in flat})
            params = unflatten(flat)
        return params


def _config(directory: str) -> BartConfig:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(path):   # a FIFO or a folder there: read_json_file names it
        raise ParityInputError(f"no {CONFIG_NAME} in {directory}: the parity gate needs the checkpoint's config")
    try:
        return BartConfig.from_json_file(path)
    except ConfigError as e:
        raise ParityInputError(f"{path}: {e}") from None


def _check_same_architecture(config: BartConfig, flax_dir: str) -> None:
    path = os.path.join(flax_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        return
    other = _config(flax_dir)
    diff = [f"{f}: {getattr(config, f)!r} vs {getattr(other, f)!r}" for f in _ARCH_FIELDS
            if getattr(config, f) != getattr(other, f)]
    if diff:
        raise ParityInputError(f"the Flax checkpoint's {path} describes another model than the PyTorch "
                               f"checkpoint's config: {'; '.join(diff)}")


def _flax_source(path: str) -> list[str] | None:
    """The weight files if `path` holds Flax weights (preferred over PyTorch ones), else None. A Flax
    file that cannot be read is bad input (ConversionError), never taken for "no Flax weights": the
    gate would otherwise check weights converted on the fly and pass over a broken file."""
    source = open_source(path, prefer="flax")
    return list(source.files) if source.framework == "flax" else None


def open_checkpoint(path: str | os.PathLike, flax: str | os.PathLike | None = None) -> Checkpoint:
    """Read the config and the PyTorch weights at `path`; locate the Flax weights (see module doc)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ParityInputError(f"checkpoint {path!r}: no such file or directory")
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = _config(directory)
    source = open_source(path, prefer="pt")
    config = config.with_labels_from_weights(classifier_rows(source.infos, source.framework), path)
    config = with_layout_of(config, source.infos, source.framework, source.read, None, path)
    if source.framework != "pt":
        raise ParityInputError(
            f"{path} holds Flax weights only ({', '.join(os.path.basename(f) for f in source.files)}); the parity "
            "gate checks Flax weights against PyTorch weights: pass the PyTorch checkpoint as CHECKPOINT and the "
            "Flax one with --flax")
    flax_path, flax_files = _flax_files(path, flax, config)
    hashing = _hash_in_background(_hashed_files(source.files, flax_files))
    state_dict, nonfinite = {}, {}
    for key in source.infos:
        arr = source.read(key)
        name = source.name(key)
        if is_float(arr.dtype):
            nan, inf = count_nonfinite(arr)
            if nan or inf:
                nonfinite[name] = {"nan": nan, "inf": inf}
        state_dict[name] = arr
    return Checkpoint(path=path, directory=directory, config=config, state_dict=state_dict,
                      source_head=infer_head(list(state_dict), "pt"), pt_files=list(source.files),
                      flax_path=flax_path, flax_files=flax_files, nonfinite=nonfinite, _hash=hashing)


def _hashed_files(pt_files, flax_files) -> list[str]:
    """The files `checkpoint_hash` covers: both frameworks' weight files, each once, sorted."""
    return sorted(set(pt_files) | set(flax_files))


def _hash_in_background(files: list[str]) -> Future:
    """checkpoint_hash(files) in a worker thread: file reads and hashlib release the GIL, so hashing a
    BART-base checkpoint (560 MB, ~0.4 s) overlaps reading its tensors."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash")
    try:
        return pool.submit(checkpoint_hash, files)
    finally:
        pool.shutdown(wait=False)


def _flax_files(path: str, flax, config: BartConfig) -> tuple[str | None, list[str]]:
    """(Flax path, its weight files) for `--flax` or a Flax file beside the PyTorch weights; (None, [])."""
    flax_path, flax_files = None, []
    if flax is not None:
        flax_path = os.fspath(flax)
        if not os.path.exists(flax_path):
            raise ParityInputError(f"--flax {flax_path!r}: no such file or directory")
        files = _flax_source(flax_path)
        if files is None:
            raise ParityInputError(f"--flax {flax_path}: no Flax weights there (flax_model.msgpack or Flax-format "
                                   "safetensors)")
        _check_same_architecture(config, flax_path if os.path.isdir(flax_path) else os.path.dirname(flax_path))
        flax_files = files
    elif os.path.isdir(path):
        files = _flax_source(path)
        if files is not None:
            flax_path, flax_files = path, files
    return flax_path, flax_files
