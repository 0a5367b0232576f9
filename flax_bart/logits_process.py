"""Logits processors for `generate`, as pure functions inside the compiled decoding loop.

Semantics and order follow transformers' PyTorch `generate` (v5): repetition penalty, no-repeat
n-grams, bad words, min length, forced BOS, forced EOS, suppressed tokens, suppression at the
first generated position; then, when sampling, temperature, top-k and top-p.

The token history is a fixed-size buffer of "slots" (one row per sequence or beam). The prompt
occupies slots `first_slot .. prompt end`; slots before `first_slot` are bucket padding that
PyTorch never sees, and slots from `next_slot` on are not generated yet. Lengths in
`StepContext` are PyTorch's (`input_ids.shape[-1]`), so every condition compares the same numbers.
What changes the traced program (which processors run, n-gram size, the banned ids) lives in the
hashable `ProcessorSpec`; what may change between calls without recompiling lives in `StepContext`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
NEG_INF = -np.inf


@dataclasses.dataclass(frozen=True)
class ProcessorSpec:
    """The static part of the processor pipeline (hashable: part of the compile key)."""

    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    repetition_penalty: bool = False
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    min_length: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] = ()
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    # warpers: applied only when sampling
    temperature: bool = False
    top_k: int = 0
    top_p: bool = False
    min_tokens_to_keep: int = 1
    # the caller's processors (generate(logits_processor=...)), each held by identity; and the pad id
    # their view of the sequences holds past the tokens so far
    custom: tuple = ()
    pad_token_id: int = 0


class StepContext(NamedTuple):
    """The traced values one step's processors read."""

    cur_len: Array  # int32 (): sequence length so far, prompt included (PyTorch's input_ids.shape[-1])
    next_slot: Array  # int32 (): the buffer slot the token being chosen goes to
    first_slot: Array  # int32 (): the slot of the first prompt token
    penalty_from: Array  # int32 (R,): first slot the repetition penalty looks at, per row
    max_length: Array  # int32 ()
    min_length: Array  # int32 ()
    begin_index: Array  # int32 (): cur_len at which begin_suppress_tokens apply
    repetition_penalty: Array  # float32 ()
    temperature: Array  # float32 ()
    top_p_cut: Array  # float32 (): float32(1 - top_p); sorted cumulative probabilities <= it are dropped


def _id_mask(vocab_size: int, ids) -> np.ndarray:
    mask = np.zeros((vocab_size,), bool)
    mask[list(ids)] = True
    return mask


def _scatter_flags(ids_RxN, keep_RxN, vocab_size: int):
    """(R, V) booleans: True at each id of a row where `keep` holds (others go to a spare column)."""
    rows = jnp.arange(ids_RxN.shape[0])[:, None]
    cols = jnp.where(keep_RxN, ids_RxN, vocab_size)
    flags = jnp.zeros((ids_RxN.shape[0], vocab_size + 1), bool).at[rows, cols].set(True)
    return flags[:, :vocab_size]


def repetition_penalty(scores_RxV, tokens_RxL, ctx: StepContext):
    """Divide positive (multiply negative) scores of every token already in the sequence."""
    slots = jnp.arange(tokens_RxL.shape[1])[None, :]
    seen_slots = (slots >= ctx.penalty_from[:, None]) & (slots < ctx.next_slot)
    seen = _scatter_flags(tokens_RxL, seen_slots, scores_RxV.shape[1])
    p = ctx.repetition_penalty
    penalised = jnp.where(scores_RxV < 0, scores_RxV * p, scores_RxV / p)
    return jnp.where(seen, penalised, scores_RxV)


