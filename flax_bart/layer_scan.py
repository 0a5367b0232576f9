"""Run a stack of identical BART layers as one `jax.lax.scan` instead of one copy per layer.

XLA compiles an unrolled stack layer by layer: on a CPU each layer adds a few hundred milliseconds
of compilation (BART-base's 6+6 layers: about 6 s for one forward program), while a scan compiles
one layer body whatever the depth. The parameter tree does not change: the layers' parameters stay
under `layers/0`, `layers/1`, ... (the 4.x layout); where the scan stacks them, it does so inside the
traced function.

Stacking the weights inside the program copies every layer weight on every call, and XLA:CPU's
concatenation and the per-step slice run far below memory speed (at `FAST_COMPILE` most of all: a
BART-base QA forward on 6 x 32 tokens ran 0.58 s scanned against 0.24 s unrolled). So on a CPU a pass
that nobody differentiates does not stack: the scanned body picks its layer's weights with a
`lax.switch` on the step (XLA copies the one layer's weights, no stack is built), and runs at the
unrolled speed (0.28 s there). A gradient goes through the stacked scan (`_picked_or_stacked`): the
switch's gradient would add a zero for every other layer's weights at every step. Train mode (dropout
keys) and other backends (an XLA:GPU conditional waits for its branch index on the host) stack.
The models unroll by default (`scan_layers=False`, as 4.x); the scan is for programs compiled once and
run a few times, such as the parity gate's (`python -m parity`, which turns it on, "all", unless
`--no-scan-layers`).

`scan_layers=True` scans the encoder and the decoder in a full (teacher-forced or training) pass.
`scan_layers="all"` scans a cached decoding step too: each layer's cache (the 4.x layout, one per layer)
goes in with its weights and comes out updated, to be written back under the layer's name (leaves the
layer left alone, the cross-attention K/V, are not carried out). On a CPU the step picks that layer's
weights and cache with the switch, a copy that a step of a few tokens pays in full: BART-base fp32, 2
rows, 23 ms a step unrolled against 39 ms scanned; greedy generation with 4 x 128 source tokens gives
17-25% fewer tokens/s (`python -m benchmarks.scan_bench --generate`). It buys a step program of one
layer body (BART-base float16: first step 2.8 s → 1.1 s, `FAST_COMPILE` float32 0.88 → 0.59 s).
Creating a cache keeps the unrolled layers. Both paths apply the same layer module to the same
inputs; `tests/flax_bart/test_layer_scan.py` checks they agree.
Dropout and LayerDrop draw one key per layer from the module's `dropout` stream.
"""

from __future__ import annotations

import flax.linen as nn
from flax import traverse_util
from flax.core import unfreeze
import jax
import jax.numpy as jnp
import numpy as np


def check_scan_layers(value):
    """A `scan_layers` setting: False or True (bools and 0/1 alike), or "all"; else a ValueError naming it."""
    if isinstance(value, str) and value == "all":
        return value
    if isinstance(value, (bool, int, np.bool_, np.integer)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"scan_layers={value!r}: expected False (unrolled), True (every stack without a "
                     f"decoding cache) or 'all' (decoding steps too)")


def _stack_applied(collection: nn.Module, n_layers: int) -> bool:
    """What both kinds of scan need: more than one layer, applied (not initialised), and neither
    `intermediates` nor `params` mutable (those see each layer's own modules, which only the unrolled
    stack has)."""
    return n_layers >= 2 and not collection.is_initializing() and not any(
        collection.is_mutable_collection(c) for c in ("intermediates", "params"))


def can_scan(collection: nn.Module, n_layers: int, cached: bool) -> bool:
    """True when `collection` may scan its layers: scanning not switched off (`scan_layers=False`),
    no cache involved (nor a mutable "cache" collection: `mutable=True`), and `_stack_applied`
    (`capture_intermediates` unrolls)."""
    if not getattr(collection, "scan_layers", True) or cached or collection.is_mutable_collection("cache"):
        return False
    return _stack_applied(collection, n_layers)


