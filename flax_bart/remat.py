"""Gradient checkpointing: the `jax.checkpoint_policies` accepted by name, and layer classes under
`nn.remat`.

Checkpointing wraps each encoder and decoder layer class, never renames a module, so the parameter
tree is the same with and without it. The layers' Python-valued arguments (`deterministic`,
`init_cache`, `cache_length`) steer tracing, so they are passed positionally and marked static.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Union

import flax.linen as nn
import jax

# Policies that are themselves a policy (the others in `jax.checkpoint_policies` build one from
# arguments, e.g. `save_only_these_names("x")`: call those and pass the result).
POLICY_NAMES = (
    "nothing_saveable", "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
    "checkpoint_dots", "checkpoint_dots_with_no_batch_dims",
)

Policy = Optional[Union[str, Callable[..., bool]]]


def available_policies() -> tuple:
    """The policy names this JAX provides (a subset of POLICY_NAMES)."""
    return tuple(n for n in POLICY_NAMES if hasattr(jax.checkpoint_policies, n))


def resolve_policy(policy: Policy) -> Optional[Callable[..., bool]]:
    """A `jax.checkpoint` policy from a name in `jax.checkpoint_policies` or a callable; None keeps
    JAX's default (save nothing: recompute the whole layer in the backward pass)."""
    if policy is None or callable(policy):
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be None, a name from jax.checkpoint_policies or a callable, "
                        f"got {type(policy).__name__}")
    valid = available_policies()
    if policy in valid:
        return getattr(jax.checkpoint_policies, policy)
    if hasattr(jax.checkpoint_policies, policy):
        raise ValueError(f"jax.checkpoint_policies.{policy} builds a policy from arguments: call it and pass "
                         f"the result as policy=..., or use one of {', '.join(valid)}")
    raise ValueError(f"unknown gradient checkpointing policy {policy!r}; valid names: {', '.join(valid)} "
                     "(or pass a callable policy)")


def static_argnums(method, names) -> tuple:
    """Positions of the arguments `names` in `method`'s signature, counting `self` as 0 (the
    convention of `nn.remat`)."""
    params = list(inspect.signature(method).parameters)
    missing = [n for n in names if n not in params]
    if missing:
        raise TypeError(f"{method.__qualname__} has no arguments {missing}")
    return tuple(params.index(n) for n in names)


def maybe_remat(layer_cls: type, enabled: bool, policy, static_names) -> type:
    """`layer_cls` itself, or under `nn.remat` with `static_names` static and `policy`."""
    if not enabled:
        return layer_cls
    return nn.remat(layer_cls, static_argnums=static_argnums(layer_cls.__call__, static_names), policy=policy)
