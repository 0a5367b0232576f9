"""`precision="highest"` on CPU: float32 products whose contraction is summed in blocks, as PyTorch's GEMM sums it.

jax 0.10's XLA:CPU hands float32 dots to YNNPACK (`__ynn_fusion` in the compiled HLO), whose kernels
accumulate the whole contraction in one register per output, term after term. PyTorch's CPU GEMM
(MKL/oneDNN) blocks the contraction and adds the blocks' partial sums, and so does XLA's Eigen GEMM
when YNNPACK is switched off (`--xla_cpu_experimental_ynn_fusion_type=`). Over BART's K = 768-4096
the sequential sum errs 2-6x as much (max |error| / RMS against the float64 product; figures in
`reports/bench/`, `python -m benchmarks.chunked_dot_bench`). `precision` on CPU otherwise changes nothing
for float32 (no reduced-precision passes to turn off), so a model built with `precision="highest"`
(or `jax.lax.Precision.HIGHEST`) gets the more accurate sum there:

- `Dense` splits its contraction into `chunks(K)` equal blocks: one batched dot over the blocks (the
  kernel's reshape (K, N) -> (C, K/C, N) is free; the activation's block axis moves to the front) and
  the C partial products added in order;
- the tied LM head (`Embed.attend`, a (V, D) table) the same way, which also transposes the table on
  every call; for a decoding step's few rows (`REDUCE_MAX_ROWS`) a multiply-reduce over the table
  instead, which XLA sums with vector accumulators.

Off by default: the C partial products are written out and read back, and on a 2-core AVX2 EPYC
BART-base forwards took 14-24% longer with it (QA 4 x 256, LM 2 x 128; `reports/bench/epyc-avx2-84e48e8/`).
The parity gate builds its models with it (`parity --precision`, default highest). Not in bfloat16/float16 (their products accumulate in
float32 and are judged against the float64 gold), and not off the CPU (cuBLAS blocks its own sums).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

BLOCK = 256        # most terms one partial sum takes ...
MAX_CHUNKS = 8     # ... unless that needs more blocks than this: each block adds a (rows, N) partial product
MIN_BLOCK = 64     # a contraction with no divisor giving blocks of MIN_BLOCK..BLOCK terms is not split
REDUCE_MAX_ROWS = 8   # `matmul_table` for at most this many rows: a multiply-reduce instead of blocks


def chunks(k: int) -> int:
    """How many equal blocks a contraction of length `k` is summed in: the fewest of at most
    max(BLOCK, k / MAX_CHUNKS) terms each; 1 when `k` fits one block or no divisor leaves blocks of
    MIN_BLOCK terms or more."""
    if k <= BLOCK:
        return 1
    block = max(BLOCK, -(-k // MAX_CHUNKS))
    for c in range(-(-k // block), k // MIN_BLOCK + 1):
        if k % c == 0:
            return c
    return 1


def is_highest(precision: Any) -> bool:
    """Whether a dot_general `precision` (None, a name, a `lax.Precision` or a pair) asks for HIGHEST."""
    if precision is None:
        return False
    pair = precision if isinstance(precision, (tuple, list)) else (precision, precision)
    try:
        return all(jax.lax.Precision(p) == jax.lax.Precision.HIGHEST for p in pair)
    except (ValueError, TypeError):
        return False


def applies(dtype: Any, k: int, precision: Any) -> bool:
    """Whether a product in `dtype` over a contraction of length `k` is blocked here."""
    return (is_highest(precision) and jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu"
            and chunks(k) > 1)


def _sum_in_order(parts_CxN):
    out = parts_CxN[0]
    for i in range(1, parts_CxN.shape[0]):   # in order: the result does not depend on a reduction's tree
        out = out + parts_CxN[i]
    return out


def _uses_blocks(x, w, precision) -> bool:
    return applies(x.dtype, x.shape[-1], precision) and w.dtype == x.dtype


def _product(x, w, w_axis: int, blocked: bool, precision, preferred_element_type):
    """x (..., K) contracted with axis `w_axis` of the 2-D `w`; with `blocked`, in `chunks(K)` blocks:
    K splits into (C, K/C) in both operands (free reshapes), one dot batched over C, the C partial
    products added in order."""
    k, lead = x.shape[-1], x.ndim - 1
    if not blocked:
        return jax.lax.dot_general(x, w, (((lead,), (w_axis,)), ((), ())), precision=precision,
                                   preferred_element_type=preferred_element_type)
    c = chunks(k)
    x_blocks = x.reshape(x.shape[:-1] + (c, k // c))                              # (..., C, K/C)
    w_blocks = w.reshape(w.shape[:w_axis] + (c, k // c) + w.shape[w_axis + 1:])  # C at w_axis
    parts = jax.lax.dot_general(x_blocks, w_blocks, (((lead + 1,), (w_axis + 1,)), ((lead,), (w_axis,))),
                                precision=precision, preferred_element_type=preferred_element_type)
    return _sum_in_order(parts)


def matmul(x, kernel, precision=None, preferred_element_type=None):
    """x (..., K) @ kernel (K, N) -> (..., N); the contraction in blocks when `applies`."""
    return _product(x, kernel, 0, _uses_blocks(x, kernel, precision), precision, preferred_element_type)


def matmul_table(x, table_VxK, precision=None, preferred_element_type=None):
    """x (..., K) @ table (V, K)^T -> (..., V) (a tied LM head); the contraction in blocks when `applies`,
    except for one row (a matrix-vector product: XLA:CPU's is already accurate, 9e-7 for BART-base's LM
    head) and for a decoding step's few rows (below)."""
    rows = math.prod(x.shape[:-1])
    blocked = _uses_blocks(x, table_VxK, precision) and rows > 1
    if blocked and rows <= REDUCE_MAX_ROWS:
        # A multiply-reduce over the table's contiguous rows, which XLA:CPU sums with vector
        # accumulators (2.3-3.2e-6 of the RMS for 2-8 rows of BART-base's LM head, PyTorch 1.6-1.9e-6,
        # the dot 5.3-5.9e-6) and streams faster than its dot; the blocked form would transpose the
        # whole table for them (122 ms against the dot's 14.5 for 2 rows).
        k = x.shape[-1]
        out = jnp.sum(table_VxK[None] * x.reshape(rows, 1, k), axis=-1, dtype=preferred_element_type)
        return out.reshape(x.shape[:-1] + (table_VxK.shape[0],))
    return _product(x, table_VxK, 1, blocked, precision, preferred_element_type)


def matmul_transposed(x, kernel_NxK, precision=None, preferred_element_type=None):
    """x (..., K) @ kernel_NxK^T -> (..., N), for a kernel kept transposed, (out, in), in memory: the
    product is formed as (N, rows), each output a dot of two contiguous rows, and transposed back.

    For a decoding step's few rows on a CPU this streams the weights 1.2-2x faster than `matmul` over the
    (K, N) kernel (XLA:CPU, 8 kernels of 768 x 3072, 4 rows: 3.7 ms against 7.6; 1-64 rows measured;
    2-core AVX2 EPYC; no less accurate). The optimization barrier keeps XLA from folding the transpose into the
    dot, which would give back the slow product. `flax_bart.search` keeps such copies of the decoder's
    kernels for its loop (`modules.TRANSPOSED`)."""
    k = x.shape[-1]
    rows_RxK = x.reshape(-1, k)
    out_NxR = jax.lax.dot_general(kernel_NxK, rows_RxK, (((1,), (1,)), ((), ())), precision=precision,
                                  preferred_element_type=preferred_element_type)
    return jax.lax.optimization_barrier(out_NxR).T.reshape(x.shape[:-1] + (kernel_NxK.shape[0],))
