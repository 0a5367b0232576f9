"""Linen layers of BART: embeddings, attention with a decoding cache, encoder/decoder layers and stacks.

Module and parameter names mirror PyTorch BART and the 4.x Flax port, so the parameter tree is the
4.x `flax_model.msgpack` layout. Numerics follow PyTorch BART (post-LN, eps 1e-5, positions offset by
2, additive masks of the dtype's most negative value, the fp16 clamp after each encoder layer).
Attention masks: an entry > 0 is attended, 0 masked (a row with nothing attended attends uniformly, as
in PyTorch BART), < 0 (`ABSENT`) not part of the sequence: never attended, not even by such a row, so
that padding a sequence with absent positions changes none of its outputs. Generation pads its
length buckets so, and the parity harness the cases it runs as one batch. In a row whose keys are
all absent they count as masked (finite outputs, no NaN).
`dtype` is the compute dtype, `param_dtype` the storage dtype of newly initialised parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from flax_bart.activations import LOW_PRECISION, accumulator, get_activation
from flax_bart import chunked_dot
from flax_bart import outputs as O
from flax_bart.attention_kernels import choose_kernel, fused_attention
from flax_bart.config import BartConfig
from flax_bart.declared_params import DeclaredParams, LayerNorm
from flax_bart.layer_scan import can_scan, can_scan_cached, scan_layers
from flax_bart.remat import maybe_remat

Dtype = Any
POSITION_OFFSET = 2
ABSENT = -1   # attention mask value of a position outside the sequence (padding to a shared shape)
LAYER_NORM_EPS = 1e-5
# On CPU, the explicit attention of more than QUERY_BLOCK queries runs block by block of queries
# (`_blocked_attention`), the same computation per row. XLA:CPU ran the blocks' smaller products and
# softmaxes faster than the whole sequence's: a BART-base forward of 1 x 1024 tokens took 1060 ms
# instead of 1435 on a 2-core Xeon (AVX-512). Why it is faster was not profiled.
QUERY_BLOCK = 256
# A variable collection that may hold a (out, in) copy of a `Dense` kernel ("kernel"), which it then
# multiplies with instead (`chunked_dot.matmul_transposed`): `flax_bart.search` supplies one for the
# decoder in its decoding loop on a CPU.
TRANSPOSED = "transposed"


def _normal(config: BartConfig):
    return nn.initializers.normal(stddev=config.init_std)


class Embed(DeclaredParams, nn.Module):
    """A lookup table whose out-of-range ids give NaN rows (never a silently clamped row)."""

    num_embeddings: int
    features: int
    config: BartConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", _normal(self.config), (self.num_embeddings, self.features), self.param_dtype
        )

    def __call__(self, ids):
        ids = jnp.where(ids < 0, self.num_embeddings, ids)  # negatives would wrap around: send out of range
        rows = jnp.take(self.embedding, ids, axis=0, mode="fill", fill_value=jnp.nan)
        return rows.astype(self.dtype)

    def attend(self, x_BxTxD, precision=None):
        table = jnp.asarray(self.embedding, self.dtype)
        # On a CPU, bf16/fp16 logits accumulate in float32 explicitly (`accumulator`: XLA:CPU then uses
        # the bf16 units); a GPU's bf16 product accumulates in float32 anyway, and a float32 copy of the
        # (batch, positions, vocabulary) logits would only cost memory there.
        acc = accumulator(self.dtype) if jax.default_backend() == "cpu" else None
        return chunked_dot.matmul_table(x_BxTxD.astype(self.dtype), table, precision=precision,
                                        preferred_element_type=acc).astype(self.dtype)



class Dense(DeclaredParams, nn.Module):
    """`nn.Dense`'s parameters (`kernel` (in, out), `bias`) and float32 numerics (with `precision="highest"` on
    CPU the contraction is summed in blocks, `flax_bart.chunked_dot`); in bf16/fp16 the
    matmul accumulates into float32, the bias is added there and the sum is rounded once, as PyTorch's
    low-precision `addmm` does (nn.Dense rounds the product, then rounds again after the bias). Its
    backward pass then sums the bias gradient over batch and positions in float32 as well: autodiff
    of a bf16 bias add sums in bf16, 2-4x further from the exact gradient than PyTorch's."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        dtype = jnp.dtype(self.dtype)
        if self.has_variable(TRANSPOSED, "kernel"):
            y = chunked_dot.matmul_transposed(x.astype(dtype), self.get_variable(TRANSPOSED, "kernel").astype(dtype),
                                              precision=self.precision, preferred_element_type=accumulator(dtype))
        else:
            y = chunked_dot.matmul(x.astype(dtype), kernel.astype(dtype), precision=self.precision,
                                   preferred_element_type=accumulator(dtype))
        if bias is not None:
            y = y + bias.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        return y.astype(dtype)


