"""The compiled decoding programs behind `generate`: greedy, sampling and beam search.

One `jax.jit` program per (shapes, static settings) does everything: encode (seq2seq), create the
cache with the cross-attention K/V computed once, prefill a decoder-only prompt, and run a
`lax.while_loop` whose body feeds one token per row through the cached decoder and picks the next.
The self-attention cache is a fixed-size loop carry, so XLA updates it in place step after step;
beam search reorders only it (a batch item's beams share their cross-attention K/V). The
cross-attention K/V stay outside the carry, in the layouts the batched dots read directly, and the
last-position logits come from a memory-friendly LM-head reduction (see `_lm_head`): a BART-base
decoding step is bound by reading ~350 MB of weights.

Buffers are in "slots": the decoder prompt is left-padded to `prompt_slots` (a bucket), so one
program serves every prompt length in the bucket. A token's position is `slot - first_slot`,
which is what PyTorch BART uses (`past_length + arange`); slots before `first_slot` are masked.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flax import traverse_util
from flax.core import unfreeze

from flax_bart.activations import LOW_PRECISION, accumulator
from flax_bart.chunked_dot import is_highest, matmul_transposed
from flax_bart.modules import TRANSPOSED
from flax_bart.logits_process import ProcessorSpec, StepContext, process, warp

Array = Any
BIG_NEG = -1.0e9  # PyTorch's beam-search "very large negative" (not -inf: sums must stay ordered)


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """Everything static about one compiled program (hashable: the compile key)."""

    mode: str  # "greedy" | "sample" | "beam" | "beam_sample"
    seq2seq: bool
    batch: int
    rows_per_item: int  # beams for beam search; return sequences for greedy/sampling
    src_len: int  # bucketed encoder length (0 for decoder-only)
    prompt_slots: int  # P: decoder prompt bucket
    new_tokens: int  # N: most tokens this program can generate
    processors: ProcessorSpec
    eos_token_ids: tuple[int, ...]
    pad_token_id: int  # what finished rows get (greedy/sampling)
    fill_token_id: int  # beam buffers' fill value
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    output_scores: bool = False


# ---- the model, through module.apply ----------------------------------------------------------
def _positions(rows: int, first, count: int):
    return jnp.broadcast_to(jnp.maximum(jnp.arange(count, dtype=jnp.int32)[None] + first, 0), (rows, count))


def _encode(module, params, ids_BxS, mask_BxS):
    b, s = ids_BxS.shape
    out = module.apply({"params": params}, input_ids=ids_BxS, attention_mask=mask_BxS,
                       position_ids=_positions(b, 0, s), method="encode")
    return out.last_hidden_state


def _init_cache(module, params, seq2seq: bool, rows: int, cache_len: int, enc=None, enc_mask=None):
    """A zero self-attention cache of `cache_len` slots; for seq2seq also the cross K/V of `enc`.
    (The decoder pass on the dummy token is dead code that XLA removes.)"""
    ids = jnp.zeros((rows, 1), jnp.int32)
    if seq2seq:
        _, state = module.apply({"params": params}, decoder_input_ids=ids, encoder_hidden_states=enc,
                                encoder_attention_mask=enc_mask, decoder_attention_mask=None,
                                decoder_position_ids=ids, init_cache=True, cache_length=cache_len,
                                method="decode", mutable=["cache"])
    else:
        _, state = module.apply({"params": params}, input_ids=ids, attention_mask=None, position_ids=ids,
                                encoder_hidden_states=None, encoder_attention_mask=None, init_cache=True,
                                cache_length=cache_len, mutable=["cache"])
    return state["cache"]


def _seq2seq_hidden(mod, **kwargs):
    return mod.model.decode(**kwargs).last_hidden_state


def _causal_hidden(mod, **kwargs):
    return mod.model(**kwargs)[0]


def _feed(module, params, cache, seq2seq: bool, ids_RxT, pos_RxT, mask_RxC, enc=None, enc_mask=None,
          transposed=None):
    """Append `ids` to the cache; returns (decoder state of the last position (R, D), cache)."""
    variables = {"params": params, "cache": cache}
    if transposed:
        variables[TRANSPOSED] = transposed
    if seq2seq:
        h, state = module.apply(variables, decoder_input_ids=ids_RxT, encoder_hidden_states=enc,
                                encoder_attention_mask=enc_mask, decoder_attention_mask=mask_RxC,
                                decoder_position_ids=pos_RxT, method=_seq2seq_hidden, mutable=["cache"])
    else:
        h, state = module.apply(variables, input_ids=ids_RxT, attention_mask=mask_RxC, position_ids=pos_RxT,
                                method=_causal_hidden, mutable=["cache"])
    return h[:, -1], state["cache"]


# Decoding steps of at most this many rows, generating at least this many tokens, use transposed copies
# of the decoder's kernels (`_transposed_kernels`).
TRANSPOSE_MAX_ROWS = 64
TRANSPOSE_MIN_TOKENS = 8


def _transposed_kernels(module, params, rows: int, new_tokens: int, seq2seq: bool = True) -> dict | None:
    """(out, in) copies of the kernels a decoding step multiplies with (`modules.TRANSPOSED`), made by a
    program of their own before the decoding program runs, or None where they do not pay.

    XLA:CPU's float32 dot of a few rows with a (in, out) kernel streams it at ~10 GB/s; with a (out, in)
    kernel (`chunked_dot.matmul_transposed`) it ran 1.3-1.4x faster for 1-2 and 32 rows, 2x for 4-16,
    1.2x for 64 (8 kernels of 768 x 3072, 2-core AVX2 EPYC). A BART-base step reads ~200 MB of decoder
    kernels. The copies cost one transpose of them per call (about 50 ms for BART-base; made inside the
    decoding program, beside its encoder, they cost it about 150 ms) and their memory for the call's
    duration, so they are made for float32 on a CPU, with at most TRANSPOSE_MAX_ROWS rows and at least
    TRANSPOSE_MIN_TOKENS new tokens. Not with `precision="highest"` (its blocked sums,
    `flax_bart.chunked_dot`, stay as they are) and not with the decoding step scanned
    (`scan_layers="all"`), whose layers pick their weights inside the scan. The cross-attention's key and
    value projections are left out (the loop reads their output from the cache), and a decoder-only
    model's cross-attention altogether."""
    if not transposes_loop_kernels(module, rows, new_tokens):
        return None
    return _transpose_loop_kernels(params, seq2seq) or None


