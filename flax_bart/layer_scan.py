"""Run a stack of identical BART layers as one `jax.lax.scan` instead of one copy per layer.

XLA compiles an unrolled stack layer by layer: on a CPU each layer adds a few hundred milliseconds
of compilation (BART-base's 6+6 layers: about 6 s for one forward program), while a scan compiles
one layer body whatever the depth. The parameter tree does not change: the layers' parameters stay
under `layers/0`, `layers/1`, ... (the 4.x layout) and are stacked inside the traced function.

That costs run time: the stacking copies the layer weights on every call, and the scanned body runs
slower than the unrolled layers (BART-base QA forward on a 2-core AVX2 CPU, `benchmarks.scan_bench`:
1x128 458/543 ms scanned vs 252/267 ms unrolled; 4x256 2229/2455 vs 2112/2189 ms). So the models unroll by
default (`scan_layers=False`, as 4.x); the scan is for programs compiled once and run a few times,
such as the parity gate's (`python -m parity`, which turns it on unless `--no-scan-layers`).

The scan serves every call that has no decoding cache: the encoder always, the decoder in a full
(teacher-forced or training) pass. Creating a cache and decoding step by step keep the unrolled
layers, whose per-layer cache variables are the 4.x cache layout, updated in place. Both paths apply
the same layer module to the same inputs; `tests/flax_bart/test_layer_scan.py` checks they agree.
Dropout and LayerDrop draw one key per layer from the module's `dropout` stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn


def can_scan(collection: nn.Module, n_layers: int, cached: bool) -> bool:
    """True when `collection` may scan its layers: applying (not initialising), no cache involved,
    more than one layer, scanning not switched off (`scan_layers=False`), and no collection the
    layers could write to is mutable (`capture_intermediates`, `mutable=True`: those see each layer's
    own modules, which only the unrolled stack has)."""
    if not getattr(collection, "scan_layers", True) or n_layers < 2 or cached or collection.is_initializing():
        return False
    return not any(collection.is_mutable_collection(c) for c in ("intermediates", "cache", "params"))


def stacked_layer_params(collection: nn.Module, n_layers: int):
    """The parameters of layers "0" ... "n-1" of `collection`, stacked on a new leading axis."""
    params = collection.variables["params"]
    missing = [str(i) for i in range(n_layers) if str(i) not in params]
    if missing:
        raise KeyError(f"layer parameters missing under {'/'.join(collection.scope.path)}: {missing}")
    layers = [params[str(i)] for i in range(n_layers)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


def scan_layers(collection: nn.Module, layer: nn.Module, n_layers: int, h, layer_args: tuple,
                layerdrop: float, deterministic: bool, keep_states: bool, keep_attentions: bool):
    """Apply the unbound `layer` (called as `layer(h, *layer_args, deterministic)`, returning
    `(h, attentions...)`) `n_layers` times with the stacked parameters of `collection`.

    Returns (final h, per-layer inputs h or None, per-layer attention outputs or None), the last two as
    tuples over layers, like the unrolled loop builds them."""
    stacked = stacked_layer_params(collection, n_layers)
    # Keys only where a rate is nonzero: train mode with every rate 0 needs no `dropout` stream, as
    # unrolled (a layer that does need one raises flax's missing-PRNG error from inside).
    train = not deterministic and (layerdrop > 0.0 or collection.has_rng("dropout"))
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
    per_layer_states = tuple(states[i] for i in range(n_layers)) if keep_states else None
    per_layer_attns = None
    if keep_attentions:
        per_layer_attns = tuple(tuple(None if a is None else a[i] for a in attns) for i in range(n_layers))
    return h, per_layer_states, per_layer_attns
