"""Partition rules as data, and the shardings of params, batches and decoding caches on a mesh.

A rule set is an ordered sequence of `(regex, layout)`; the first regex that `re.search`es the
"/"-joined parameter path (`model/encoder/layers/0/self_attn/q_proj/kernel`) decides the layout:

- a `PartitionSpec`: used as is (an error if a mesh axis does not divide its dimension);
- a tuple of `PartitionSpec`s: the first that divides the shape (an error if none does), e.g. the
  vocabulary of bart-base (50265) cannot be split in two, so the embedding falls back to `d_model`;
- `ShardLargest(axis)`: the largest dimension the axis divides (replicated if none does).

Mesh axes a rule names but the mesh lacks, or has with size 1, shard nothing, so one rule set
serves every mesh. The default rules understand `dp` (batch only), `fsdp` (params and batch) and
`tp` (attention heads, FFN columns/rows, vocabulary).

Model code runs in JAX's automatic sharding mode (`AxisType.Auto`, GSPMD propagation): a mesh from
`jax.make_mesh` (explicit axes by default in this JAX) is converted by `auto_mesh`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence, Union

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("dp", "fsdp")  # mesh axes the batch dimension is split over, in this order
HEADS_AXIS = "tp"            # mesh axis attention heads (and the cache's heads dimension) are split over


class ShardingError(ValueError):
    """A rule set, mesh and shapes that do not fit together; the message names what and where."""


@dataclasses.dataclass(frozen=True)
class ShardLargest:
    """Layout: split the largest dimension that `axis` divides over `axis`; replicate if none."""

    axis: str


Layout = Union[P, Sequence[P], ShardLargest]
Rules = Sequence[tuple[str, Layout]]

DATA_PARALLEL_RULES: Rules = ((r".*", P()),)

FSDP_RULES: Rules = ((r".*", ShardLargest("fsdp")),)

# Kernels are (in, out): q/k/v, fc1 and the classification dense layer are split by columns
# (column-parallel), out_proj and fc2 by rows (row-parallel), so each pair needs one all-reduce.
DEFAULT_RULES: Rules = (
    (r"(q_proj|k_proj|v_proj)/kernel$", P("fsdp", "tp")),
    (r"(q_proj|k_proj|v_proj)/bias$", P("tp")),
    (r"classification_head/dense/kernel$", P("fsdp", "tp")),
    (r"classification_head/dense/bias$", P("tp")),
    (r"classification_head/out_proj/kernel$", P("fsdp", None)),
    (r"attn/out_proj/kernel$", P("tp", "fsdp")),
    (r"fc1/kernel$", P("fsdp", "tp")),
    (r"fc1/bias$", P("tp")),
    (r"fc2/kernel$", P("tp", "fsdp")),
    (r"(shared|embed_tokens)/embedding$", (P("tp", "fsdp"), P(None, ("tp", "fsdp")), P(None, "tp"), P())),
    (r"lm_head/kernel$", (P("fsdp", "tp"), P(("fsdp", "tp"), None), P("tp", None), P())),
    (r"final_logits_bias$", (P(None, "tp"), P())),
    (r"embed_positions/embedding$", (P(None, "fsdp"), P())),
    (r"qa_outputs/kernel$", P("fsdp", None)),
    (r"(out_proj|fc2|qa_outputs)/bias$", P()),
    (r"(layer_norm|layernorm_embedding)/(scale|bias)$", P()),
)


def _without_axis(spec: P, axis: str) -> P:
    def drop(entry):
        if isinstance(entry, tuple):
            kept = tuple(a for a in entry if a != axis)
            return kept if len(kept) > 1 else (kept[0] if kept else None)
        return None if entry == axis else entry
    return P(*(drop(e) for e in spec))


# Tensor parallel only: the default rules with the fsdp splits removed.
TENSOR_PARALLEL_RULES: Rules = tuple(
    (pattern, _without_axis(layout, "fsdp") if isinstance(layout, P)
     else tuple(dict.fromkeys(_without_axis(s, "fsdp") for s in layout)))
    for pattern, layout in DEFAULT_RULES
)

PRESETS: dict[str, Rules] = {
    "default": DEFAULT_RULES, "dp": DATA_PARALLEL_RULES, "fsdp": FSDP_RULES, "tp": TENSOR_PARALLEL_RULES,
}


# ---- meshes ------------------------------------------------------------------------------------
def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with every axis in `AxisType.Auto` (sharding propagation; the model code has no
    explicit `out_sharding` annotations, which explicit axes would demand)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(mesh.shape) if not isinstance(mesh, Mapping) else dict(mesh)


def get_rules(rules) -> Rules:
    """A rule set from None (the default rules), a preset name, or a sequence of (regex, layout)."""
    if rules is None:
        return DEFAULT_RULES
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ShardingError(f"partition_rules={rules!r}: not a preset; expected one of {sorted(PRESETS)}")
        return PRESETS[rules]
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ShardingError(f"partition_rules[{i}] = {rule!r}: expected a (regex, PartitionSpec) pair")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ShardingError(f"partition_rules[{i}]: regex {rule[0]!r} does not compile ({e})") from None
        layout = rule[1]
        if not isinstance(layout, (P, ShardLargest)) and not (
                isinstance(layout, (tuple, list)) and layout and all(isinstance(s, P) for s in layout)):
            raise ShardingError(
                f"partition_rules[{i}] for {rule[0]!r}: layout {layout!r} is not a PartitionSpec, "
                f"a tuple of PartitionSpecs or ShardLargest"
            )
        out.append((rule[0], layout))
    return tuple(out)


def effective_spec(spec: P, sizes: Mapping[str, int]) -> P:
    """`spec` without the axes `sizes` (the mesh) lacks or has with size 1; trailing Nones dropped."""
    def keep(entry):
        names = entry if isinstance(entry, tuple) else (entry,)
        kept = tuple(a for a in names if a is not None and sizes.get(a, 1) > 1)
        return kept if len(kept) > 1 else (kept[0] if kept else None)
    entries = [keep(e) for e in spec]
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def _axes_of(entry) -> tuple[str, ...]:
    return () if entry is None else (entry if isinstance(entry, tuple) else (entry,))


# ---- attention heads: a dimension made of whole heads must split into whole heads -------------
_ATTN = re.compile(
    r"(?:^|/)(encoder|decoder)/layers/\d+/(self_attn|encoder_attn)/(q_proj|k_proj|v_proj|out_proj)/(kernel|bias)$"
)


def heads_dims(path: str, shape: tuple[int, ...], config) -> dict[int, int]:
    """{dimension: number of heads in it} for attention projections (empty for other params). A
    split of such a dimension over the `tp` axis must keep whole heads on each device."""
    m = _ATTN.search(path)
    if config is None or m is None:
        return {}
    side, _, proj, leaf = m.groups()
    heads = config.encoder_attention_heads if side == "encoder" else config.decoder_attention_heads
    if proj == "out_proj":
        return {0: heads} if leaf == "kernel" else {}
    return {len(shape) - 1: heads}


def _fit(path: str, shape, spec: P, sizes: Mapping[str, int], heads: Mapping[int, int]) -> str | None:
    """None if `spec` fits `shape` on the mesh, else why not (naming param, dimension, axes, sizes)."""
    if len(spec) > len(shape):
        return (f"{path}: spec {spec} has {len(spec)} entries but the parameter has {len(shape)} "
                f"dimensions {tuple(shape)}")
    for dim, entry in enumerate(spec):
        axes = _axes_of(entry)
        n = math.prod(sizes[a] for a in axes)
        if n <= 1:
            continue
        where = f"mesh axis {axes[0]!r} (size {n})" if len(axes) == 1 else \
            f"mesh axes {axes} (sizes {tuple(sizes[a] for a in axes)}, {n} shards)"
        if dim in heads and HEADS_AXIS in axes:  # tensor parallelism keeps each head on one device
            h = heads[dim]
            if h % n:
                return (f"{path}: dimension {dim} (size {shape[dim]} = {h} heads x {shape[dim] // h}) is split "
                        f"over {where}, but {h} heads are not divisible by {n}")
        elif shape[dim] % n:
            return (f"{path}: dimension {dim} (size {shape[dim]}) is split over {where}, but {shape[dim]} "
                    f"is not divisible by {n}")
    return None


def _choose(path: str, shape, layout: Layout, sizes, heads) -> tuple[P | None, list[str]]:
    if isinstance(layout, ShardLargest):
        n = sizes.get(layout.axis, 1)
        if n <= 1:
            return P(), []
        for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
            spec = P(*([None] * dim + [layout.axis]))
            if shape[dim] % n == 0 and _fit(path, shape, spec, sizes, heads) is None:
                return spec, []
        return P(), []
    candidates = [layout] if isinstance(layout, P) else list(layout)
    reasons = []
    for spec in candidates:
        spec = effective_spec(spec, sizes)
        why = _fit(path, shape, spec, sizes, heads)
        if why is None:
            return spec, []
        reasons.append(why)
    return None, reasons


_MISFITS_SHOWN = 6  # misfits named in the error (their count is always given)


def partition_specs(shape_tree, mesh, rules=None, *, config=None) -> dict[tuple[str, ...], P]:
    """{path tuple: PartitionSpec} for every leaf of `shape_tree` (nested dict or {path tuple: leaf}
    of arrays / ShapeDtypeStructs). `mesh` is a Mesh, AbstractMesh or {axis: size}. With `config`
    (a BartConfig), attention projections must split into whole heads. Every unmatched parameter
    and every misfit is collected and raised together."""
    rules = get_rules(rules)
    sizes = _axis_sizes(mesh)
    compiled = [(re.compile(pattern), layout) for pattern, layout in rules]
    out, unmatched, misfits = {}, [], []
    for key, leaf in _flat(shape_tree).items():
        path = "/".join(key)
        shape = tuple(np.shape(leaf))
        layout = next((lay for rx, lay in compiled if rx.search(path)), None)
        if layout is None:
            unmatched.append(path)
            continue
        spec, reasons = _choose(path, shape, layout, sizes, heads_dims(path, shape, config))
        if spec is None:
            misfits.append(reasons[0] if len(reasons) == 1 else f"{path}: no layout fits: " + "; ".join(reasons))
        else:
            out[key] = spec
    problems = []
    if unmatched:
        problems.append(f"no partition rule matches {len(unmatched)} parameter(s): {unmatched}")
    if misfits:
        shown = misfits[:_MISFITS_SHOWN]
        more = f" | and {len(misfits) - len(shown)} more" if len(misfits) > len(shown) else ""
        problems.append(f"mesh {sizes} does not divide {len(misfits)} parameter(s): " + " | ".join(shown) + more)
    if problems:
        raise ShardingError("; ".join(problems))
    return out


def _flat(tree) -> dict:
    if isinstance(tree, Mapping) and tree and all(isinstance(k, tuple) for k in tree):
        return dict(tree)
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _like(tree, flat: dict):
    """`flat` in the form of `tree`: flat if `tree` was flat, nested otherwise."""
    if isinstance(tree, Mapping) and tree and all(isinstance(k, tuple) for k in tree):
        return flat
    return traverse_util.unflatten_dict(flat)


def tree_shardings(shape_tree, mesh: Mesh, rules=None, *, config=None):
    """The `NamedSharding` of every parameter, in the form of `shape_tree` (nested or flat), on
    `auto_mesh(mesh)`."""
    mesh = auto_mesh(mesh) if isinstance(mesh, Mesh) else mesh
    specs = partition_specs(shape_tree, mesh, rules, config=config)
    return _like(shape_tree, {k: NamedSharding(mesh, s) for k, s in specs.items()})


def place(x, sharding):
    """`x` (numpy or jax) as a `jax.Array` with `sharding`. On several processes every process
    passes the same global value and keeps only the shards of its own devices."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_params(params, mesh: Mesh, rules=None, *, config=None):
    """`params` (nested or flat, numpy or jax) placed on `mesh` by the rules (a new tree, same form)."""
    mesh = auto_mesh(mesh)
    shardings = _flat(tree_shardings(params, mesh, rules, config=config))
    return _like(params, {k: place(v, shardings[k]) for k, v in _flat(params).items()})


