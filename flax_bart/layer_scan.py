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
run a few times, such as the parity gate's (`python -m parity`, which turns it on unless
`--no-scan-layers`).

The scan serves every call that has no decoding cache: the encoder always, the decoder in a full
(teacher-forced or training) pass. Creating a cache and decoding step by step keep the unrolled
layers, whose per-layer cache variables are the 4.x cache layout, updated in place. Both paths apply
the same layer module to the same inputs; `tests/flax_bart/test_layer_scan.py` checks they agree.
Dropout and LayerDrop draw one key per layer from the module's `dropout` stream.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def can_scan(collection: nn.Module, n_layers: int, cached: bool) -> bool:
    """True when `collection` may scan its layers: applying (not initialising), no cache involved,
    more than one layer, scanning not switched off (`scan_layers=False`), and no collection the
    layers could write to is mutable (`capture_intermediates`, `mutable=True`: those see each layer's
    own modules, which only the unrolled stack has)."""
    if not getattr(collection, "scan_layers", True) or n_layers < 2 or cached or collection.is_initializing():
        return False
    return not any(collection.is_mutable_collection(c) for c in ("intermediates", "cache", "params"))


def layer_params(collection: nn.Module, n_layers: int) -> tuple:
    """The parameter trees of layers "0" ... "n-1" of `collection` (a KeyError naming the missing ones)."""
    params = collection.variables["params"]
    missing = [str(i) for i in range(n_layers) if str(i) not in params]
    if missing:
        raise KeyError(f"layer parameters missing under {'/'.join(collection.scope.path)}: {missing}")
    return tuple(params[str(i)] for i in range(n_layers))


def stacked_layer_params(collection: nn.Module, n_layers: int):
    """The parameters of layers "0" ... "n-1" of `collection`, stacked on a new leading axis."""
    return _stack(layer_params(collection, n_layers))


def scan_layers(collection: nn.Module, layer: nn.Module, n_layers: int, h, layer_args: tuple,
                layerdrop: float, deterministic: bool, keep_states: bool, keep_attentions: bool):
    """Apply the unbound `layer` (called as `layer(h, *layer_args, deterministic)`, returning
    `(h, attentions...)`) `n_layers` times with the stacked parameters of `collection`.

    Returns (final h, per-layer inputs h or None, per-layer attention outputs or None), the last two as
    tuples over layers, like the unrolled loop builds them."""
    # Keys only where a rate is nonzero: train mode with every rate 0 needs no `dropout` stream, as
    # unrolled (a layer that does need one raises flax's missing-PRNG error from inside).
    train = not deterministic and (layerdrop > 0.0 or collection.has_rng("dropout"))
    if not train and jax.default_backend() == "cpu":
        return _picked_or_stacked(collection, layer, n_layers, h, layer_args, deterministic, keep_states,
                                  keep_attentions)
    stacked = stacked_layer_params(collection, n_layers)
    keys = jax.random.split(collection.make_rng("dropout"), n_layers) if train else jnp.zeros((n_layers,))

    def body(h_in, xs):
        params, key = xs
        rngs = None
        if train:
            drop_key, skip_key = jax.random.split(key)
            rngs = {"dropout": drop_key}
        out, *attns = layer.apply({"params": params}, h_in, *layer_args, deterministic, rngs=rngs)
        h_out = out
        if train and layerdrop > 0.0:   # LayerDrop: skip the layer with probability `layerdrop`
            h_out = jnp.where(jax.random.uniform(skip_key) < layerdrop, h_in, out)
        ys = (h_in if keep_states else None, tuple(attns) if keep_attentions else None)
        return h_out, ys

    h, (states, attns) = jax.lax.scan(body, h, (stacked, keys))
    return _per_layer(h, states, attns, n_layers, keep_states, keep_attentions)


def _per_layer(h, states, attns, n_layers: int, keep_states: bool, keep_attentions: bool):
    per_layer_states = tuple(states[i] for i in range(n_layers)) if keep_states else None
    per_layer_attns = None
    if keep_attentions:
        per_layer_attns = tuple(tuple(None if a is None else a[i] for a in attns) for i in range(n_layers))
    return h, per_layer_states, per_layer_attns


def _picked_or_stacked(collection: nn.Module, layer: nn.Module, n_layers: int, h, layer_args: tuple,
                       deterministic: bool, keep_states: bool, keep_attentions: bool):
    """`scan_layers` without dropout: each step picks its layer's weights with a switch; differentiated
    (forward or reverse mode), the same function runs with the weights stacked (a custom JVP: the
    primal is the switch, the JVP that of the stacked scan, which JAX transposes for a gradient)."""
    layers = layer_params(collection, n_layers)
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
            params = x if stacked else _switch(layers, x)
            out, *attns = layer.apply({"params": params}, h_in, *args, deterministic)
            return out, (h_in if keep_states else None, tuple(attns) if keep_attentions else None)

        return jax.lax.scan(body, h, _stack(layers) if stacked else jnp.arange(n_layers))

    picked = jax.custom_jvp(lambda layers, h, arrays: run(False, layers, h, arrays))
    picked.defjvp(lambda primals, tangents: jax.jvp(lambda *a: run(True, *a), primals, tangents))
    h, (states, attns) = picked(layers, h, tuple(layer_args[i] for i in where))
    return _per_layer(h, states, attns, n_layers, keep_states, keep_attentions)


def _stack(layers: tuple):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


def _switch(layers, i):
    """Layer `i`'s weights by a switch on the traced step (XLA copies that layer's weights only)."""
    return jax.lax.switch(i, [lambda ls, k=k: ls[k] for k in range(len(layers))], layers)