def _dense(config, features, dtype, param_dtype, precision, name, use_bias=True):
    return Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision,
                 kernel_init=_normal(config), name=name)


def _layer_norm(dtype, param_dtype, name):
    # Two-pass variance, mean((x - mean)^2), as PyTorch computes it; flax's default mean(x^2) - mean^2
    # (4.x's choice) cancels when |mean| >> std.
    return LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                     name=name)


class BartAttention(nn.Module):
    """Multi-head attention. Self-attention may keep a fixed-size K/V cache (`cache` collection);
    cross-attention caches the encoder's K/V once, when the cache is created."""

    config: BartConfig
    num_heads: int
    causal: bool = False
    is_cross: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    attention_impl: str = "auto"   # flax_bart.attention_kernels

    def _proj(self, name):
        return _dense(self.config, self.config.d_model, self.dtype, self.param_dtype, self.precision, name)

    def _heads(self, x_BxTxD):
        b, t, d = x_BxTxD.shape
        return x_BxTxD.reshape(b, t, self.num_heads, d // self.num_heads)

    def _self_cache(self, k_BxTxHxK, v_BxTxHxK, init_cache: bool, cache_length: int):
        """Write this step's K/V into the cache; returns full K/V and the absolute query offset."""
        b, t, h, hd = k_BxTxHxK.shape
        shape = (b, cache_length, h, hd)
        is_initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k_BxTxHxK.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v_BxTxHxK.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
        if not is_initialized or init_cache:
            return None
        cur = index.value
        zero = jnp.zeros((), jnp.int32)
        cached_k.value = jax.lax.dynamic_update_slice(
            cached_k.value, k_BxTxHxK.astype(cached_k.value.dtype), (zero, cur, zero, zero)
        )
        cached_v.value = jax.lax.dynamic_update_slice(
            cached_v.value, v_BxTxHxK.astype(cached_v.value.dtype), (zero, cur, zero, zero)
        )
        index.value = cur + t
        return cached_k.value, cached_v.value, cur

    def _cross_kv(self, kv_BxSxD, store: bool):
        """The cross-attention K/V of the encoder's states; `store`: also kept as the cache's."""
        k, v = self._heads(self._proj("k_proj")(kv_BxSxD)), self._heads(self._proj("v_proj")(kv_BxSxD))
        if store:
            self.put_variable("cache", "cached_key", k)
            self.put_variable("cache", "cached_value", v)
        return k, v

    def _create_cache(self, hidden_BxTxD, kv_BxSxD, cache_length: int):
        """Only the new cache (`init_cache` outside `init`): an empty self-attention cache, or the
        cross-attention K/V of `kv_BxSxD`, the same numbers the full call stores. Nothing else is
        traced (the queries, scores and output would be dead code); `hidden_BxTxD` is returned as it is."""
        if self.is_cross:
            self._cross_kv(kv_BxSxD, store=True)
        elif self.causal:
            b, _, d = hidden_BxTxD.shape
            empty = jax.ShapeDtypeStruct((b, 1, self.num_heads, d // self.num_heads), jnp.dtype(self.dtype))
            self._self_cache(empty, empty, True, cache_length)
        return hidden_BxTxD

    @nn.compact
    def __call__(
        self,
        hidden_BxTxD,
        kv_BxSxD=None,
        key_mask_BxS=None,
        init_cache: bool = False,
        cache_length: int = 0,
        deterministic: bool = True,
    ):
        b, t, _ = hidden_BxTxD.shape
        head_dim = self.config.d_model // self.num_heads
        if init_cache and not self.is_initializing():
            return self._create_cache(hidden_BxTxD, kv_BxSxD, cache_length), None
        q = self._heads(self._proj("q_proj")(hidden_BxTxD))

        query_offset = None
        if self.is_cross:
            if self.has_variable("cache", "cached_key") and not init_cache:
                k = self.get_variable("cache", "cached_key")
                v = self.get_variable("cache", "cached_value")
            else:
                k, v = self._cross_kv(kv_BxSxD, store=init_cache)
        else:
            k = self._heads(self._proj("k_proj")(hidden_BxTxD))
            v = self._heads(self._proj("v_proj")(hidden_BxTxD))
            if self.causal and (init_cache or self.has_variable("cache", "cached_key")):
                cached = self._self_cache(k, v, init_cache, cache_length)
                if cached is not None:
                    k, v, query_offset = cached
        s = k.shape[1]

        # Boolean mask (B, 1, T, S): key padding, causality, and cache fill. A key mask entry > 0 is
        # attended, 0 masked, < 0 absent (padding added to share a compiled shape; see below).
        mask = jnp.ones((b, 1, t, s), dtype=bool)
        absent_Bx1x1xS = None
        if key_mask_BxS is not None:
            if key_mask_BxS.shape[-1] not in (s, 1):
                raise ValueError(
                    f"attention mask covers {key_mask_BxS.shape[-1]} key positions, expected {s}"
                    + (" (with a cache, the decoder mask spans max_length)" if query_offset is not None else "")
                )
            mask = mask & (key_mask_BxS > 0)[:, None, None, :]
            absent_Bx1x1xS = (key_mask_BxS < 0)[:, None, None, :]
        if self.causal:
            q_pos = jnp.arange(t) + (0 if query_offset is None else query_offset)
            mask = mask & (jnp.arange(s)[None, :] <= q_pos[:, None])[None, None]
        if query_offset is not None:   # cache slots not filled yet: absent, as PyTorch's cache lacks them
            unfilled_1x1x1xS = (jnp.arange(s) >= query_offset + t)[None, None, None, :]
            absent_Bx1x1xS = unfilled_1x1x1xS if absent_Bx1x1xS is None else absent_Bx1x1xS | unfilled_1x1x1xS

        q = q * jnp.asarray(head_dim**-0.5, self.dtype)
        dropout_active = not deterministic and self.config.attention_dropout > 0
        kernel = choose_kernel(self.attention_impl, self.dtype, head_dim, dropout_active=dropout_active)
        if not (self.is_cross and kernel is None and k.dtype == jnp.float32 and jnp.dtype(self.dtype) in LOW_PRECISION):
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        # else: cached cross-attention K/V that `generate` widened to float32 once, before its decoding loop
        # (flax_bart.search). They hold bf16/fp16 values, and the explicit products below accumulate in
        # float32 either way, so the numbers are the same; XLA:CPU would otherwise widen them again at
        # every step (a fifth of a BART-base bf16 step).
        bias_Bx1xTxS = jnp.where(mask, 0.0, jnp.finfo(self.dtype).min).astype(self.dtype)
        if absent_Bx1x1xS is not None:
            # A masked key gets the dtype's minimum, so a row with no attended key attends uniformly
            # (PyTorch BART); an absent key gets -inf, weight exactly 0 even in such a row, so padding a
            # sequence with absent keys changes no output at its real positions. A row whose keys are
            # all absent keeps the minimum (finite: no NaN to leak into later layers as 0 x NaN).
            absent_Bx1x1xS = absent_Bx1x1xS & jnp.any(~absent_Bx1x1xS, axis=-1, keepdims=True)
            bias_Bx1xTxS = jnp.where(absent_Bx1x1xS, -jnp.inf, bias_Bx1xTxS).astype(self.dtype)
        # Heads first, (B, H, T, K): XLA:CPU runs these products ~4x faster than the same contraction
        # over (B, T, H, K) operands (one BART-base attention of 4 x 256 tokens: 25.9 -> 6.1 ms).
        q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
        values = None  # (B, T, H, K) when computed with the weights, below
        if t > QUERY_BLOCK and not dropout_active and jax.default_backend() == "cpu":
            values, probs_BxHxTxS = _blocked_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xTxS,
                                                       self.dtype, self.precision)
        elif not dropout_active and post_normalised(self.dtype):
            values, probs_BxHxTxS = _attend(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xTxS, self.dtype,
                                            self.precision)
        else:
            probs_BxHxTxS = _probs(q_BxHxTxK, k_BxHxSxK, bias_Bx1xTxS, self.dtype, self.precision)

        def explicit():
            if values is not None:
                return values, probs_BxHxTxS
            dropped = nn.Dropout(rate=self.config.attention_dropout)(probs_BxHxTxS, deterministic=deterministic)
            return _values(dropped, v_BxHxSxK, self.precision), dropped

        # flax_bart.attention_kernels: a fused kernel where it serves; the weights (returned for
        # output_attentions) stay the explicit ones, and XLA drops them when nobody reads them.
        if kernel is None:
            out, dropped = explicit()
        else:
            out = fused_attention(q, k, v, bias_Bx1xTxS, kernel, self.precision,
                                  fallback=(lambda: explicit()[0]) if self.attention_impl == "auto" else None)
            dropped = probs_BxHxTxS
        out = self._proj("out_proj")(out.reshape(b, t, self.config.d_model))
        if query_offset is not None:
            # Past the end of the cache the update would be clamped: say so with NaN, not a wrong number.
            out = jnp.where(query_offset + t > s, jnp.nan, out)
        # The weights after dropout, as PyTorch BART's eager attention (and 4.x Flax BART) return them.
        return out, dropped


def _scores(q_BxHxTxK, k_BxHxSxK, bias_Bx1xTxS, precision):
    """q k^T + bias, in float32."""
    return jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, precision=precision,
                      preferred_element_type=jnp.float32) + bias_Bx1xTxS.astype(jnp.float32)


def _probs(q_BxHxTxK, k_BxHxSxK, bias_Bx1xTxS, dtype, precision):
    """softmax(q k^T + bias) over the keys: scores in float32, probabilities rounded once to `dtype`."""
    return jax.nn.softmax(_scores(q_BxHxTxK, k_BxHxSxK, bias_Bx1xTxS, precision), axis=-1).astype(dtype)


def _values(probs_BxHxTxS, v_BxHxSxK, precision):
    """The weighted values, back in (B, T, H, K)."""
    return jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS, v_BxHxSxK, precision=precision).transpose(0, 2, 1, 3)


