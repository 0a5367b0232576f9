"""The public model classes with the transformers-4.x Flax BART API."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flax_bart import heads, losses
from flax_bart import outputs as O
from flax_bart.generation import GenerationMixin
from flax_bart.pretrained import FlaxBartPreTrainedModel
from flax_bart.validation import (
    InputError, check_eos_rows, check_ids, check_length, check_mask, check_positions, is_concrete,
)


def shift_tokens_right(input_ids, pad_token_id: int, decoder_start_token_id: int):
    """Decoder inputs for denoising: shift right, start token first, -100 labels become padding."""
    xp = np if isinstance(input_ids, np.ndarray) else jnp
    shifted = xp.concatenate(
        [xp.full((input_ids.shape[0], 1), decoder_start_token_id, dtype=input_ids.dtype), input_ids[:, :-1]], axis=1
    )
    return xp.where(shifted == -100, pad_token_id, shifted)


# Inputs reach the jitted programs as numpy arrays unless they are jax arrays or tracers already: outside
# a trace, `jnp.asarray`, `jnp.ones` or `jnp.arange` run (and first compile) a small program per new
# shape, which the parity gate, running many shapes once each, paid for by the dozen per head and dtype.
def _positions(batch: int, length: int, start=0):
    if isinstance(start, jax.core.Tracer):
        return (jnp.arange(length, dtype=jnp.int32)[None, :] + jnp.asarray(start, jnp.int32)) * jnp.ones(
            (batch, 1), jnp.int32
        )
    row = np.arange(length, dtype=np.int32) + np.int32(start)
    return np.ascontiguousarray(np.broadcast_to(row, (batch, length)))


def _array(x):
    """`x` for a program's argument: jax arrays and tracers as they are, anything else as numpy."""
    return x if isinstance(x, (jax.Array, jax.core.Tracer)) else np.asarray(x)


def _ones(b: int, t: int):
    return np.ones((b, t), np.int32)



def _generation_mask(name: str, mask, batch: int, length: int, max_length: int):
    """4.x's prepare_inputs_for_generation masks: (the mask widened to the cache's `max_length` slots, 1
    past the prompt; the prompt's positions, `cumsum(mask) - 1` (clipped at 0 for left padding: flax_bart
    refuses negative positions, and a masked slot's position changes nothing else) or `arange`)."""
    if mask is None:
        return np.ones((batch, max_length), np.int32), _positions(batch, length)
    check_mask(name, mask, (batch, length))
    if isinstance(mask, jax.core.Tracer):
        mask = mask.astype(jnp.int32)
        wide = jax.lax.dynamic_update_slice(jnp.ones((batch, max_length), jnp.int32), mask, (0, 0))
        return wide, jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    mask = np.asarray(mask).astype(np.int32)
    wide = np.ones((batch, max_length), np.int32)
    wide[:, :length] = mask
    return wide, np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)


def cache_info(past_key_values):
    """(cache_index, max_length) of a cache tree from `init_cache`."""
    flat = traverse_util.flatten_dict(past_key_values)
    index = length = None
    for k, v in flat.items():
        if len(k) >= 2 and k[-2] == "self_attn":
            if k[-1] == "cache_index" and index is None:
                index = v
            elif k[-1] == "cached_key" and length is None:
                length = v.shape[1]
    if index is None or length is None:
        raise InputError("past_key_values is not a cache tree from init_cache (no self_attn cache_index/cached_key)")
    return index, length


def cache_room(past_key_values, new_tokens: int, name: str):
    """(cache_index, max_length), after checking (when concrete) that `new_tokens` still fit."""
    start, max_len = cache_info(past_key_values)
    if is_concrete(start) and int(start) + new_tokens > max_len:
        raise InputError(
            f"{name}: {new_tokens} new tokens at cache_index {int(start)} exceed the cache's max_length "
            f"{max_len}; call init_cache with a larger max_length"
        )
    return start, max_len


# The loss arguments each head's `__call__` takes (PyTorch's names); the loss is `losses.<fn>` of the
# head's outputs, computed after the module (inside a caller's `jit` it is traced with the rest).
_LOSS_ARGS = {"base": (), "lm": ("labels",), "cls": ("labels",), "causal": ("labels",),
              "qa": ("start_positions", "end_positions")}


def _loss_targets(model, **given) -> dict | None:
    """The loss arguments given to `model.__call__`, checked against what its head takes; None if none."""
    given = {k: v for k, v in given.items() if v is not None}
    takes = _LOSS_ARGS[model.head]
    for k in given:
        if k not in takes:
            raise InputError(f"{type(model).__name__} takes no {k} (its loss arguments: {list(takes) or 'none'})")
    missing = [k for k in takes if k not in given]
    if given and missing:
        raise InputError(f"{', '.join(given)} given without {', '.join(missing)}: the loss needs both")
    return given or None