def transposes_loop_kernels(module, rows: int, new_tokens: int) -> bool:
    """Whether a decoding loop of `rows` rows and `new_tokens` tokens gets (out, in) kernel copies
    (`_transposed_kernels`' rule), decided without making them."""
    return (jax.default_backend() == "cpu" and jnp.dtype(module.dtype) == jnp.float32 and rows <= TRANSPOSE_MAX_ROWS
            and new_tokens >= TRANSPOSE_MIN_TOKENS and not is_highest(module.precision)
            and getattr(module, "scan_layers", False) != "all")


@functools.partial(jax.jit, static_argnums=1)
def _transpose_loop_kernels(params, seq2seq: bool) -> dict:
    picked = {}
    for path, leaf in traverse_util.flatten_dict(unfreeze(params)).items():
        in_decoder = "decoder" in path and "layers" in path
        not_in_loop = "encoder_attn" in path and (path[-2] in ("k_proj", "v_proj") or not seq2seq)
        if in_decoder and not not_in_loop and path[-1] == "kernel" and jnp.ndim(leaf) == 2:
            picked[path] = leaf.T
    return traverse_util.unflatten_dict(picked)


def loop_kernels(module, plan: "SearchPlan", params) -> dict | None:
    """The decoding program's `transposed` argument for `plan` (`_transposed_kernels`)."""
    return _transposed_kernels(module, params, plan.batch * plan.rows_per_item, plan.new_tokens, plan.seq2seq)