def no_repeat_ngram(scores_RxV, tokens_RxL, ctx: StepContext, n: int):
    """Ban each token that would complete an n-gram already present in the sequence."""
    r, length = tokens_RxL.shape
    w = length - n + 1
    if w <= 0:
        return scores_RxV
    windows_RxWxN = jnp.stack([tokens_RxL[:, k:k + w] for k in range(n)], axis=-1)
    start = jnp.arange(w)
    # Windows that lie entirely inside the sequence (PyTorch unfolds input_ids of length cur_len).
    valid_W = (start >= ctx.first_slot) & (start <= ctx.next_slot - n)
    if n > 1:
        prefix_from = jnp.maximum(ctx.next_slot - (n - 1), 0)
        prefix_RxN1 = jax.lax.dynamic_slice_in_dim(tokens_RxL, prefix_from, n - 1, axis=1)
        match_RxW = jnp.all(windows_RxWxN[..., :-1] == prefix_RxN1[:, None, :], axis=-1) & valid_W[None]
    else:
        match_RxW = jnp.broadcast_to(valid_W[None], (r, w))
    match_RxW = match_RxW & (ctx.cur_len >= n)
    banned = _scatter_flags(windows_RxWxN[..., -1], match_RxW, scores_RxV.shape[1])
    return jnp.where(banned, NEG_INF, scores_RxV)


def bad_words(scores_RxV, tokens_RxL, ctx: StepContext, words: tuple[tuple[int, ...], ...]):
    """Ban single-token words always, and a longer word's last token when its prefix ends the sequence."""
    v = scores_RxV.shape[1]
    banned = jnp.broadcast_to(jnp.asarray(_id_mask(v, [w[0] for w in words if len(w) == 1])), scores_RxV.shape)
    by_prefix_len: dict[int, list[tuple[int, ...]]] = {}
    for word in words:
        if len(word) > 1:
            by_prefix_len.setdefault(len(word) - 1, []).append(word)
    for plen, group in sorted(by_prefix_len.items()):
        prefixes_GxP = jnp.asarray(np.array([g[:-1] for g in group], np.int32))
        lasts_G = jnp.asarray(np.array([g[-1] for g in group], np.int32))
        tail_RxP = jax.lax.dynamic_slice_in_dim(tokens_RxL, jnp.maximum(ctx.next_slot - plen, 0), plen, axis=1)
        match_RxG = jnp.all(tail_RxP[:, None, :] == prefixes_GxP[None], axis=-1) & (ctx.cur_len >= plen)
        lasts_RxG = jnp.broadcast_to(lasts_G[None], match_RxG.shape)
        banned = banned | _scatter_flags(lasts_RxG, match_RxG, v)
    return jnp.where(banned, NEG_INF, scores_RxV)


def process(spec: ProcessorSpec, scores_RxV, tokens_RxL, ctx: StepContext):
    """The logits processors (not the sampling warpers), in PyTorch's order."""
    v = scores_RxV.shape[1]
    if spec.repetition_penalty:
        scores_RxV = repetition_penalty(scores_RxV, tokens_RxL, ctx)
    if spec.no_repeat_ngram_size > 0:
        scores_RxV = no_repeat_ngram(scores_RxV, tokens_RxL, ctx, spec.no_repeat_ngram_size)
    if spec.bad_words_ids:
        scores_RxV = bad_words(scores_RxV, tokens_RxL, ctx, spec.bad_words_ids)
    if spec.min_length and spec.eos_token_ids:
        eos = jnp.asarray(_id_mask(v, spec.eos_token_ids))[None]
        scores_RxV = jnp.where(eos & (ctx.cur_len < ctx.min_length), NEG_INF, scores_RxV)
    if spec.forced_bos_token_id is not None:
        forced = jnp.where(jnp.asarray(_id_mask(v, [spec.forced_bos_token_id])), 0.0, NEG_INF)[None]
        scores_RxV = jnp.where(ctx.cur_len == 1, forced.astype(scores_RxV.dtype), scores_RxV)
    if spec.forced_eos_token_ids:
        forced = jnp.where(jnp.asarray(_id_mask(v, spec.forced_eos_token_ids)), 0.0, NEG_INF)[None]
        scores_RxV = jnp.where(ctx.cur_len == ctx.max_length - 1, forced.astype(scores_RxV.dtype), scores_RxV)
    if spec.suppress_tokens:
        scores_RxV = jnp.where(jnp.asarray(_id_mask(v, spec.suppress_tokens))[None], NEG_INF, scores_RxV)
    if spec.begin_suppress_tokens:
        mask = jnp.asarray(_id_mask(v, spec.begin_suppress_tokens))[None]
        scores_RxV = jnp.where(mask & (ctx.cur_len == ctx.begin_index), NEG_INF, scores_RxV)
    if spec.custom:
        ids_RxL = sequences_view(tokens_RxL, ctx, spec.pad_token_id)
        for held in spec.custom:
            scores_RxV = _call_custom(held.fn, ids_RxL, scores_RxV, ctx.cur_len)
    return scores_RxV