def _with_loss(model, out, ret: bool, targets: dict | None):
    """`out` (a dataclass) with its `loss` filled when there are targets, as a tuple unless `ret`."""
    if targets is not None:
        c = model.config
        if model.head == "qa":
            loss = losses.qa_loss(out.start_logits, out.end_logits, targets["start_positions"],
                                  targets["end_positions"])
        elif model.head == "cls":
            loss = losses.classification_loss(out.logits, targets["labels"], c.problem_type, c.num_labels)
        else:  # lm, causal: labels are aligned with the logits (PyTorch shifts neither)
            loss = losses.lm_loss(out.logits, targets["labels"])
        out = out.replace(loss=loss)
    return O.returned(out, ret)


class _Seq2SeqAPI(FlaxBartPreTrainedModel):
    """`__call__`, `encode`, `decode`, `init_cache` of the encoder-decoder classes."""

    def _init_args(self, input_shape):
        ids = self._dummy_inputs(input_shape)
        mask, pos = np.ones_like(ids), _positions(*ids.shape)
        return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=ids, decoder_attention_mask=mask,
                    position_ids=pos, decoder_position_ids=pos)

    def _check_encoder_inputs(self, input_ids, attention_mask, position_ids):
        c = self.config
        check_ids("input_ids", input_ids, c.vocab_size)
        b, t = input_ids.shape
        check_length("input_ids", t, c.max_position_embeddings)
        check_mask("attention_mask", attention_mask, (b, t))
        check_mask("position_ids", position_ids, (b, t))
        check_positions("position_ids", position_ids, c.max_position_embeddings)
        mask = _ones(b, t) if attention_mask is None else _array(attention_mask)
        pos = _positions(b, t) if position_ids is None else _array(position_ids)
        return mask, pos

    def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, train: bool = False, params=None, dropout_rng=None, *, labels=None,
                 start_positions=None, end_positions=None):
        """The forward pass; with `labels` (or `start_positions` and `end_positions` for QA) the output's
        first field is the loss (`flax_bart.losses`). ForConditionalGeneration with labels and no
        `decoder_input_ids` decodes `shift_tokens_right(labels)`, as PyTorch does."""
        c = self.config
        attn, hid, ret = self._flags(output_attentions, output_hidden_states, return_dict)
        targets = _loss_targets(self, labels=labels, start_positions=start_positions, end_positions=end_positions)
        mask, pos = self._check_encoder_inputs(input_ids, attention_mask, position_ids)
        if labels is not None and self.head == "lm" and decoder_input_ids is None:
            losses.check_class_ids("labels", labels, (input_ids.shape[0], None), c.vocab_size, "target_length")
            decoder_input_ids = shift_tokens_right(_array(labels), c.pad_token_id, c.decoder_start_token_id)
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(input_ids, c.pad_token_id, c.decoder_start_token_id)
        check_ids("decoder_input_ids", decoder_input_ids, c.vocab_size)
        b, t = decoder_input_ids.shape
        if b != input_ids.shape[0]:
            raise InputError(f"decoder_input_ids has batch size {b}, input_ids has {input_ids.shape[0]}")
        check_length("decoder_input_ids", t, c.max_position_embeddings)
        check_mask("decoder_attention_mask", decoder_attention_mask, (b, t))
        check_mask("decoder_position_ids", decoder_position_ids, (b, t))
        check_positions("decoder_position_ids", decoder_position_ids, c.max_position_embeddings)
        if self.head == "cls":
            if t != input_ids.shape[1]:   # PyTorch fails on the mask's shape; out of range here would read NaN
                raise InputError(f"decoder_input_ids has length {t}, input_ids has {input_ids.shape[1]}: the "
                                 f"classification head reads the decoder's state at input_ids' last <eos> "
                                 f"position, so both must have the same length")
            check_eos_rows(input_ids, c.eos_token_ids)
        arrays = dict(
            input_ids=_array(input_ids), attention_mask=mask, decoder_input_ids=_array(decoder_input_ids),
            decoder_attention_mask=_ones(b, t) if decoder_attention_mask is None
            else _array(decoder_attention_mask),
            position_ids=pos,
            decoder_position_ids=_positions(b, t) if decoder_position_ids is None else _array(decoder_position_ids),
        )
        out = self._apply("__call__", params, arrays, attn, hid, True, train, dropout_rng)
        return _with_loss(self, out, ret, targets)

    def encode(self, input_ids, attention_mask=None, position_ids=None, output_attentions=None,
               output_hidden_states=None, return_dict=None, train: bool = False, params=None, dropout_rng=None):
        attn, hid, ret = self._flags(output_attentions, output_hidden_states, return_dict)
        mask, pos = self._check_encoder_inputs(input_ids, attention_mask, position_ids)
        arrays = dict(input_ids=_array(input_ids), attention_mask=mask, position_ids=pos)
        return self._apply("encode", params, arrays, attn, hid, ret, train, dropout_rng)

    def decode(self, decoder_input_ids, encoder_outputs, encoder_attention_mask=None, decoder_attention_mask=None,
               decoder_position_ids=None, past_key_values: dict = None, output_attentions=None,
               output_hidden_states=None, return_dict=None, train: bool = False, params=None, dropout_rng=None):
        """Run the decoder (and LM head). With `past_key_values` from `init_cache`, the new tokens are
        appended to the cache; positions default to `cache_index + arange(T)` like PyTorch, and
        `decoder_attention_mask`, if given, covers the whole cache: shape (batch, max_length)."""
        c = self.config
        attn, hid, ret = self._flags(output_attentions, output_hidden_states, return_dict)
        enc = encoder_outputs[0] if not hasattr(encoder_outputs, "shape") else encoder_outputs
        check_ids("decoder_input_ids", decoder_input_ids, c.vocab_size)
        b, t = decoder_input_ids.shape
        if enc.ndim != 3 or enc.shape[0] != b or enc.shape[2] != c.d_model:
            raise InputError(
                f"encoder_outputs[0] has shape {tuple(enc.shape)}, expected ({b}, source_length, {c.d_model})"
            )
        s = enc.shape[1]
        check_mask("encoder_attention_mask", encoder_attention_mask, (b, s))
        enc_mask = _ones(b, s) if encoder_attention_mask is None else _array(encoder_attention_mask)
        start = 0
        if past_key_values is not None:
            start, max_len = cache_room(past_key_values, t, "decoder_input_ids")
            check_mask("decoder_attention_mask", decoder_attention_mask, (b, max_len), alternatives=[(b, 1)])
        else:
            check_length("decoder_input_ids", t, c.max_position_embeddings)
            check_mask("decoder_attention_mask", decoder_attention_mask, (b, t))
        if decoder_position_ids is None:
            decoder_position_ids = _positions(b, t, start)
        check_mask("decoder_position_ids", decoder_position_ids, (b, t))
        check_positions("decoder_position_ids", decoder_position_ids, c.max_position_embeddings)
        arrays = dict(
            decoder_input_ids=_array(decoder_input_ids), encoder_hidden_states=_array(enc),
            encoder_attention_mask=enc_mask,
            decoder_attention_mask=None if decoder_attention_mask is None else _array(decoder_attention_mask),
            decoder_position_ids=_array(decoder_position_ids),
        )
        return self._apply("decode", params, arrays, attn, hid, ret, train, dropout_rng, past_key_values)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs=None, params=None):
        """A decoding cache: self-attention K/V of size `max_length`, and the cross-attention K/V of
        `encoder_outputs` computed once here (so each decoding step reuses them). Without params
        (a `_do_init=False` model and no `params=`), cross K/V are recomputed at every step instead."""
        c = self.config
        check_length("max_length", max_length, c.max_position_embeddings)
        enc = None
        if encoder_outputs is not None:
            enc = encoder_outputs[0] if not hasattr(encoder_outputs, "shape") else encoder_outputs
            if enc.shape[0] != batch_size:
                raise InputError(f"encoder_outputs has batch size {enc.shape[0]}, batch_size is {batch_size}")
            enc = _array(enc)
        ids = np.zeros((batch_size, 1), np.int32)
        arrays = dict(decoder_input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=None,
                      decoder_attention_mask=None, decoder_position_ids=_positions(batch_size, 1))
        return self._make_cache("decode", arrays, max_length, params)