def post_normalised(dtype) -> bool:
    """Whether attention in compute `dtype` divides by the softmax's sum after weighting the values
    (`_attend`): in float32, whose probabilities are never rounded. A bf16/fp16 model weights its values
    with probabilities rounded to bf16/fp16, as PyTorch does."""
    return jnp.dtype(dtype) == jnp.float32


def _attend(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xTxS, dtype, precision):
    """(values (B, T, H, K), probabilities (B, H, T, S)) of softmax(q k^T + bias) v, the division by
    the softmax's sum moved after the product with the values: (e v) / sum(e), e = exp(scores - max).
    The same function as `_values(_probs(...))`, within float32 rounding (max |err| / RMS against
    float64 as PyTorch's: 7.7e-6 for both, BART-base shapes), dividing T x K values instead of T x S
    probabilities and never writing the probabilities out: on a 2-core AVX2 EPYC an attention of
    4 x 12 x 256 x 64 took 10.5 ms instead of 18.4 (PyTorch's SDPA 10.7), and whole BART-base / -large
    QA forwards of 4 x 256 tokens 0.96 / 0.93 of the time (`python -m benchmarks.attention_bench`). Not in
    `_blocked_attention`'s blocks: a 1 x 1024 forward took 1.06x as long that way. Derivatives are the
    probabilities-first ones (`_post_normalised`'s JVP), and the probabilities (returned for
    output_attentions) are `_probs`'s, which XLA drops when nobody reads them."""
    scores = _scores(q_BxHxTxK, k_BxHxSxK, bias_Bx1xTxS, precision)
    values = _post_normalised(scores, v_BxHxSxK, precision)
    return values.astype(dtype).transpose(0, 2, 1, 3), jax.nn.softmax(scores, axis=-1).astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _post_normalised(scores_BxHxTxS, v_BxHxSxK, precision):
    """softmax(scores) v as (e v) / sum(e)."""
    e = jnp.exp(scores_BxHxTxS - jnp.max(scores_BxHxTxS, axis=-1, keepdims=True))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.einsum("bhts,bhsk->bhtk", e, v_BxHxSxK, precision=precision) / total


