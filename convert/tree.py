"""Pure, in-memory conversions between PyTorch state dicts and 4.x Flax parameter trees.

Inputs are never modified; outputs are new numpy arrays. Source checkpoints of another head are
adapted (base <-> head models through the `model.` prefix; a seq2seq checkpoint loaded as "causal"
keeps only its decoder).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from flax_bart.config import BartConfig

from convert import engine
from convert.dtypes import parse_dtype
from convert.errors import ConversionError
from convert.plan import make_plan
from convert.sources import MemorySource


def flatten(params: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    """A nested Flax tree (dict / FrozenDict) as {path tuple: leaf}."""
    out = {}
    for k, v in params.items():
        if not isinstance(k, str):
            raise ConversionError(f"Flax parameter key {k!r} under {'/'.join(prefix) or 'the root'} is not a string")
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def _flax_input(params: Mapping) -> dict:
    if not isinstance(params, Mapping):
        raise ConversionError(f"Flax params must be a (nested) dict, got {type(params).__name__}")
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = params["params"]  # accept {"params": tree} as produced by `module.init`
    if params and all(isinstance(k, tuple) for k in params):
        return dict(params)
    return flatten(params)


def convert_tree(tensors: Mapping, source_framework: str, config: BartConfig, head: str,
                 target_framework: str, *, dtype=None, tied: str = "all",
                 allow_missing: Iterable[str] = (), allow_unexpected: bool = False, borrow: bool = False,
                 describe: str | None = None):
    """(flat target dict, Summary) for an in-memory source of either framework. `borrow`: a tensor the
    conversion leaves as it is (no transpose, no cast) is the caller's own array in the result, not a
    copy; for callers that never write to either. `describe`: what errors call the source ("the
    checkpoint PATH" where the tensors were read from one; default "state dict" / "Flax params")."""
    source = MemorySource(tensors, source_framework, borrow=borrow)
    plan = make_plan(source.infos, source_framework, config, head, target_framework, tied=tied,
                     allow_missing=allow_missing, allow_unexpected=allow_unexpected,
                     describe=describe or ("state dict" if source_framework == "pt" else "Flax params"))
    summary = engine.start_summary(plan, source)
    out: dict = {}
    order = [s.target for s in plan.steps]
    engine.run(plan, source, order, out.__setitem__, summary, dtype=parse_dtype(dtype))
    summary.target = {"framework": target_framework, "format": "memory", "files": [],
                      "tensors": len(out), "bytes": sum(a.nbytes for a in out.values())}
    return out, summary


def pt_to_flax(state_dict: Mapping[str, Any], config: BartConfig, head: str = "lm", *, dtype=None,
               allow_missing: Iterable[str] = (), allow_unexpected: bool = False,
               return_summary: bool = False):
    """A PyTorch BART state dict (torch tensors or numpy arrays, any head) as the nested 4.x Flax
    params of `head`; with `return_summary=True`, `(params, Summary)`."""
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    flat, summary = convert_tree(state_dict, "pt", config, head, "flax", dtype=dtype,
                                 allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    params = unflatten(flat)
    return (params, summary) if return_summary else params


def flax_to_pt(params: Mapping, config: BartConfig, head: str = "lm", *, dtype=None,
               tied: str = "all", allow_missing: Iterable[str] = (), allow_unexpected: bool = False,
               return_summary: bool = False):
    """Nested (or flat, path-tuple keyed) Flax params of any head as the PyTorch state dict of
    `head` (numpy arrays, transformers key names). tied="all" includes every tied copy
    `model.state_dict()` has (so `load_state_dict(strict=True)` works); "drop" writes them as
    transformers v5 `save_pretrained` does."""
    flat, summary = convert_tree(_flax_input(params), "flax", config, head, "pt", dtype=dtype, tied=tied,
                                 allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    return (flat, summary) if return_summary else flat