def can_scan_cached(collection: nn.Module, n_layers: int) -> bool:
    """True when a decoding step (a cache exists and is not being created) may scan its layers:
    `scan_layers="all"`, the "cache" collection mutable, `_stack_applied`, and every layer's cache of
    one structure, shapes and dtypes (the scan reads each layer's cache and writes it back)."""
    if getattr(collection, "scan_layers", False) != "all" or not collection.is_mutable_collection("cache"):
        return False
    if not _stack_applied(collection, n_layers):
        return False
    caches = [collection.variables.get("cache", {}).get(str(i)) for i in range(n_layers)]
    if any(c is None for c in caches):
        return False
    kinds = [jax.tree_util.tree_map(lambda a: (a.shape, jnp.dtype(a.dtype)), c) for c in caches]
    return all(k == kinds[0] for k in kinds[1:])


def layer_params(collection: nn.Module, n_layers: int) -> tuple:
    """The parameter trees of layers "0" ... "n-1" of `collection` (a KeyError naming the missing ones)."""
    params = collection.variables["params"]
    missing = [str(i) for i in range(n_layers) if str(i) not in params]
    if missing:
        raise KeyError(f"layer parameters missing under {'/'.join(collection.scope.path)}: {missing}")
    return tuple(params[str(i)] for i in range(n_layers))


def scan_layers(collection: nn.Module, layer: nn.Module, n_layers: int, h, layer_args: tuple,
                layerdrop: float, deterministic: bool, keep_states: bool, keep_attentions: bool,
                cached: bool = False):
    """Apply the unbound `layer` (called as `layer(h, *layer_args, deterministic)`, returning
    `(h, attentions...)`) `n_layers` times with the stacked parameters of `collection`. With `cached`
    (a decoding step: `can_scan_cached`), each layer also reads its own cache and the updated caches
    come back per layer.

    Returns (final h, per-layer inputs h or None, per-layer attention outputs or None, per-layer
    updated caches or None), the tuples over layers, like the unrolled loop builds them."""
    # Keys only where a rate is nonzero: train mode with every rate 0 needs no `dropout` stream, as
    # unrolled (a layer that does need one raises flax's missing-PRNG error from inside).
    train = not deterministic and (layerdrop > 0.0 or collection.has_rng("dropout"))
    layers = _layer_variables(collection, n_layers, cached)
    if not train and jax.default_backend() == "cpu":
        return _picked_or_stacked(layer, layers, h, layer_args, deterministic, keep_states, keep_attentions)
    keys = jax.random.split(collection.make_rng("dropout"), n_layers) if train else jnp.zeros((n_layers,))

    def body(h_in, xs):
        variables, key = xs
        rngs = None
        if train:
            drop_key, skip_key = jax.random.split(key)
            rngs = {"dropout": drop_key}
        (out, *attns), cache = _apply(layer, variables, h_in, layer_args, deterministic, rngs)
        h_out = out
        if train and layerdrop > 0.0:   # LayerDrop: skip the layer with probability `layerdrop`
            h_out = jnp.where(jax.random.uniform(skip_key) < layerdrop, h_in, out)
            # (its cache is written either way, as in the unrolled stack)
        return h_out, _outputs(h_in, attns, cache, keep_states, keep_attentions)

    h, ys = jax.lax.scan(body, h, (_stack(layers), keys))
    return _per_layer(h, ys, layers, keep_states, keep_attentions)


def _layer_variables(collection: nn.Module, n_layers: int, cached: bool) -> tuple:
    """Each layer's variables: {"params": ...}, with its {"cache": ...} for a decoding step."""
    params = layer_params(collection, n_layers)
    if not cached:
        return tuple({"params": p} for p in params)
    caches = collection.variables["cache"]
    return tuple({"params": p, "cache": caches[str(i)]} for i, p in enumerate(params))