class FlaxBartModel(_Seq2SeqAPI):
    module_class = heads.BartModule
    head = "base"
    base_model_prefix = "model"


class FlaxBartForConditionalGeneration(GenerationMixin, _Seq2SeqAPI):
    module_class = heads.BartForConditionalGenerationModule
    head = "lm"

    def prepare_inputs_for_generation(self, decoder_input_ids, max_length, attention_mask=None,
                                      decoder_attention_mask=None, encoder_outputs=None, **kwargs):
        """As 4.x: the `decode` keyword arguments of a cached decoding loop of `max_length` steps, a cache
        from `init_cache(batch, max_length, encoder_outputs)` included. (`generate` itself does not use it.)"""
        b, t = decoder_input_ids.shape
        wide, positions = _generation_mask("decoder_attention_mask", decoder_attention_mask, b, t, max_length)
        return {
            "past_key_values": self.init_cache(b, max_length, encoder_outputs),
            "encoder_outputs": encoder_outputs,
            "encoder_attention_mask": attention_mask,
            "decoder_attention_mask": wide,
            "decoder_position_ids": positions,
        }


class FlaxBartForSequenceClassification(_Seq2SeqAPI):
    module_class = heads.BartForSequenceClassificationModule
    head = "cls"


class FlaxBartForQuestionAnswering(_Seq2SeqAPI):
    module_class = heads.BartForQuestionAnsweringModule
    head = "qa"