def _lm_head(module, params, seq2seq: bool):
    """fn(h (R, D)) -> float32 logits (R, V): the heads' LM projection (tied embedding or `lm_head`,
    plus `final_logits_bias` for seq2seq), read from the 4.x parameter tree.

    On a CPU it avoids XLA's dot of the rows with the (V, D) table, which streamed the table at about half
    the memory's speed for 2-32 rows (memory bound). In float32 it forms the logits as (V, R)
    (`chunked_dot.matmul_transposed`): BART-base's table, 4 rows, 7.8 ms against 11.0 for the broadcast
    multiply-reduce it replaces and 8.6 for a plain sum of the table (2-core AVX2 EPYC), with the same
    errors against float64. In float16, for 2+ rows, a broadcast multiply-reduce over the table. Neither
    in bfloat16: there the product accumulating in float32 runs on the CPU's bf16 units where it has
    them, and the multiply-reduce was 3-16x slower (2-32 rows, BART-base table, Xeon with AMX: 4.1-8.0 ms
    against 9.1-131 ms)."""
    c, dtype = module.config, module.dtype
    if c.tie_word_embeddings:
        table_VxD = params["model"]["shared"]["embedding"] if seq2seq else \
            params["model"]["decoder"]["embed_tokens"]["embedding"]
    else:
        table_VxD = params["lm_head"]["kernel"].T  # transposed once, before the loop
    table_VxD = jnp.asarray(table_VxD).astype(dtype)
    bias_1xV = params["final_logits_bias"].astype(dtype) if seq2seq else None

    def logits(h_RxD):
        h_RxD = h_RxD.astype(dtype)
        cpu = jax.default_backend() == "cpu"
        if cpu and jnp.dtype(dtype) == jnp.float32:
            out = matmul_transposed(h_RxD, table_VxD, precision=module.precision)
        elif h_RxD.shape[0] >= 2 and cpu and jnp.dtype(dtype) == jnp.float16:
            # XLA:CPU has no vector float16 arithmetic: float16 products ran element by element
            # (`python -m benchmarks.dtype_bench`, BART-base greedy, 2 rows, 16 tokens: 14.8 s, now
            # 0.74 s). float32 products of float16 values are exact, so this is PyTorch's half matmul:
            # exact products, float32 sums.
            table, rows = table_VxD[None].astype(jnp.float32), h_RxD[:, None, :].astype(jnp.float32)
            out = jnp.sum(table * rows, axis=-1, dtype=jnp.float32).astype(dtype)
        else:
            out = jnp.einsum("rd,vd->rv", h_RxD, table_VxD, precision=module.precision,
                             preferred_element_type=accumulator(dtype)).astype(dtype)
        if bias_1xV is not None:
            out = out + bias_1xV
        return out.astype(jnp.float32)

    return logits


# Cross-attention K/V (B, S, H, hd) are fixed for the whole loop. They are kept outside the loop
# carry in the layouts XLA's batched attention dots read (keys (B, H, hd, S), values (B, H, S, hd))
# and handed to the model as transposed views, which XLA folds into the dots. (Kept as they are,
# every step re-transposed them: ~6 MB per layer, a fifth of a BART-base step's time. An
# optimization barrier per step stops XLA from hoisting the views out of the loop, which would
# bring that copy back.)
_CROSS_LAYOUT = {"cached_key": (0, 2, 3, 1), "cached_value": (0, 2, 1, 3)}


def _split_cross(cache, widen: bool = False):
    """(self-attention part, cross-attention part in the dots' layouts) of a cache tree. `widen`: the
    cross-attention part in float32 (bf16/fp16 values, exactly): XLA:CPU computes the attention products
    of a bf16/fp16 model in float32 and, given bf16 K/V, widened all of them at every decoding step."""
    flat = traverse_util.flatten_dict(unfreeze(cache))
    own = {k: v for k, v in flat.items() if "encoder_attn" not in k}
    cross = {k: jnp.transpose(v, _CROSS_LAYOUT[k[-1]]) for k, v in flat.items() if "encoder_attn" in k}
    if widen:
        cross = {k: v.astype(jnp.float32) for k, v in cross.items()}
    return traverse_util.unflatten_dict(own), cross