def shard_model(model, mesh: Mesh, partition_rules=None, params=None):
    """Run `model` on `mesh`: shard `params` (default: `model.params` when the model holds them) and
    shard every batch it is called with. Returns the sharded params."""
    mesh = auto_mesh(mesh)
    if params is None and not getattr(model, "_is_initialized", False):
        raise ShardingError("shard_model: the model holds no params (_do_init=False); pass params=")
    held = params is None
    params = shard_params(model.params if held else params, mesh, partition_rules, config=model.config)
    model.mesh = mesh
    if held:
        model.params = params
    return params


# ---- batches and caches ------------------------------------------------------------------------
def batch_axes(mesh) -> tuple[str, ...]:
    sizes = _axis_sizes(mesh)
    return tuple(a for a in BATCH_AXES if sizes.get(a, 1) > 1)


def batch_spec(mesh, ndim: int) -> P:
    """Dimension 0 split over the batch axes of `mesh`, the rest replicated."""
    axes = batch_axes(mesh)
    if ndim == 0 or not axes:
        return P()
    return P(axes if len(axes) > 1 else axes[0])


def _check_batch(name: str, shape, mesh) -> None:
    axes = batch_axes(mesh)
    n = math.prod(_axis_sizes(mesh)[a] for a in axes)
    if shape and n > 1 and shape[0] % n:
        raise ShardingError(
            f"{name}: batch dimension 0 (size {shape[0]}) is split over mesh axes {axes} ({n} shards), "
            f"but {shape[0]} is not divisible by {n}; use a batch size that is a multiple of {n}"
        )