class _Held:
    """A caller's processor in the (hashable) spec: equal only to itself, whatever the object defines."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _Held) and other.fn is self.fn


def custom_processors(logits_processor) -> tuple:
    """4.x's `logits_processor` argument (None, one callable, or a list such as a FlaxLogitsProcessorList)
    as spec entries; anything not callable is refused, naming its position."""
    if logits_processor is None:
        return ()
    items = [logits_processor] if callable(logits_processor) and not isinstance(logits_processor, (list, tuple)) \
        else list(logits_processor)
    for i, fn in enumerate(items):
        if not callable(fn):
            from flax_bart.validation import InputError

            raise InputError(f"logits_processor[{i}] is a {type(fn).__name__}, expected a callable "
                             "fn(input_ids, scores, cur_len) -> scores")
    return tuple(_Held(fn) for fn in items)


def sequences_view(tokens_RxL, ctx: StepContext, pad_token_id: int):
    """The sequences so far as 4.x's processors saw them: each row's tokens from its first (the decoder
    start token, or a causal prompt's first) left-aligned, `cur_len` of them, then the pad id."""
    width = tokens_RxL.shape[1]
    rolled = jnp.roll(tokens_RxL, -ctx.first_slot, axis=1)
    return jnp.where(jnp.arange(width)[None] < ctx.cur_len, rolled, pad_token_id)


def _call_custom(fn, ids_RxL, scores_RxV, cur_len):
    out = fn(ids_RxL, scores_RxV, cur_len)
    if getattr(out, "shape", None) != scores_RxV.shape:
        from flax_bart.validation import InputError

        raise InputError(f"logits_processor {fn!r} returned shape {getattr(out, 'shape', type(out).__name__)}, "
                         f"expected the scores' {scores_RxV.shape}")
    return out.astype(scores_RxV.dtype)


def top_k_filter(scores_RxV, k: int):
    kth_Rx1 = jax.lax.top_k(scores_RxV, k)[0][:, -1:]
    return jnp.where(scores_RxV < kth_Rx1, NEG_INF, scores_RxV)


def top_p_filter(scores_RxV, cut, min_tokens_to_keep: int):
    """Drop the least likely tokens whose cumulative probability stays within `cut` = 1 - top_p."""
    r, v = scores_RxV.shape
    order_RxV = jnp.argsort(scores_RxV, axis=-1)  # ascending, like PyTorch's sort(descending=False)
    sorted_RxV = jnp.take_along_axis(scores_RxV, order_RxV, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_RxV, axis=-1), axis=-1)
    drop_sorted = (cumulative <= cut) & (jnp.arange(v) < v - min_tokens_to_keep)[None]
    drop = jnp.zeros((r, v), bool).at[jnp.arange(r)[:, None], order_RxV].set(drop_sorted)
    return jnp.where(drop, NEG_INF, scores_RxV)


def warp(spec: ProcessorSpec, scores_RxV, ctx: StepContext):
    """The sampling warpers (temperature, top-k, top-p), in PyTorch's order."""
    if spec.temperature:
        scores_RxV = scores_RxV / ctx.temperature
    if spec.top_k > 0:
        k = min(max(spec.top_k, spec.min_tokens_to_keep), scores_RxV.shape[1])
        scores_RxV = top_k_filter(scores_RxV, k)
    if spec.top_p:
        scores_RxV = top_p_filter(scores_RxV, ctx.top_p_cut, spec.min_tokens_to_keep)
    return scores_RxV
