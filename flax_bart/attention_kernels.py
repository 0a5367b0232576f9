"""Which kernel computes softmax(QK^T + mask) V: the explicit einsum path, or `jax.nn.dot_product_attention`
(cuDNN's fused flash attention on an NVIDIA GPU, XLA's composition elsewhere).

`attention_impl` (a model constructor and `from_pretrained` argument):

- "auto" (default): cuDNN on a GPU backend for float16/bfloat16 compute with a head size cuDNN takes
  (a multiple of 8, at most 128); the explicit path everywhere else (CPU, TPU, float32, where the fused
  kernel has nothing to gain: float32 has no cuDNN flash kernel). If cuDNN turns the shapes down when
  the program is traced, "auto" keeps the explicit path.
- "explicit": always the einsum path (4.x Flax BART's).
- "xla": `jax.nn.dot_product_attention(implementation="xla")` on any backend (the fused path's wiring,
  testable on a CPU; float16 only off the CPU, whose XLA has no float16 x float16 -> float32 dot). It
  applies the softmax before weighting the values; the explicit path does so in bf16/fp16 (bit-identical
  outputs on a CPU) and in float32 divides by the softmax's sum afterwards (flax_bart.modules._attend:
  the same function within float32 rounding).
- "cudnn": cuDNN, or a ValueError naming the reason when the backend or shapes do not allow it.

The semantics do not change: the fused kernels get the same scaled queries and the same additive mask
(0 where attended, the compute dtype's minimum elsewhere) that the explicit path adds to its float32
scores, so a row without any attended key still attends uniformly, as in PyTorch BART. Dropout on the
attention weights (training with `attention_dropout > 0`) needs the weights themselves: that case keeps
the explicit path. The weights a caller asks for (`output_attentions=True`) are computed explicitly
beside the fused output; when nobody asks, XLA drops that computation.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("auto", "explicit", "xla", "cudnn")
CUDNN_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
CUDNN_MAX_HEAD_DIM = 128


def check_attention_impl(value) -> str:
    """`value` if it names an implementation, else a ValueError naming the argument and the choices."""
    if value not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={value!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
    return value


def cudnn_refusal(dtype, head_dim: int) -> str | None:
    """Why cuDNN's fused attention cannot serve this case, or None when it can."""
    if jax.default_backend() != "gpu":
        return f"the default JAX backend is {jax.default_backend()}, not gpu"
    if jnp.dtype(dtype) not in CUDNN_DTYPES:
        return f"compute dtype {jnp.dtype(dtype).name}: cuDNN's fused attention takes float16 or bfloat16"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"head size {head_dim}: cuDNN's fused attention takes a multiple of 8, at most {CUDNN_MAX_HEAD_DIM}"
    return None


def choose_kernel(impl: str, dtype, head_dim: int, dropout_active: bool) -> str | None:
    """The `jax.nn.dot_product_attention` implementation for this call, or None for the explicit path."""
    if impl == "explicit" or dropout_active:
        return None
    if impl == "xla":
        if jnp.dtype(dtype) == jnp.float16 and jax.default_backend() == "cpu":
            # jax's XLA attention asks dot_general for float16 x float16 -> float32, which XLA:CPU lacks.
            raise ValueError("attention_impl='xla': jax.nn.dot_product_attention cannot run float16 on the cpu "
                             "backend (no F16_F16_F32 dot on XLA:CPU); use 'explicit' or 'auto'")
        return "xla"
    reason = cudnn_refusal(dtype, head_dim)
    if impl == "cudnn" and reason is not None:
        raise ValueError(f"attention_impl='cudnn': {reason}")
    return None if reason is not None else "cudnn"


def _precision_context(precision):
    """`precision` (the model's matmul precision) as the default for the fused kernel's float32 matmuls
    (it sets its own for float16/bfloat16)."""
    if precision is None:
        return contextlib.nullcontext()
    name = precision if isinstance(precision, str) else getattr(precision, "name", None)
    return jax.default_matmul_precision(name.lower()) if name else contextlib.nullcontext()


def fused_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, bias_Bx1xTxS, kernel: str, precision=None,
                    fallback=None):
    """softmax(q k^T + bias) v with `jax.nn.dot_product_attention` (q already scaled, as in the explicit
    path). With `fallback` (a thunk) and kernel "cudnn", a refusal at trace time runs `fallback()`."""
    try:
        with _precision_context(precision):
            return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, bias=bias_Bx1xTxS, scale=1.0,
                                                implementation=kernel)
    except (NotImplementedError, RuntimeError, ValueError):
        # jax's cuDNN path checks the cuDNN version, GPU generation and shapes while tracing
        if fallback is None or kernel != "cudnn":
            raise
        return fallback()