def _apply(layer: nn.Module, variables: dict, h, layer_args: tuple, deterministic: bool, rngs=None):
    """(the layer's outputs, its updated cache or None)."""
    if "cache" not in variables:
        return layer.apply(variables, h, *layer_args, deterministic, rngs=rngs), None
    outs, state = layer.apply(variables, h, *layer_args, deterministic, rngs=rngs, mutable=["cache"])
    # Leaves the layer left as they were (the cross-attention K/V of a decoding step) go out as None:
    # the scan does not stack them again, and `_per_layer` puts each layer's own back (`_merge_cache`).
    before = traverse_util.flatten_dict(unfreeze(variables["cache"]))
    after = traverse_util.flatten_dict(unfreeze(state["cache"]))
    return outs, traverse_util.unflatten_dict({k: None if before.get(k) is v else v for k, v in after.items()})


def _merge_cache(old, new) -> dict:
    """A layer's cache after a scanned step: `new`'s leaves, and `old`'s where `new` has None."""
    before = traverse_util.flatten_dict(unfreeze(old))
    after = traverse_util.flatten_dict(unfreeze(new))
    return traverse_util.unflatten_dict({k: before[k] if v is None else v for k, v in after.items()})


def _outputs(h_in, attns, cache, keep_states: bool, keep_attentions: bool):
    return h_in if keep_states else None, tuple(attns) if keep_attentions else None, cache


def _per_layer(h, ys, layers: tuple, keep_states: bool, keep_attentions: bool):
    """The scan's stacked outputs as per-layer tuples; each layer's cache whole again."""
    states, attns, caches = ys
    n_layers = len(layers)
    per_layer_states = tuple(states[i] for i in range(n_layers)) if keep_states else None
    per_layer_attns = None
    if keep_attentions:
        per_layer_attns = tuple(tuple(None if a is None else a[i] for a in attns) for i in range(n_layers))
    per_layer_caches = None
    if caches is not None:
        per_layer_caches = tuple(_merge_cache(layers[i]["cache"], jax.tree_util.tree_map(lambda a, i=i: a[i], caches))
                                 for i in range(n_layers))
    return h, per_layer_states, per_layer_attns, per_layer_caches


def _picked_or_stacked(layer: nn.Module, layers: tuple, h, layer_args: tuple, deterministic: bool,
                       keep_states: bool, keep_attentions: bool):
    """`scan_layers` without dropout: each step picks its layer's variables (weights, and its cache in
    a decoding step) with a switch; differentiated (forward or reverse mode), the same function runs
    with them stacked (a custom JVP: the primal is the switch, the JVP that of the stacked scan, which
    JAX transposes for a gradient)."""
    # Arrays travel as arguments (a custom JVP takes no traced closure); flags and None stay in place.
    where = [i for i, a in enumerate(layer_args) if isinstance(a, (jax.Array, np.ndarray))]

    def with_arrays(arrays):
        args = list(layer_args)
        for i, a in zip(where, arrays):
            args[i] = a
        return tuple(args)

    def run(stacked: bool, layers, h, arrays):
        args = with_arrays(arrays)

        def body(h_in, x):   # x: the layer's slice of the stack, or the step for the switch
            variables = x if stacked else _switch(layers, x)
            (out, *attns), cache = _apply(layer, variables, h_in, args, deterministic)
            return out, _outputs(h_in, attns, cache, keep_states, keep_attentions)

        return jax.lax.scan(body, h, _stack(layers) if stacked else jnp.arange(len(layers)))

    picked = jax.custom_jvp(lambda layers, h, arrays: run(False, layers, h, arrays))
    picked.defjvp(lambda primals, tangents: jax.jvp(lambda *a: run(True, *a), primals, tangents))
    h, ys = picked(layers, h, tuple(layer_args[i] for i in where))
    return _per_layer(h, ys, layers, keep_states, keep_attentions)


def _stack(layers: tuple):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


def _switch(layers, i):
    """Layer `i`'s variables by a switch on the traced step (XLA copies that layer's only)."""
    return jax.lax.switch(i, [lambda ls, k=k: ls[k] for k in range(len(layers))], layers)
