"""Planning a conversion from names and shapes only: which source tensor becomes which target
tensor by which rule, the tied copies to verify, and every missing / unused / unexpected key.
All problems are collected and raised together before any tensor data is read."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from flax_bart.config import BartConfig

from convert import rules
from convert.dtypes import is_float
from convert.errors import ConversionError
from convert.sources import TensorInfo

logger = logging.getLogger("flax_bart")
_LAYER = re.compile(r"^(encoder|decoder)[./]layers[./](\d+)[./]")


@dataclasses.dataclass(frozen=True)
class Step:
    target: Any              # full target key: str (PyTorch) or path tuple (Flax)
    source: Any              # full source key
    rule: str
    transpose: bool
    shape: tuple[int, ...]   # target shape
    tied: tuple = ()         # more source keys that must hold the same bits as `source`


@dataclasses.dataclass
class Plan:
    source_framework: str
    target_framework: str
    head: str
    source_head: str
    steps: list[Step]
    missing: list[str]
    unused: list[str]
    unexpected: list[str]


def display_name(key) -> str:
    return "/".join(key) if isinstance(key, tuple) else key


def canonical(key, framework: str):
    """`key` without the head models' `model.` / `model/` prefix."""
    if framework == "pt":
        return key[len(rules.PT_PREFIX):] if key.startswith(rules.PT_PREFIX) else key
    return key[1:] if key[:1] == (rules.FLAX_PREFIX,) else key


def classifier_rows(infos, framework: str) -> int | None:
    """Rows of the classification head's `out_proj` (its label count) in a checkpoint's tensor infos,
    or None when it has no classification head."""
    for key, info in infos.items():
        c = canonical(key, framework)
        if framework == "pt" and c == "classification_head.out_proj.weight" and len(info.shape) == 2:
            return int(info.shape[0])
        if framework == "flax" and tuple(c) == ("classification_head", "out_proj", "kernel") and len(info.shape) == 2:
            return int(info.shape[1])
    return None


def has_separate_embeddings(keys: Iterable, framework: str, read, config: BartConfig, head: str | None = None) -> bool:
    """Whether a checkpoint holds transformers v5's untied seq2seq layout with input embeddings that
    differ from `shared` (`read(key)` gives a tensor): Flax trees by their `encoder/embed_tokens`,
    PyTorch state dicts by comparing the copies bit for bit. Always False for a tied config (copies
    that differ there stay refused). A causal LM reads the decoder's copy of such a checkpoint."""
    if config.tie_word_embeddings:
        return False
    names = {canonical(k, framework): k for k in keys}
    if framework == "flax":
        return ("encoder", "embed_tokens", "embedding") in {tuple(c) for c in names}
    home = names.get("shared.weight")
    copies = [names[c] for c in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if c in names]
    if home is None or not copies:
        return False
    ref = np.ascontiguousarray(read(home))
    return any(not _same_bits(np.ascontiguousarray(read(k)), ref) for k in copies)