@_post_normalised.defjvp
def _post_normalised_jvp(precision, primals, tangents):
    # softmax-then-values' derivative (jax.nn.softmax's rule, then the product's): measured in the demo's
    # gradients and AdamW steps, differentiating the post-normalised form took some float32 tensors
    # from 0.1 to 0.5 of their tolerance
    scores, v = primals
    d_scores, d_v = tangents
    p = jax.nn.softmax(scores, axis=-1)
    d_p = p * (d_scores - jnp.sum(p * d_scores, axis=-1, keepdims=True))
    d_out = (jnp.einsum("bhts,bhsk->bhtk", d_p, v, precision=precision)
             + jnp.einsum("bhts,bhsk->bhtk", p, d_v, precision=precision))
    return _post_normalised(scores, v, precision), d_out


def _blocked_attention(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, bias_Bx1xTxS, dtype, precision):
    """(values (B, T, H, K), probabilities (B, H, T, S)) as `_probs` and `_values` give them, computed
    QUERY_BLOCK queries at a time in a `lax.map`. Each query's row is the same computation as unblocked;
    the queries are padded up to whole blocks (zeros, bias 0) and the padding is cut off again. XLA
    drops the stacked probabilities when nobody reads them (output_attentions=False)."""
    b, h, t, k = q_BxHxTxK.shape
    s = k_BxHxSxK.shape[2]
    n = -(-t // QUERY_BLOCK)
    pad = n * QUERY_BLOCK - t
    q = jnp.pad(q_BxHxTxK, ((0, 0), (0, 0), (0, pad), (0, 0)))
    bias = jnp.pad(jnp.broadcast_to(bias_Bx1xTxS, (b, 1, t, s)), ((0, 0), (0, 0), (0, pad), (0, 0)))
    q_blocks = q.reshape(b, h, n, QUERY_BLOCK, k).transpose(2, 0, 1, 3, 4)
    bias_blocks = bias.reshape(b, 1, n, QUERY_BLOCK, s).transpose(2, 0, 1, 3, 4)

    def block(args):   # probabilities first in every dtype: post-normalised blocks measured slower
        probs = _probs(args[0], k_BxHxSxK, args[1], dtype, precision)
        return _values(probs, v_BxHxSxK, precision), probs

    values, probs = jax.lax.map(block, (q_blocks, bias_blocks))   # (N, B, QB, H, K), (N, B, H, QB, S)
    values = values.transpose(1, 0, 2, 3, 4).reshape(b, n * QUERY_BLOCK, h, k)[:, :t]
    probs = probs.transpose(1, 2, 0, 3, 4).reshape(b, h, n * QUERY_BLOCK, s)[:, :, :t]
    return values, probs


class BartModuleBase(nn.Module):
    """The fields every BART layer shares: the config, compute dtype, storage dtype, matmul precision,
    gradient checkpointing (each encoder/decoder layer under `nn.remat` with `remat_policy`), and
    whether layer stacks run as one `lax.scan` (`scan_layers`: True without a cache, "all" in decoding steps
    too; flax_bart.layer_scan)."""

    config: BartConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None
    gradient_checkpointing: bool = False
    remat_policy: Any = None
    scan_layers: bool | str = False   # False, True or "all" (flax_bart.layer_scan)
    attention_impl: str = "auto"   # flax_bart.attention_kernels

    def _child_kw(self) -> dict:
        """The shared fields, to build a child BartModuleBase with."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                    gradient_checkpointing=self.gradient_checkpointing, remat_policy=self.remat_policy,
                    scan_layers=self.scan_layers, attention_impl=self.attention_impl)

    def _attention_kw(self) -> dict:
        """The fields a BartAttention of this layer takes."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                    attention_impl=self.attention_impl)


class _PostLNLayer(BartModuleBase):
    """What encoder and decoder layers share: dropout and the post-LN feed-forward block."""

    def _setup_ffn(self, ffn_dim: int):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.fc1 = _dense(c, ffn_dim, self.dtype, self.param_dtype, self.precision, "fc1")
        self.fc2 = _dense(c, c.d_model, self.dtype, self.param_dtype, self.precision, "fc2")
        self.final_layer_norm = _layer_norm(name="final_layer_norm", **kw)
        self.dropout = nn.Dropout(rate=c.dropout)
        self.act_dropout = nn.Dropout(rate=c.activation_dropout)
        self.act = get_activation(c.activation_function)

    def _ffn(self, h_BxTxD, deterministic: bool):
        h = self.act_dropout(self.act(self.fc1(h_BxTxD)), deterministic=deterministic)
        h = self.dropout(self.fc2(h), deterministic=deterministic)
        return self.final_layer_norm(h_BxTxD + h)


class BartEncoderLayer(_PostLNLayer):
    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.self_attn = BartAttention(c, c.encoder_attention_heads, **self._attention_kw())
        self.self_attn_layer_norm = _layer_norm(name="self_attn_layer_norm", **kw)
        self._setup_ffn(c.encoder_ffn_dim)

    def __call__(self, h_BxTxD, mask_BxT, deterministic: bool = True):
        residual = h_BxTxD
        h, attn = self.self_attn(h_BxTxD, key_mask_BxS=mask_BxT, deterministic=deterministic)
        h = self.self_attn_layer_norm(residual + self.dropout(h, deterministic=deterministic))
        h = self._ffn(h, deterministic)
        if h.dtype == jnp.float16:
            # PyTorch BART: once anything overflowed, clamp to finite (NaN stays NaN).
            bound = jnp.finfo(jnp.float16).max - 1000
            h = jnp.where(jnp.any(~jnp.isfinite(h)), jnp.clip(h, -bound, bound), h)
        return h, attn


class BartDecoderLayer(_PostLNLayer):
    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads = c.decoder_attention_heads
        self.self_attn = BartAttention(c, heads, causal=True, **self._attention_kw())
        self.self_attn_layer_norm = _layer_norm(name="self_attn_layer_norm", **kw)
        self.encoder_attn = BartAttention(c, heads, is_cross=True, **self._attention_kw())
        self.encoder_attn_layer_norm = _layer_norm(name="encoder_attn_layer_norm", **kw)
        self._setup_ffn(c.decoder_ffn_dim)

    def __call__(self, h_BxTxD, mask_BxS, enc_BxSxD, enc_mask_BxS, init_cache=False, cache_length=0,
                 deterministic: bool = True):
        if init_cache and not self.is_initializing():
            # Creating a cache (outside `init`) reads no hidden state: the self-attention cache starts
            # empty and the cross-attention K/V come from the encoder's states. Only those are traced
            # (a tenth of the decoder), and `h_BxTxD` passes through unchanged.
            self.self_attn(h_BxTxD, init_cache=True, cache_length=cache_length)
            if enc_BxSxD is not None:
                self.encoder_attn(h_BxTxD, kv_BxSxD=enc_BxSxD, init_cache=True)
            return h_BxTxD, None, None
        residual = h_BxTxD
        h, self_attn = self.self_attn(
            h_BxTxD, key_mask_BxS=mask_BxS, init_cache=init_cache, cache_length=cache_length,
            deterministic=deterministic,
        )
        h = self.self_attn_layer_norm(residual + self.dropout(h, deterministic=deterministic))
        cross_attn = None
        if enc_BxSxD is not None:
            residual = h
            h, cross_attn = self.encoder_attn(
                h, kv_BxSxD=enc_BxSxD, key_mask_BxS=enc_mask_BxS, init_cache=init_cache,
                deterministic=deterministic,
            )
            h = self.encoder_attn_layer_norm(residual + self.dropout(h, deterministic=deterministic))
        return self._ffn(h, deterministic), self_attn, cross_attn


def _layerdrop(module: nn.Module, rate: float, deterministic: bool, before, after):
    """LayerDrop (train only): keep `before` with probability `rate`, like PyTorch's per-layer coin."""
    if deterministic or rate <= 0.0:
        return after
    skip = jax.random.uniform(module.make_rng("dropout")) < rate
    return jnp.where(skip, before, after)


def _embed(module, embed_tokens, embed_positions, ids_BxT, positions_BxT):
    c = module.config
    scale = c.d_model**0.5 if c.scale_embedding else 1.0
    h = embed_tokens(ids_BxT).astype(module.dtype) * jnp.asarray(scale, module.dtype)
    h = h + embed_positions(positions_BxT + POSITION_OFFSET).astype(module.dtype)
    return module.layernorm_embedding(h)


class _LayerCollection(BartModuleBase):
    """Layers "0" ... "n-1" of one class (under `nn.remat` with gradient checkpointing)."""

    def _layer_kw(self) -> dict:
        return self._attention_kw()

    def _build_layers(self, cls, n: int, static_names):
        self.layer_class = maybe_remat(cls, self.gradient_checkpointing, self.remat_policy, static_names)
        self.layers = [self.layer_class(self.config, name=str(i), **self._layer_kw()) for i in range(n)]

    def _scan(self, h, layer_args, layerdrop, deterministic, output_hidden_states, output_attentions,
              cached=False):
        """The layers as one `lax.scan` (flax_bart.layer_scan): (h, per-layer inputs, per-layer attentions).
        `cached`: a decoding step; each layer's updated cache is written back under its own name."""
        unbound = self.layer_class(self.config, parent=None, **self._layer_kw())
        h, states, attns, caches = scan_layers(self, unbound, len(self.layers), h, layer_args, layerdrop,
                                               deterministic, output_hidden_states, output_attentions, cached)
        for i, cache in enumerate(caches or ()):   # the 4.x layout: cache/.../layers/<i>/...
            self.put_variable("cache", str(i), cache)
        return h, (states + (h,) if output_hidden_states else None), attns


class BartEncoderLayerCollection(_LayerCollection):
    def setup(self):
        self._build_layers(BartEncoderLayer, self.config.encoder_layers, ("deterministic",))

    def __call__(self, h, mask_BxT, output_attentions=False, output_hidden_states=False, deterministic=True):
        if can_scan(self, len(self.layers), cached=False):
            h, states, attns = self._scan(h, (mask_BxT,), self.config.encoder_layerdrop, deterministic,
                                          output_hidden_states, output_attentions)
            return h, states, (tuple(a[0] for a in attns) if output_attentions else None)
        states, attns = (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (h,)
            out, attn = layer(h, mask_BxT, deterministic)  # positional: static under nn.remat
            h = _layerdrop(self, self.config.encoder_layerdrop, deterministic, h, out)
            attns += (attn,)
        if output_hidden_states:
            states += (h,)
        return h, (states if output_hidden_states else None), (attns if output_attentions else None)


class BartDecoderLayerCollection(_LayerCollection):
    def setup(self):
        self._build_layers(BartDecoderLayer, self.config.decoder_layers,
                           ("init_cache", "cache_length", "deterministic"))

    def __call__(self, h, mask_BxS, enc_BxSxD, enc_mask_BxS, init_cache=False, cache_length=0,
                 output_attentions=False, output_hidden_states=False, deterministic=True):
        cached = init_cache or bool(self.variables.get("cache"))
        step = not init_cache and cached and can_scan_cached(self, len(self.layers))
        if step or can_scan(self, len(self.layers), cached):
            h, states, attns = self._scan(h, (mask_BxS, enc_BxSxD, enc_mask_BxS, False, cache_length),
                                          self.config.decoder_layerdrop, deterministic, output_hidden_states,
                                          output_attentions, cached=step)
            if not output_attentions:
                return h, states, None, None
            cross = tuple(a[1] for a in attns) if enc_BxSxD is not None else None
            return h, states, tuple(a[0] for a in attns), cross
        states, attns, cross = (), (), ()
        for layer in self.layers:
            if output_hidden_states:
                states += (h,)
            out, attn, cross_attn = layer(  # positional: the flags are static under nn.remat
                h, mask_BxS, enc_BxSxD, enc_mask_BxS, init_cache, cache_length, deterministic,
            )
            h = _layerdrop(self, self.config.decoder_layerdrop, deterministic, h, out)
            attns += (attn,)
            cross += (cross_attn,)
        if output_hidden_states:
            states += (h,)
        cross = cross if (output_attentions and enc_BxSxD is not None) else None
        return h, (states if output_hidden_states else None), (attns if output_attentions else None), cross


class BartEncoder(BartModuleBase):
    embed_tokens: Optional[Embed] = None

    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.tokens = self.embed_tokens
        if self.tokens is None:  # separate input embeddings (transformers v5, untied)
            self.tokens = Embed(c.vocab_size, c.d_model, c, name="embed_tokens", **kw)
        self.embed_positions = Embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model, c, **kw)
        self.layers = BartEncoderLayerCollection(c, **self._child_kw())
        self.layernorm_embedding = _layer_norm(name="layernorm_embedding", **kw)
        self.dropout = nn.Dropout(rate=c.dropout)

    def __call__(self, input_ids, attention_mask, position_ids, output_attentions=False,
                 output_hidden_states=False, return_dict=True, deterministic=True):
        """4.x's FlaxBartEncoder call: a FlaxBaseModelOutput, or with `return_dict=False` its fields that
        are not None as a tuple."""
        h = _embed(self, self.tokens, self.embed_positions, input_ids, position_ids)
        h = self.dropout(h, deterministic=deterministic)
        h, states, attns = self.layers(h, attention_mask, output_attentions, output_hidden_states, deterministic)
        return O.returned(O.FlaxBaseModelOutput(last_hidden_state=h, hidden_states=states, attentions=attns), return_dict)


class BartDecoder(BartModuleBase):
    """The decoder stack. Owns `embed_tokens` itself when none is shared (ForCausalLM, or separate
    input embeddings)."""

    embed_tokens: Optional[Embed] = None

    def setup(self):
        c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.tokens = self.embed_tokens
        if self.tokens is None:
            self.tokens = Embed(c.vocab_size, c.d_model, c, name="embed_tokens", **kw)
        self.embed_positions = Embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model, c, **kw)
        self.layers = BartDecoderLayerCollection(c, **self._child_kw())
        self.layernorm_embedding = _layer_norm(name="layernorm_embedding", **kw)
        self.dropout = nn.Dropout(rate=c.dropout)

    def __call__(self, input_ids, attention_mask, position_ids, encoder_hidden_states=None,
                 encoder_attention_mask=None, init_cache=False, output_attentions=False,
                 output_hidden_states=False, return_dict=True, deterministic=True, cache_length=None):
        """4.x's FlaxBartDecoder call (a FlaxBaseModelOutputWithPastAndCrossAttentions, or with
        `return_dict=False` its fields that are not None as a tuple). `cache_length`: the self-attention
        cache's slots with `init_cache`; None: the input's length (4.x's init_cache passed `max_length` ids)."""
        if cache_length is None:
            cache_length = input_ids.shape[1]
        h = _embed(self, self.tokens, self.embed_positions, input_ids, position_ids)
        h = self.dropout(h, deterministic=deterministic)
        h, states, attns, cross = self.layers(
            h, attention_mask, encoder_hidden_states, encoder_attention_mask, init_cache, cache_length,
            output_attentions, output_hidden_states, deterministic,
        )
        return O.returned(O.FlaxBaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=h, hidden_states=states, attentions=attns, cross_attentions=cross), return_dict)
