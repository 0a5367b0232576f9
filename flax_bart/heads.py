"""Top-level linen modules: the seq2seq backbone and the four heads, 4.x parameter layout.

Each module has `__call__` (full forward, 4.x's positional order and `return_dict`), `encode` and
`decode` (used by the wrapper classes via `module.apply(..., method=...)`), and the seq2seq ones 4.x's
`_get_encoder_module()` / `_get_decoder_module()`. Inputs arrive complete: the wrapper fills default
masks/positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from flax_bart import outputs as O
from flax_bart.declared_params import DeclaredParams
from flax_bart.modules import BartDecoder, BartEncoder, BartModuleBase, Embed, _dense


class BartModule(BartModuleBase):
    """Encoder + decoder around one `shared` embedding (BartModel). With
    `config.separate_input_embeddings` the encoder and decoder own their `embed_tokens` and `shared`
    is kept (as transformers v5 keeps it) but read by nothing."""

    def setup(self):
        c, kw = self.config, self._child_kw()
        self.shared = Embed(c.vocab_size, c.d_model, c, dtype=self.dtype, param_dtype=self.param_dtype)
        embed = None if c.separate_input_embeddings else self.shared
        self.encoder = BartEncoder(c, embed_tokens=embed, **kw)
        self.decoder = BartDecoder(c, embed_tokens=embed, **kw)

    def _keep_shared(self):
        """Create `shared` during init when nothing reads it, so that the tree holds it."""
        if self.config.separate_input_embeddings and self.is_initializing():
            self.shared(jnp.zeros((1, 1), jnp.int32))

    def _get_encoder_module(self):
        return self.encoder

    def _get_decoder_module(self):
        return self.decoder

    def encode(self, input_ids, attention_mask, position_ids, output_attentions=False,
               output_hidden_states=False, deterministic=True):
        return self.encoder(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                            deterministic=deterministic)

    def decode(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask, decoder_attention_mask,
               decoder_position_ids, init_cache=False, cache_length=None, output_attentions=False,
               output_hidden_states=False, deterministic=True):
        return self.decoder(
            decoder_input_ids, decoder_attention_mask, decoder_position_ids, encoder_hidden_states,
            encoder_attention_mask, init_cache, output_attentions, output_hidden_states,
            deterministic=deterministic, cache_length=cache_length,
        )

    def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                 decoder_position_ids, output_attentions=False, output_hidden_states=False, return_dict=True,
                 deterministic=True):
        self._keep_shared()
        enc = self.encode(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states,
                          deterministic)
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask,
                          decoder_position_ids, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states, deterministic=deterministic)
        return O.returned(O.FlaxSeq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
        ), return_dict)


def _seq2seq_fields(out: O.FlaxSeq2SeqModelOutput) -> dict:
    return {k: getattr(out, k) for k in (
        "decoder_hidden_states", "decoder_attentions", "cross_attentions", "encoder_last_hidden_state",
        "encoder_hidden_states", "encoder_attentions")}


class _HeadBase(BartModuleBase):
    """A seq2seq head model: the backbone under `model/`; `encode` and `decode` pass through (`_decoded`
    may add to the decoder's output), and `__call__` gives the head's output from the backbone's
    through `_head(out, input_ids, deterministic)`, which each head defines."""

    def _backbone(self):
        return BartModule(self.config, name="model", **self._child_kw())

    def _get_encoder_module(self):
        return self.model.encoder

    def _get_decoder_module(self):
        return self.model.decoder

    def encode(self, input_ids, attention_mask, position_ids, output_attentions=False,
               output_hidden_states=False, deterministic=True):
        return self.model.encode(input_ids, attention_mask, position_ids, output_attentions,
                                 output_hidden_states, deterministic)

    def decode(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask, decoder_attention_mask,
               decoder_position_ids, init_cache=False, cache_length=None, output_attentions=False,
               output_hidden_states=False, deterministic=True):
        return self._decoded(self.model.decode(
            decoder_input_ids, encoder_hidden_states, encoder_attention_mask, decoder_attention_mask,
            decoder_position_ids, init_cache, cache_length, output_attentions, output_hidden_states, deterministic))

    def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                 decoder_position_ids, output_attentions=False, output_hidden_states=False, return_dict=True,
                 deterministic=True):
        """4.x's call order: the backbone, then the head's output (`_head`)."""
        out = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                         decoder_position_ids, output_attentions, output_hidden_states, deterministic=deterministic)
        return O.returned(self._head(out, input_ids, deterministic), return_dict)

    def _decoded(self, dec):
        """`decode`'s output from the backbone's (the decoder states; the LM head adds its logits)."""
        return dec


class BartForConditionalGenerationModule(DeclaredParams, _HeadBase):
    def setup(self):
        c = self.config
        self.model = self._backbone()
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (1, c.vocab_size),
                                            self.param_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = _dense(c, c.vocab_size, self.dtype, self.param_dtype, self.precision, "lm_head",
                                  use_bias=False)

    def logits(self, h_BxTxD):
        if self.config.tie_word_embeddings:
            logits = self.model.shared.attend(h_BxTxD, precision=self.precision)
        else:
            logits = self.lm_head(h_BxTxD)
        # A buffer in PyTorch, never trained.
        bias_1x1xV = jax.lax.stop_gradient(self.final_logits_bias).astype(self.dtype)[None]
        return logits + bias_1x1xV

    def _decoded(self, dec):
        return O.FlaxCausalLMOutputWithCrossAttentions(
            logits=self.logits(dec.last_hidden_state), hidden_states=dec.hidden_states,
            attentions=dec.attentions, cross_attentions=dec.cross_attentions,
        )

    def _head(self, out, input_ids, deterministic):
        return O.FlaxSeq2SeqLMOutput(logits=self.logits(out.last_hidden_state), **_seq2seq_fields(out))


class BartClassificationHead(BartModuleBase):
    def setup(self):
        c = self.config
        self.dense = _dense(c, c.d_model, self.dtype, self.param_dtype, self.precision, "dense")
        self.out_proj = _dense(c, c.num_labels, self.dtype, self.param_dtype, self.precision, "out_proj")
        self.dropout = nn.Dropout(rate=c.classifier_dropout or 0.0)

    def __call__(self, x_BxD, deterministic=True):
        x = self.dropout(x_BxD, deterministic=deterministic)
        x = jnp.tanh(self.dense(x))
        x = self.dropout(x, deterministic=deterministic)
        return self.out_proj(x)


def last_eos_states(h_BxTxD, input_ids_BxT, eos_ids):
    """The decoder state at the last `<eos>` of each row, and whether the batch is valid for it.

    Valid means every row holds at least one `<eos>` and all rows hold the same number (PyTorch
    raises otherwise). Works under `jit`; the caller turns invalid batches into NaN logits."""
    is_eos = jnp.isin(input_ids_BxT, jnp.asarray(eos_ids, dtype=input_ids_BxT.dtype))
    t = input_ids_BxT.shape[1]
    last_BxT = t - 1 - jnp.argmax(is_eos[:, ::-1], axis=1)
    rep_BxD = jnp.take_along_axis(h_BxTxD, last_BxT[:, None, None], axis=1)[:, 0]
    counts = is_eos.sum(axis=1)
    valid = jnp.all(counts > 0) & jnp.all(counts == counts[0])
    return rep_BxD, valid


class BartForSequenceClassificationModule(_HeadBase):
    def setup(self):
        self.model = self._backbone()
        self.classification_head = BartClassificationHead(
            self.config, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision
        )

    def _head(self, out, input_ids, deterministic):
        rep, valid = last_eos_states(out.last_hidden_state, input_ids, self.config.eos_token_ids)
        logits = self.classification_head(rep, deterministic=deterministic)
        # Under jit a bad batch cannot raise: it gives NaN logits instead of a plausible number.
        logits = jnp.where(valid, logits, jnp.nan)
        return O.FlaxSeq2SeqSequenceClassifierOutput(logits=logits, **_seq2seq_fields(out))


class BartForQuestionAnsweringModule(_HeadBase):
    def setup(self):
        self.model = self._backbone()
        self.qa_outputs = _dense(self.config, 2, self.dtype, self.param_dtype, self.precision, "qa_outputs")

    def _head(self, out, input_ids, deterministic):
        logits = self.qa_outputs(out.last_hidden_state)
        return O.FlaxSeq2SeqQuestionAnsweringModelOutput(
            start_logits=logits[..., 0], end_logits=logits[..., 1], **_seq2seq_fields(out)
        )


class BartDecoderWrapper(BartModuleBase):
    """Holds the decoder (with its own `embed_tokens`) under `model/decoder` for ForCausalLM."""

    def setup(self):
        self.decoder = BartDecoder(self.config, **self._child_kw())

    def __call__(self, *args, **kwargs):   # as 4.x's: BartDecoder's arguments
        return self.decoder(*args, **kwargs)


class BartForCausalLMModule(BartModuleBase):
    def setup(self):
        c = self.config
        self.model = BartDecoderWrapper(c, **self._child_kw())
        if not c.tie_word_embeddings:
            self.lm_head = _dense(c, c.vocab_size, self.dtype, self.param_dtype, self.precision, "lm_head",
                                  use_bias=False)

    def __call__(self, input_ids, attention_mask, position_ids, encoder_hidden_states=None,
                 encoder_attention_mask=None, init_cache=False, output_attentions=False,
                 output_hidden_states=False, return_dict=True, deterministic=True, cache_length=None):
        """4.x's positional order; `cache_length` (keyword): the cache's slots with `init_cache` (None: the
        input's length, as 4.x's init_cache sized it)."""
        dec = self.model(
            input_ids, attention_mask, position_ids, encoder_hidden_states, encoder_attention_mask, init_cache,
            output_attentions, output_hidden_states, deterministic=deterministic, cache_length=cache_length,
        )
        h = dec.last_hidden_state
        if self.config.tie_word_embeddings:
            logits = self.model.decoder.tokens.attend(h, precision=self.precision)
        else:
            logits = self.lm_head(h)
        return O.returned(O.FlaxCausalLMOutputWithCrossAttentions(
            logits=logits, hidden_states=dec.hidden_states, attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
        ), return_dict)


MODULES = {
    "base": BartModule,
    "lm": BartForConditionalGenerationModule,
    "cls": BartForSequenceClassificationModule,
    "qa": BartForQuestionAnsweringModule,
    "causal": BartForCausalLMModule,
}