def batch_sharding(mesh: Mesh, shape, name: str = "input") -> NamedSharding:
    """Dimension 0 of an input of `shape` over the batch axes (an error naming `name` if they do not divide it)."""
    mesh = auto_mesh(mesh)
    _check_batch(name, tuple(shape), mesh)
    return NamedSharding(mesh, batch_spec(mesh, len(shape)))


def shard_batch(arrays: Mapping[str, Any], mesh: Mesh) -> dict:
    """Each array of `arrays` (None left as is) with its batch dimension split over the mesh.

    On several processes each process passes the same global array and keeps only its shards."""
    out = {}
    for name, x in arrays.items():
        if x is None or isinstance(x, jax.core.Tracer):
            out[name] = x
            continue
        out[name] = place(x, batch_sharding(mesh, np.shape(x), name))
    return out


def cache_specs(cache_tree, mesh) -> dict[tuple[str, ...], P]:
    """{path: spec} for a cache from `init_cache`: K/V (batch, length, heads, head_dim) split like
    the batch and the attention heads (so they stay where the q/k/v columns are); indices replicated."""
    sizes = _axis_sizes(mesh)
    tp = sizes.get(HEADS_AXIS, 1)
    out, problems = {}, []
    for key, leaf in _flat(cache_tree).items():
        shape = tuple(np.shape(leaf))
        if key[-1] in ("cached_key", "cached_value") and len(shape) == 4:
            path = "/".join(key)
            try:
                _check_batch(path, shape, mesh)
            except ShardingError as e:
                problems.append(str(e))
            if tp > 1 and shape[2] % tp:
                problems.append(f"{path}: dimension 2 ({shape[2]} heads) is split over mesh axis "
                                f"{HEADS_AXIS!r} (size {tp}), but {shape[2]} is not divisible by {tp}")
            b = batch_spec(mesh, 1)
            out[key] = effective_spec(P(b[0] if len(b) else None, None, HEADS_AXIS, None), sizes)
        else:
            out[key] = P()
    if problems:
        raise ShardingError("the decoding cache does not fit the mesh: " + " | ".join(problems))
    return out


def cache_shardings(cache_tree, mesh: Mesh):
    """`NamedSharding`s of a cache tree (same form as `cache_tree`)."""
    mesh = auto_mesh(mesh)
    return _like(cache_tree, {k: NamedSharding(mesh, s) for k, s in cache_specs(cache_tree, mesh).items()})