def _join_cross(own, cross):
    flat = traverse_util.flatten_dict(unfreeze(own))
    for k, v in cross.items():
        flat[k] = jnp.transpose(v, np.argsort(_CROSS_LAYOUT[k[-1]]))
    return traverse_util.unflatten_dict(flat)


def _map_cache(cache, fn, self_attn_only: bool):
    def visit(path, leaf):
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        if leaf.ndim == 0 or (self_attn_only and "self_attn" not in names):
            return leaf
        return fn(leaf)
    return jax.tree_util.tree_map_with_path(visit, cache)


# ---- the program ------------------------------------------------------------------------------
def make_program(module, plan: SearchPlan, on_trace: Callable[[], None], compiler_options: dict | None = None):
    """A jitted fn(params, arrays, scalars, prng_key, transposed=None) -> dict of device arrays: `sequences`
    (rows, prompt_slots + new_tokens) token slots, `steps` run, `scores` (steps, rows, vocab) when
    output_scores; beam search adds `sequences_scores` and `generated` (longest returned length).

    arrays: `prompt`/`prompt_mask` (batch, prompt_slots), left-padded; seq2seq also `input_ids`/
    `attention_mask` (batch, src_len). scalars: the traced lengths and floats of `StepContext`.
    transposed: `loop_kernels(module, plan, params)`, (out, in) copies of the decoder's kernels for the loop."""

    def program(params, arrays, scalars, prng_key, transposed=None):
        on_trace()  # runs once per trace: what the no-recompile test counts
        b, e, p, n = plan.batch, plan.rows_per_item, plan.prompt_slots, plan.new_tokens
        r = b * e
        cache_len = p + n - 1  # slots ever fed: the prompt and all but the last generated token
        prompt_len = scalars["prompt_len"]
        first_slot = p - prompt_len
        prompt_RxP = jnp.repeat(arrays["prompt"], e, axis=0)
        prompt_mask_RxP = jnp.repeat(arrays["prompt_mask"], e, axis=0)
        dec_mask_RxC = jnp.concatenate([prompt_mask_RxP, jnp.ones((r, n - 1), jnp.int32)], axis=1)
        enc = enc_mask = None
        cross = {}
        if plan.seq2seq:
            enc_BxSxD = _encode(module, params, arrays["input_ids"], arrays["attention_mask"])
            cache = _init_cache(module, params, True, b, cache_len, enc_BxSxD, arrays["attention_mask"])
            cache = _map_cache(cache, lambda x: jnp.repeat(x, e, axis=0), self_attn_only=False)
            enc, enc_mask = jnp.repeat(enc_BxSxD, e, axis=0), jnp.repeat(arrays["attention_mask"], e, axis=0)
            if p > 1:  # a decoder prompt (decoder_input_ids): prefill all its slots but the last
                _, cache = _feed(module, params, cache, True, prompt_RxP[:, :p - 1],
                                 _positions(r, -first_slot, p - 1), dec_mask_RxC, enc, enc_mask)
            widen = jax.default_backend() == "cpu" and jnp.dtype(module.dtype) in LOW_PRECISION
            cache, cross = _split_cross(cache, widen)
        else:
            cache = _init_cache(module, params, False, r, cache_len)
            if p > 1:  # prefill all prompt slots but the last (its logits are dead code)
                _, cache = _feed(module, params, cache, False, prompt_RxP[:, :p - 1],
                                 _positions(r, -first_slot, p - 1), dec_mask_RxC)

        lm_head = _lm_head(module, params, plan.seq2seq)

        def decode(cache, s, last_R):
            """Feed the token in slot p-1+s (the last prompt token when s == 0); float32 logits (R, V)."""
            pos = _positions(r, p - 1 + s - first_slot, 1)
            # the barrier ties the cross K/V to this step, so XLA does not hoist the view out of the loop
            cross_here, _ = jax.lax.optimization_barrier((cross, s))
            h, cache = _feed(module, params, _join_cross(cache, cross_here), plan.seq2seq, last_R[:, None], pos,
                             dec_mask_RxC, enc, enc_mask, transposed)
            return lm_head(h), _split_cross(cache)[0]

        penalty_from = jnp.maximum(jnp.argmax(prompt_mask_RxP > 0, axis=1).astype(jnp.int32), first_slot)

        def context(s):
            return StepContext(
                cur_len=prompt_len + s, next_slot=p + s, first_slot=first_slot, penalty_from=penalty_from,
                max_length=scalars["max_length"], min_length=scalars["min_length"],
                begin_index=scalars["begin_index"], repetition_penalty=scalars["repetition_penalty"],
                temperature=scalars["temperature"], top_p_cut=scalars["top_p_cut"],
            )

        tokens_RxL = jnp.concatenate([prompt_RxP, jnp.full((r, n), plan.fill_token_id, jnp.int32)], axis=1)
        scores_NxRxV = jnp.zeros((n if plan.output_scores else 0, r, plan.processors.vocab_size), jnp.float32)
        common = dict(s=jnp.zeros((), jnp.int32), cache=cache, last=prompt_RxP[:, -1], scores=scores_NxRxV)
        if plan.mode in ("greedy", "sample"):
            return _greedy_loop(plan, decode, context, prng_key, dict(common, tokens=tokens_RxL), scalars)
        return _beam_loop(plan, decode, context, prng_key, common, tokens_RxL, scalars)

    return jax.jit(program, compiler_options=compiler_options)