class FlaxBartDecoderPreTrainedModel(FlaxBartPreTrainedModel):
    """The base class 4.x named for its decoder-only model (`FlaxBartForCausalLM`); here one more name
    for flax_bart's base, kept for code that refers to it."""


class FlaxBartForCausalLM(GenerationMixin, FlaxBartDecoderPreTrainedModel):
    """Decoder-only BART with an LM head (its own `model/decoder/embed_tokens`)."""

    module_class = heads.BartForCausalLMModule
    head = "causal"

    def _init_args(self, input_shape):
        ids = self._dummy_inputs(input_shape)
        return dict(input_ids=ids, attention_mask=np.ones_like(ids), position_ids=_positions(*ids.shape),
                    encoder_hidden_states=np.zeros(ids.shape + (self.config.d_model,), self.dtype),
                    encoder_attention_mask=np.ones_like(ids))

    def __call__(self, input_ids, attention_mask=None, position_ids=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                 train: bool = False, params=None, past_key_values: dict = None, dropout_rng=None, *, labels=None):
        """The forward pass; with `labels` the output's first field is `losses.lm_loss(logits, labels)`.
        Like transformers v5 BartForCausalLM nothing is shifted: `labels[:, i]` is the target of
        position i, so pass next tokens (or use `losses.causal_lm_loss` on `input_ids`)."""
        c = self.config
        attn, hid, ret = self._flags(output_attentions, output_hidden_states, return_dict)
        targets = _loss_targets(self, labels=labels)
        check_ids("input_ids", input_ids, c.vocab_size)
        b, t = input_ids.shape
        start = 0
        if past_key_values is not None:
            start, max_len = cache_room(past_key_values, t, "input_ids")
            check_mask("attention_mask", attention_mask, (b, max_len), alternatives=[(b, 1)])
            mask = None if attention_mask is None else _array(attention_mask)
        else:
            check_length("input_ids", t, c.max_position_embeddings)
            check_mask("attention_mask", attention_mask, (b, t))
            mask = _ones(b, t) if attention_mask is None else _array(attention_mask)
        if position_ids is None:
            position_ids = _positions(b, t, start)
        check_mask("position_ids", position_ids, (b, t))
        check_positions("position_ids", position_ids, c.max_position_embeddings)
        enc_mask = None
        if encoder_hidden_states is not None:
            s = encoder_hidden_states.shape[1]
            check_mask("encoder_attention_mask", encoder_attention_mask, (b, s))
            enc_mask = _ones(b, s) if encoder_attention_mask is None else _array(encoder_attention_mask)
            encoder_hidden_states = _array(encoder_hidden_states)
        arrays = dict(input_ids=_array(input_ids), attention_mask=mask, position_ids=_array(position_ids),
                      encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=enc_mask)
        out = self._apply("__call__", params, arrays, attn, hid, True, train, dropout_rng, past_key_values)
        return _with_loss(self, out, ret, targets)

    def init_cache(self, batch_size: int, max_length: int, params=None):
        check_length("max_length", max_length, self.config.max_position_embeddings)
        ids = np.zeros((batch_size, 1), np.int32)
        arrays = dict(input_ids=ids, attention_mask=None, position_ids=_positions(batch_size, 1),
                      encoder_hidden_states=None, encoder_attention_mask=None)
        return self._make_cache("__call__", arrays, max_length, params)

    def prepare_inputs_for_generation(self, input_ids, max_length, attention_mask=None):
        """As 4.x: the `__call__` keyword arguments of a cached decoding loop of `max_length` steps, a cache
        from `init_cache(batch, max_length)` included. (`generate` itself does not use it.)"""
        b, t = input_ids.shape
        wide, positions = _generation_mask("attention_mask", attention_mask, b, t, max_length)
        return {"past_key_values": self.init_cache(b, max_length), "attention_mask": wide,
                "position_ids": positions}


MODEL_CLASSES = {
    "base": FlaxBartModel,
    "lm": FlaxBartForConditionalGeneration,
    "cls": FlaxBartForSequenceClassification,
    "qa": FlaxBartForQuestionAnswering,
    "causal": FlaxBartForCausalLM,
}
