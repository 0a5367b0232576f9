"""`Module.param` without an `eval_shape` of the initialiser at every trace.

When a parameter already exists (every `apply`), flax's `param` checks its shape by tracing the
initialiser with `jax.eval_shape`: about 0.4-0.9 ms a parameter on this project's CPU machines, so a
BART-base program with its ~260 parameters spends ~0.2 s of every trace there (40% of tracing the
decoder that `init_cache` runs). Every parameter of flax_bart is declared with its shape (`init_fn(key,
shape, dtype)`), so `DeclaredParams.param` checks an existing parameter against that declared shape
directly, and raises flax's own `ScopeParamShapeError` on a mismatch, as before. Creating a parameter
(`init`), or a declaration whose first argument is not a shape, goes through flax's `param` unchanged.
"""

from __future__ import annotations

import numpy as np
from flax import errors
from flax import linen as nn


def _shape(value):
    """`value` as a shape tuple, or None when it is not one."""
    if isinstance(value, (tuple, list)) and all(isinstance(n, (int, np.integer)) for n in value):
        return tuple(int(n) for n in value)
    return None


class DeclaredParams:
    """Mixin for a flax Module whose parameters are declared as `param(name, init_fn, shape, ...)`."""

    @nn.nowrap
    def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
        shape = _shape(init_args[0]) if init_args else None
        if shape is None or self.scope is None or not self.has_variable("params", name):
            return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        # `variable` reserves the name and reads the existing value (its init_fn is never called).
        value = self.variable("params", name, None, unbox=unbox).value
        if np.shape(value) != shape:
            raise errors.ScopeParamShapeError(name, self.scope.path_text, np.shape(value), shape)
        return value


class LayerNorm(DeclaredParams, nn.LayerNorm):
    """`nn.LayerNorm` (same numerics and parameters) with `DeclaredParams`."""