def _same_bits(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def with_layout_of(config: BartConfig, keys: Iterable, framework: str, read, head: str | None = None,
                   where: str = "the checkpoint") -> BartConfig:
    """`config` with `separate_input_embeddings` set when the checkpoint holds that layout (logged)."""
    if config.separate_input_embeddings or not has_separate_embeddings(list(keys), framework, read, config, head):
        return config
    if head == "causal":
        logger.warning("%s holds separate encoder/decoder input embeddings (transformers v5, untied): the causal "
                       "LM reads the decoder's embed_tokens, as PyTorch's BartForCausalLM does", where)
    else:
        logger.warning("%s holds separate encoder/decoder input embeddings (transformers v5, untied): loading them "
                       "as three parameters", where)
    return config.replace(separate_input_embeddings=True)


def infer_head(keys: Iterable, framework: str) -> str:
    """The head a checkpoint was saved from, judged by its key names."""
    keys = list(keys)
    canon = [display_name(canonical(k, framework)).replace("/", ".") for k in keys]
    prefixed = any(canonical(k, framework) != k for k in keys)
    if any(c.startswith("qa_outputs.") for c in canon):
        return "qa"
    if any(c.startswith("classification_head.") for c in canon):
        return "cls"
    lm_only = any(c == "final_logits_bias" or c.startswith("lm_head.") for c in canon)
    if not prefixed and not lm_only:   # an LM head's state dict saved without the `model.` prefix is still an LM
        return "base"
    if not any(c.startswith("encoder.") for c in canon) and any(c.startswith("decoder.") for c in canon):
        return "causal"
    return "lm"


def _lookup(config: BartConfig, framework: str, head: str | None = None) -> dict:
    """canonical source key -> (Param, preference rank) over every head's tensors."""
    table = {}
    params = rules.all_params(config, head)
    for p in params:
        table[p.pt if framework == "pt" else p.flax] = (p, 0)
    embed = next(p for p in params if p.part == "embed")
    aliases = (rules.embedding_pt_aliases(config, head) if framework == "pt"
               else rules.embedding_flax_aliases(config, head))
    for rank, alias in enumerate(aliases):
        table[alias] = (embed, rank)
    if rules.causal_from_separate(config, head):   # known tensors the causal LM does not read
        for p in rules.seq2seq_only_embeddings(config, framework):
            table[p.pt if framework == "pt" else p.flax] = (p, 0)
    return table


def _allowed(name_pt: str, name_flax: str, allow_missing: Iterable[str]) -> bool:
    for prefix in allow_missing:
        for name, sep in ((name_flax, "/"), (name_pt, ".")):
            if name == prefix or name.startswith(prefix.rstrip(sep) + sep):
                return True
    return False


def make_plan(
    infos: Mapping[Any, TensorInfo],
    source_framework: str,
    config: BartConfig,
    head: str,
    target_framework: str,
    *,
    tied: str = "all",
    allow_missing: Iterable[str] = (),
    allow_unexpected: bool = False,
    describe: str = "checkpoint",
    file_of: Callable[[Any], str] | None = None,
) -> Plan:
    """`file_of`: a key's file, named in the messages about that key (a sharded checkpoint's shard)."""
    rules.check_head(head)
    allow_missing = [allow_missing] if isinstance(allow_missing, str) else list(allow_missing)
    _check_layer_counts(infos, source_framework, config, head, describe)
    table = _lookup(config, source_framework, head)
    found: dict[rules.Param, list[tuple[int, Any]]] = {}
    unexpected, problems = [], []
    for key in infos:
        hit = table.get(canonical(key, source_framework))
        if hit is None:
            unexpected.append(display_name(key) + _layer_hint(canonical(key, source_framework), config))
            continue
        found.setdefault(hit[0], []).append((hit[1], key))

    wanted = rules.head_params(config, head)
    steps, missing = [], []
    for p in wanted:
        targets = _target_keys(p, config, head, target_framework, tied)
        present = sorted(found.get(p, []), key=lambda rk: (rk[0], display_name(rk[1])))
        if not present:
            pt_name = rules.full_pt_key(rules.embedding_home(head, "pt") if p.part == "embed" else p.pt, p.part, head)
            flax_name = display_name(rules.full_flax_path(rules.embedding_home(head, "flax") if p.part == "embed" else p.flax, p.part, head))
            missing.append((display_name(targets[0]), pt_name, flax_name))
            continue
        src = present[0][1]
        expect = p.shape_in(source_framework)
        for _, key in present:
            info = infos[key]
            name = display_name(key) + (f" (in {os.path.basename(file_of(key))})" if file_of is not None else "")
            if info.shape != expect:
                problems.append(
                    f"{name}: shape {list(info.shape)}, but config.json implies {list(expect)} ({_dims_hint(p, config)})"
                )
            if not is_float(info.dtype):
                problems.append(f"{name}: dtype {info.dtype.name}; BART parameters are floating point")
            if key != src and info.dtype != infos[src].dtype:
                problems.append(f"{name}: tied copy of {display_name(src)} has dtype {info.dtype.name}, not {infos[src].dtype.name}")
        dups = tuple(k for _, k in present[1:])
        transpose = p.transposed and source_framework != target_framework
        for i, target in enumerate(targets):
            steps.append(Step(target, src, p.rule, transpose, p.shape_in(target_framework), dups if i == 0 else ()))

    wanted_set = set(wanted)
    unused = sorted(display_name(k) for p, keys in found.items() if p not in wanted_set for _, k in keys)
    # named as the source would hold them (a PyTorch checkpoint lacks "model.x.bias", not "model/x/bias")
    bad_missing = [m[1] if source_framework == "pt" else m[2] for m in missing if not _allowed(m[1], m[2], allow_missing)]
    if bad_missing:
        problems.append(
            f"missing from the {describe} (needed by head {head!r}): {bad_missing}"
            + ("" if allow_missing else "; a head being newly initialised can be allowed with allow_missing")
        )
    if unexpected and not allow_unexpected:
        problems.append(f"unexpected keys, not part of a BART checkpoint for this config: {sorted(unexpected)}")
    if problems:
        raise ConversionError.collect(problems, f"cannot convert the {describe} to head {head!r}")
    return Plan(source_framework, target_framework, head, infer_head(infos, source_framework),
                steps, [m[0] for m in missing], unused, sorted(unexpected))


def _check_layer_counts(infos, framework: str, config: BartConfig, head: str, describe: str) -> None:
    """Refuse, naming the field, a config with more layers than the checkpoint holds, before the plan
    lists every layer the config implies (BartConfig caps the count; this names the culprit)."""
    seen = {"encoder": -1, "decoder": -1}
    for key in infos:
        m = _LAYER.match(display_name(canonical(key, framework)))
        if m:
            seen[m.group(1)] = max(seen[m.group(1)], int(m.group(2)))
    sides = ("decoder",) if head == "causal" else ("encoder", "decoder")
    problems = []
    for side in sides:
        n = getattr(config, f"{side}_layers")
        held = seen[side] + 1
        if n > held > 0:  # (a checkpoint without that side is reported below as missing it)
            problems.append(f"config.json has {side}_layers={n}, but the {describe} holds {side} weights for "
                            f"layers 0..{held - 1} ({held} layer{'s' if held != 1 else ''})")
    if problems:
        raise ConversionError.collect(problems, f"cannot convert the {describe} to head {head!r}: config.json "
                                      f"and the weights disagree")


def _target_keys(p: rules.Param, config: BartConfig, head: str, framework: str, tied: str) -> list:
    if p.part != "embed":
        if framework == "pt":
            return [rules.full_pt_key(p.pt, p.part, head)]
        return [rules.full_flax_path(p.flax, p.part, head)]
    if framework == "flax":
        return [rules.full_flax_path(rules.embedding_home(head, "flax"), p.part, head)]
    keys = (rules.embedding_home(head, "pt"),) + rules.embedding_pt_copies(config, head, tied)
    return [rules.full_pt_key(k, "lm" if k == "lm_head.weight" else "embed", head) for k in keys]


def _layer_hint(canon, config: BartConfig) -> str:
    m = _LAYER.match(display_name(canon))
    if m:
        side, i = m.group(1), int(m.group(2))
        n = getattr(config, f"{side}_layers")
        if i >= n:
            return f" (config.json has {side}_layers={n})"
    return ""


def _dims_hint(p: rules.Param, config: BartConfig) -> str:
    c = config
    fields = {
        "embed": f"vocab_size={c.vocab_size}, d_model={c.d_model}",
        "cls": f"d_model={c.d_model}, num_labels={c.num_labels}",
        "lm": f"vocab_size={c.vocab_size}, d_model={c.d_model}",
        "qa": f"d_model={c.d_model}, 2 outputs",
    }.get(p.part)
    if fields:
        return fields
    if "embed_positions" in p.pt:
        return f"max_position_embeddings+2={c.max_position_embeddings + 2}, d_model={c.d_model}"
    if ".fc" in p.pt:
        side = p.part
        return f"d_model={c.d_model}, {side}_ffn_dim={getattr(c, side + '_ffn_dim')}"
    return f"d_model={c.d_model}"
