"""Activation functions by the names PyTorch BART configs use (`activation_function`).

In bfloat16/float16 they round where PyTorch rounds. An activation that PyTorch computes with one
kernel (`F.gelu`, `F.silu`, `torch.sigmoid`, ...) computes in float32 inside and rounds once, so
here it runs in float32 and is cast back. transformers' Python activations (`gelu_new`, `gelu_fast`,
`quick_gelu`, ...) are chains of such kernels, each rounded to the input's dtype, so here they are the
same chains: each elementwise function in float32 and rounded, each product with a constant taken in
float32 (PyTorch keeps a Python scalar in float32 for a 16-bit tensor; jax would first round the
constant to the tensor's dtype). jax's own functions in bf16/fp16 rounded after every internal op,
which on BART-base's float16 decoder put Flax's error at up to 2x PyTorch's distance from float64.
In float32 and float64 the one-kernel activations compute as jax's functions do; the chains follow
transformers' formulas there too (`gelu_pytorch_tanh` as x * sigmoid(2u), the same function without
1 + tanh(u)'s cancellation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulator(dtype):
    """float32 for a bf16/fp16 product (None otherwise): the product accumulates in float32 and is rounded
    once, as PyTorch's, and XLA:CPU hands bf16 x bf16 -> float32 to the CPU's bf16 units (AVX512-BF16, AMX)
    instead of first writing both operands out in float32 (4-5x faster on such a CPU)."""
    return jnp.float32 if jnp.dtype(dtype) in LOW_PRECISION else None


def _once(fn):
    """`fn` computed in float32 and rounded once to a 16-bit input's dtype (one PyTorch kernel)."""

    def act(x):
        if x.dtype in LOW_PRECISION:
            return fn(x.astype(jnp.float32)).astype(x.dtype)
        return fn(x)

    return act


def _times(x, c: float):
    """x * c with the constant kept in float32 for a 16-bit x (PyTorch's tensor-scalar product)."""
    return _once(lambda v: v * c)(x)


_tanh, _erf, _sigmoid = _once(jnp.tanh), _once(jax.scipy.special.erf), _once(jax.nn.sigmoid)
_cube = _once(lambda v: v * v * v)


def _gelu_tanh_formula(x):
    # 0.5 x (1 + tanh(u)) == x sigmoid(2u), without 1 + tanh(u)'s cancellation for negative x
    return x * jax.nn.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x))


def _gelu_new(x):     # transformers' NewGELUActivation / AccurateGELUActivation
    inner = x + _times(_cube(x), 0.044715)
    return _times(x, 0.5) * (1.0 + _tanh(_times(inner, math.sqrt(2.0 / math.pi))))


def _gelu_fast(x):    # FastGELUActivation
    inner = _times(x, 0.7978845608) * (1.0 + _times(x, 0.044715) * x)
    return _times(x, 0.5) * (1.0 + _tanh(inner))


def _gelu_python(x):  # GELUActivation(use_gelu_python=True)
    return _times(x, 0.5) * (1.0 + _erf(_times(x, 1.0 / math.sqrt(2.0))))


def _quick_gelu(x):   # QuickGELUActivation
    return x * _sigmoid(_times(x, 1.702))


def _laplace(x, mu=0.707107, sigma=0.282095):   # LaplaceActivation (MEGA's)
    # PyTorch rounds a Python scalar it adds or subtracts to the tensor's dtype first (unlike one it
    # multiplies or divides by); each op is then rounded
    shifted = x - jnp.asarray(mu, x.dtype)
    return _times(1.0 + _erf(_once(lambda v: v / (sigma * math.sqrt(2.0)))(shifted)), 0.5)


def _sqrt_softplus(x):   # SqrtSoftplusActivation: softplus, then sqrt (two kernels)
    return _once(jnp.sqrt)(_once(jax.nn.softplus)(x))


ACTIVATIONS = {
    "gelu": _once(lambda x: jax.nn.gelu(x, approximate=False)),
    "gelu_python": _gelu_python,
    "gelu_10": _once(lambda x: jnp.clip(jax.nn.gelu(x, approximate=False), -10.0, 10.0)),   # ClippedGELU
    "gelu_new": _gelu_new,
    "gelu_python_tanh": _gelu_new,   # GELUTanh(use_gelu_tanh_python=True): gelu_new's chain
    "gelu_pytorch_tanh": _once(_gelu_tanh_formula),
    "gelu_fast": _gelu_fast,
    "gelu_accurate": _gelu_new,
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": _once(lambda x: jax.nn.leaky_relu(x, negative_slope=0.01)),
    "silu": _once(jax.nn.silu),
    "swish": _once(jax.nn.silu),
    "hardswish": _once(jax.nn.hard_swish),
    "laplace": _laplace,
    "sqrtsoftplus": _sqrt_softplus,
    "mish": _once(lambda x: x * jnp.tanh(jax.nn.softplus(x))),
    "tanh": _once(jnp.tanh),
    "sigmoid": _once(jax.nn.sigmoid),
    "linear": lambda x: x,
}


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation_function={name!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        ) from None