def _run_loop(plan: SearchPlan, decode, step, more, state, max_length, prompt_len):
    """while more(st): st = step(st, logits of a decoder pass). With a forced <eos> at max_length - 1
    the last step's scores do not depend on the logits (all but <eos> are -inf): the loop stops
    before it and that step runs after the loop on zero logits, without a decoder pass."""
    n = plan.new_tokens
    forced_last = bool(plan.processors.forced_eos_token_ids)

    def at_forced_step(st):
        return forced_last & (prompt_len + st["s"] == max_length - 1)

    def cond(st):
        return more(st) & (st["s"] < n) & ~at_forced_step(st)

    def body(st):
        logits_RxV, cache = decode(st["cache"], st["s"], st["last"])
        return step(dict(st, cache=cache), logits_RxV)

    state = jax.lax.while_loop(cond, body, state)
    if not forced_last:
        return state
    state.pop("cache")
    pending = more(state) & (state["s"] < n) & at_forced_step(state)
    zeros = jnp.zeros((state["last"].shape[0], plan.processors.vocab_size), jnp.float32)
    return jax.lax.cond(pending, lambda st: step(st, zeros), lambda st: st, state)


def first_argmax(scores_RxV):
    """`jnp.argmax(scores, axis=-1)` as int32, the same index in every case (the first maximum; the first
    NaN where a row has one), computed as the row's maximum, then the first index that holds it.

    XLA:CPU's argmax is one reduction over (value, index) pairs, which it does not vectorise: 0.47 ms of a
    BART-base greedy step (4 rows x 50265, 2-core Zen 4 EPYC, `python -m benchmarks.decode_profile`);
    with the two reductions here the step's whole bookkeeping (processors, next token, state) takes
    0.3-0.46 ms. Timed alone on those scores, 0.93 against 0.18 ms a call."""
    v = scores_RxV.shape[-1]
    top_Rx1 = jnp.max(scores_RxV, axis=-1, keepdims=True)
    hit_RxV = (scores_RxV == top_Rx1) | (jnp.isnan(scores_RxV) & jnp.isnan(top_Rx1))
    return jnp.min(jnp.where(hit_RxV, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def _greedy_loop(plan: SearchPlan, decode, context, prng_key, state, scalars):
    p, spec = plan.prompt_slots, plan.processors
    eos = jnp.asarray(np.array(plan.eos_token_ids or (-1,), np.int32))
    state["unfinished"] = jnp.ones((state["tokens"].shape[0],), bool)
    if plan.mode == "sample":
        # 4.x Flax's key schedule: each step splits the key it got and samples with the first half,
        # so a given prng_key draws the same tokens as it did with 4.x
        state["key"] = prng_key

    def step(st, logits_RxV):
        s = st["s"]
        ctx = context(s)
        scores = process(spec, logits_RxV, st["tokens"], ctx)
        extra = {}
        if plan.mode == "sample":
            scores = warp(spec, scores, ctx)
            use, extra["key"] = jax.random.split(st["key"])
            nxt = jax.random.categorical(use, scores, axis=-1).astype(jnp.int32)
        else:
            nxt = first_argmax(scores)
        if plan.eos_token_ids:
            nxt = jnp.where(st["unfinished"], nxt, plan.pad_token_id)
        done = (ctx.cur_len + 1 >= ctx.max_length) | jnp.isin(nxt, eos)
        out = dict(st, s=s + 1, last=nxt, unfinished=st["unfinished"] & ~done,
                   tokens=jax.lax.dynamic_update_slice_in_dim(st["tokens"], nxt[:, None], p + s, axis=1), **extra)
        if plan.output_scores:
            out["scores"] = jax.lax.dynamic_update_index_in_dim(st["scores"], scores, s, axis=0)
        return out

    final = _run_loop(plan, decode, step, lambda st: jnp.any(st["unfinished"]), state,
                      scalars["max_length"], scalars["prompt_len"])
    return dict(sequences=final["tokens"], steps=final["s"], scores=final["scores"])


def _gather(x_BxKx, idx_BxJ):
    idx = idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


def _beam_loop(plan: SearchPlan, decode, context, prng_key, state, tokens_RxL, scalars):
    """PyTorch's vectorised beam search (transformers v5 `_beam_search`), step for step."""
    p, n, spec = plan.prompt_slots, plan.new_tokens, plan.processors
    b, k = plan.batch, plan.rows_per_item
    v = spec.vocab_size
    n_eos = len(plan.eos_token_ids)
    keep = max(2, 1 + n_eos) * k  # candidates per step, so that k unfinished ones always remain
    eos = jnp.asarray(np.array(plan.eos_token_ids or (-1,), np.int32))
    top_k_mask = jnp.asarray(np.arange(keep) < k)
    early = plan.early_stopping
    # (length ** length_penalty) as PyTorch computes it (a Python float), then used in float32.
    denom = jnp.asarray(np.array([float(i) ** plan.length_penalty if i else 1.0 for i in range(n + 1)], np.float32))
    prompt_len, max_length = scalars["prompt_len"], scalars["max_length"]
    length = tokens_RxL.shape[1]
    t = tokens_RxL.reshape(b, k, length)
    state = dict(
        state, run_tok=t, run_score=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, BIG_NEG).astype(jnp.float32), (b, 1)),
            fin_tok=t, fin_score=jnp.full((b, k), BIG_NEG, jnp.float32), fin_len=jnp.zeros((b, k), jnp.int32),
        is_fin=jnp.zeros((b, k), bool), unsat=jnp.ones((b, 1), bool), go=jnp.ones((), bool),
    )

    def step(st, logits_RxV):
        s = st["s"]
        ctx = context(s)
        log_probs = jax.nn.log_softmax(logits_RxV, axis=-1)
        log_probs = process(spec, log_probs, st["run_tok"].reshape(b * k, length), ctx)
        if plan.mode == "beam_sample":
            log_probs = warp(spec, log_probs, ctx)
        acc_BxKV = (log_probs.reshape(b, k, v) + st["run_score"][:, :, None]).reshape(b, k * v)
        if plan.mode == "beam_sample":  # sampling without replacement: Gumbel top-k
            noise = jax.random.gumbel(jax.random.fold_in(prng_key, s), acc_BxKV.shape, jnp.float32)
            idx = jax.lax.top_k(acc_BxKV + noise, keep)[1]
            top_lp = jnp.take_along_axis(acc_BxKV, idx, axis=1)
        else:
            top_lp, idx = jax.lax.top_k(acc_BxKV, keep)
        src, tok = idx // v, (idx % v).astype(jnp.int32)
        top_seq = jax.lax.dynamic_update_slice_in_dim(_gather(st["run_tok"], src), tok[:, :, None], p + s, axis=2)
        hits = (ctx.cur_len + 1 >= max_length) | jnp.isin(tok, eos)

        # running beams for the next step: the best k that did not just finish
        run_lp = top_lp + hits.astype(jnp.float32) * BIG_NEG
        nxt = jax.lax.top_k(run_lp, k)[1]
        run_tok, run_score, run_src = _gather(top_seq, nxt), _gather(run_lp, nxt), _gather(src, nxt)

        # finished hypotheses: merge those that just finished (among the top k) into the kept ones
        did = hits & top_k_mask[None]
        fin_lp = top_lp / denom[s + 1]
        fin_lp = fin_lp + (jnp.all(st["is_fin"], axis=-1, keepdims=True) & (early is True)).astype(jnp.float32) * BIG_NEG
        fin_lp = fin_lp + (~st["unsat"]).astype(jnp.float32) * BIG_NEG
        fin_lp = fin_lp + (~did).astype(jnp.float32) * BIG_NEG
        m_score = jnp.concatenate([st["fin_score"], fin_lp], axis=1)
        best = jax.lax.top_k(m_score, k)[1]
        fin_tok = _gather(jnp.concatenate([st["fin_tok"], top_seq], axis=1), best)
        fin_len = _gather(jnp.concatenate([st["fin_len"], jnp.full((b, keep), s + 1, jnp.int32)], axis=1), best)
        is_fin = _gather(jnp.concatenate([st["is_fin"], did], axis=1), best)
        fin_score = _gather(m_score, best)

        # can a running beam still beat the worst kept hypothesis?
        if early == "never" and plan.length_penalty > 0.0:
            best_len = jnp.clip(max_length - prompt_len, 1, n)
        else:
            best_len = s + 1
        best_possible = run_score[:, :1] / denom[best_len]
        worst = jnp.where(is_fin, jnp.min(fin_score, axis=1, keepdims=True), BIG_NEG)
        unsat = st["unsat"] & jnp.any(best_possible > worst, axis=-1, keepdims=True)
        go = jnp.any(unsat) & ~(jnp.all(is_fin) & (early is True)) & ~jnp.all(hits)

        out = dict(st, s=s + 1, last=run_tok[:, :, p + s].reshape(b * k), run_tok=run_tok,
                   run_score=run_score, fin_tok=fin_tok, fin_score=fin_score, fin_len=fin_len, is_fin=is_fin,
                   unsat=unsat, go=go)
        if plan.output_scores:
            out["scores"] = jax.lax.dynamic_update_index_in_dim(st["scores"], log_probs, s, axis=0)
        if "cache" in st:  # the next step continues the chosen beams: reorder their self-attention K/V
            flat_src = (run_src + jnp.arange(b, dtype=run_src.dtype)[:, None] * k).reshape(b * k)
            out["cache"] = _map_cache(st["cache"], lambda x: jnp.take(x, flat_src, axis=0), self_attn_only=True)
        return out

    final = _run_loop(plan, decode, step, lambda st: st["go"], state, max_length, prompt_len)
    nrs = plan.num_return_sequences
    return dict(
        sequences=final["fin_tok"][:, :nrs].reshape(b * nrs, length),
        sequences_scores=final["fin_score"][:, :nrs].reshape(b * nrs),
        generated=jnp.max(final["fin_len"][:, :nrs]),
        steps=final["s"], scores=final["scores"],
    )
