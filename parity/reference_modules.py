"""PyTorch BART layers for the parity reference, op for op as transformers' eager BART.

Module and parameter names mirror transformers' BART so that a Hugging Face state dict maps onto
`state_dict()` one to one; loading (tied copies, the `model.` prefix), random init and generation live
in `parity.reference`. Inference only: dropout, LayerDrop and losses are not modelled.

Numerics that matter for parity, all as PyTorch BART does them: embeddings times `embed_scale`, learned
positions at `past_length + arange(T) + 2` (the padding mask does not move positions), post-LN blocks
with eps 1e-5, attention scores `(q @ k^T) * head_dim**-0.5` plus an additive mask holding the dtype's
most negative finite value, softmax in the compute dtype, and the fp16 clamp after each encoder layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from parity.reference_linear import Linear, linear

LAYER_NORM_EPS = 1e-5
POSITION_OFFSET = 2
HEADS = ("base", "lm", "cls", "qa", "causal")
ATTN_IMPLS = ("eager", "sdpa")


def _gelu_tanh_python(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# The names of PyTorch's activation table that flax_bart's config accepts, with PyTorch's formulas.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_new": _gelu_tanh_python,
    "gelu_python_tanh": lambda x: x * 0.5 * (
        1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))
    ),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_accurate": lambda x: 0.5 * x * (
        1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3)))
    ),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107).div(0.282095 * math.sqrt(2.0)))),
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def as_id_list(v) -> list[int]:
    """A token id setting (an int, a list or None) as a list."""
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


def eos_ids(config) -> list[int]:
    return as_id_list(config.eos_token_id)


class Output(dict):
    """A dict with attribute access; fields the call did not compute hold None."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def shift_tokens_right(ids_BxT: torch.Tensor, pad_token_id, decoder_start_token_id) -> torch.Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last token, -100 -> pad."""
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError(
            "shift_tokens_right needs pad_token_id and decoder_start_token_id, got "
            f"{pad_token_id!r} and {decoder_start_token_id!r}"
        )
    out = ids_BxT.new_zeros(ids_BxT.shape)
    out[:, 1:] = ids_BxT[:, :-1]
    out[:, 0] = decoder_start_token_id
    return out.masked_fill(out == -100, pad_token_id)


def _bias_from_keep(keep_Bx1xQxK: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=keep_Bx1xQxK.device)
    return torch.where(keep_Bx1xQxK, zero, torch.finfo(dtype).min)


def padding_bias(mask_BxS, q_len: int, dtype: torch.dtype):
    """Additive (B, 1, q_len, S) bias from a key padding mask; None when nothing is masked."""
    if mask_BxS is None or bool(mask_BxS.bool().all()):
        return None
    keep = mask_BxS.bool()[:, None, None, :].expand(-1, 1, q_len, -1)
    return _bias_from_keep(keep, dtype)


def causal_bias(mask_BxK, batch: int, q_len: int, past_len: int, dtype, device) -> torch.Tensor:
    """Additive (B, 1, q_len, past_len + q_len) bias: causal, and the key padding mask if given."""
    k_len = past_len + q_len
    q_pos = torch.arange(past_len, k_len, device=device)[:, None]
    keep = (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]
    if mask_BxK is not None:
        keep = keep & mask_BxK.bool()[:, None, None, :]
    return _bias_from_keep(keep.expand(batch, 1, q_len, k_len), dtype)


class BartAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.head_dim = d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.q_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)

    def split_heads(self, x_BxTxD):
        b, t = x_BxTxD.shape[:2]
        return x_BxTxD.view(b, t, -1, self.head_dim).transpose(1, 2)

    def project_kv(self, x_BxSxD):
        return self.split_heads(self.k_proj(x_BxSxD)), self.split_heads(self.v_proj(x_BxSxD))

    def forward(self, x_BxTxD, k_BxHxSxK, v_BxHxSxK, bias, need_weights: bool, impl: str):
        b, t = x_BxTxD.shape[:2]
        q_BxHxTxK = self.split_heads(self.q_proj(x_BxTxD))
        if impl == "sdpa" and not need_weights:
            out, probs = F.scaled_dot_product_attention(
                q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, attn_mask=bias, scale=self.scaling
            ), None
        else:
            scores = torch.matmul(q_BxHxTxK, k_BxHxSxK.transpose(2, 3)) * self.scaling
            if bias is not None:
                scores = scores + bias
            probs = F.softmax(scores, dim=-1)
            out = torch.matmul(probs, v_BxHxSxK)
        out = out.transpose(1, 2).contiguous().reshape(b, t, -1).contiguous()
        return self.out_proj(out), probs


class BartEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.activation_fn = ACTIVATIONS[config.activation_function]
        self.self_attn = BartAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = Linear(d, config.encoder_ffn_dim)
        self.fc2 = Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, h, bias, need_weights, impl):
        k, v = self.self_attn.project_kv(h)
        a, probs = self.self_attn(h, k, v, bias, need_weights, impl)
        h = self.self_attn_layer_norm(h + a)
        f = self.fc2(self.activation_fn(self.fc1(h)))
        h = self.final_layer_norm(h + f)
        if h.dtype == torch.float16 and not bool(torch.isfinite(h).all()):
            limit = torch.finfo(torch.float16).max - 1000
            h = torch.clamp(h, min=-limit, max=limit)
        return h, probs


class BartDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.activation_fn = ACTIVATIONS[config.activation_function]
        self.self_attn = BartAttention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.encoder_attn = BartAttention(d, heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.fc1 = Linear(d, config.decoder_ffn_dim)
        self.fc2 = Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, h, self_bias, self_past, cross_kv, cross_bias, need_weights, impl):
        """Returns (h, self_probs, cross_probs, (self_k, self_v) including the past)."""
        k, v = self.self_attn.project_kv(h)
        if self_past is not None:
            k, v = torch.cat([self_past[0], k], dim=-2), torch.cat([self_past[1], v], dim=-2)
        a, self_probs = self.self_attn(h, k, v, self_bias, need_weights, impl)
        h = self.self_attn_layer_norm(h + a)
        cross_probs = None
        if cross_kv is not None:
            a, cross_probs = self.encoder_attn(h, cross_kv[0], cross_kv[1], cross_bias, need_weights, impl)
            h = self.encoder_attn_layer_norm(h + a)
        f = self.fc2(self.activation_fn(self.fc1(h)))
        h = self.final_layer_norm(h + f)
        return h, self_probs, cross_probs, (k, v)


def _embed(ids_BxT, token_weight, embed_scale, pos_embedding, past_len):
    t = ids_BxT.shape[1]
    positions = torch.arange(t, device=ids_BxT.device) + past_len + POSITION_OFFSET
    return F.embedding(ids_BxT, token_weight) * embed_scale + pos_embedding(positions[None, :])


class BartEncoder(nn.Module):
    """The encoder stack; `own_embeddings` gives it `embed_tokens` (v5's untied layout)."""

    def __init__(self, config, own_embeddings: bool = False):
        super().__init__()
        d = config.d_model
        if own_embeddings:
            self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, d)
        self.layers = nn.ModuleList(BartEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, ids_BxS, token_weight, mask_BxS, output_hidden_states, output_attentions, impl):
        h = self.layernorm_embedding(_embed(ids_BxS, token_weight, self.embed_scale, self.embed_positions, 0))
        bias = padding_bias(mask_BxS, ids_BxS.shape[1], h.dtype)
        hidden, attentions = [h], []
        for layer in self.layers:
            h, probs = layer(h, bias, output_attentions, impl)
            hidden.append(h)
            attentions.append(probs)
        return Output(
            last_hidden_state=h,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class BartDecoder(nn.Module):
    """The decoder stack; `own_embeddings` gives it `embed_tokens` (BartForCausalLM's layout)."""

    def __init__(self, config, own_embeddings: bool = False):
        super().__init__()
        d = config.d_model
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        if own_embeddings:
            self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, d)
        self.layers = nn.ModuleList(BartDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(d, eps=LAYER_NORM_EPS)

    def forward(self, ids_BxT, token_weight, mask_BxK, enc_BxSxD, enc_mask_BxS, past, use_cache,
                output_hidden_states, output_attentions, impl):
        """`past`: per layer (self_k, self_v[, cross_k, cross_v]), each (B, heads, len, head_dim)."""
        b, t = ids_BxT.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        h = self.layernorm_embedding(
            _embed(ids_BxT, token_weight, self.embed_scale, self.embed_positions, past_len)
        )
        self_bias = causal_bias(mask_BxK, b, t, past_len, h.dtype, h.device)
        cross_bias = None if enc_BxSxD is None else padding_bias(enc_mask_BxS, t, h.dtype)
        hidden, self_attn, cross_attn, new_past = [h], [], [], []
        for i, layer in enumerate(self.layers):
            cross_kv = None
            if enc_BxSxD is not None:
                cached = past is not None and len(past[i]) == 4
                cross_kv = tuple(past[i][2:]) if cached else layer.encoder_attn.project_kv(enc_BxSxD)
            self_past = None if past is None else past[i][:2]
            h, sp, cp, self_kv = layer(h, self_bias, self_past, cross_kv, cross_bias, output_attentions, impl)
            hidden.append(h)
            self_attn.append(sp)
            cross_attn.append(cp)
            new_past.append(tuple(self_kv) + (tuple(cross_kv) if cross_kv is not None else ()))
        return Output(
            last_hidden_state=h,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(self_attn) if output_attentions else None,
            cross_attentions=tuple(cross_attn) if output_attentions and enc_BxSxD is not None else None,
            past_key_values=tuple(new_past) if use_cache else None,
        )


class BartSeq2SeqCore(nn.Module):
    """transformers' BartModel layout: `shared`, `encoder`, `decoder` (embeddings tied to `shared`, or,
    with `config.separate_input_embeddings`, the encoder's and decoder's own, `shared` read by nothing)."""

    def __init__(self, config):
        super().__init__()
        own = bool(getattr(config, "separate_input_embeddings", False))
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = BartEncoder(config, own_embeddings=own)
        self.decoder = BartDecoder(config, own_embeddings=own)


class BartDecoderOnlyCore(nn.Module):
    """transformers' BartDecoderWrapper layout (BartForCausalLM.model)."""

    def __init__(self, config):
        super().__init__()
        self.decoder = BartDecoder(config, own_embeddings=True)


class BartClassificationHead(nn.Module):
    def __init__(self, d_model: int, num_labels: int):
        super().__init__()
        self.dense = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, num_labels)

    def forward(self, x_BxD):
        return self.out_proj(torch.tanh(self.dense(x_BxD)))


def check_token_ids(x, name: str, vocab_size: int, device) -> torch.Tensor:
    """`x` (array, list or tensor) as a (batch, length) long tensor on `device`, ids in range."""
    t = torch.as_tensor(x, device=device)
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (batch, length >= 1), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer token ids, got dtype {t.dtype}")
    t = t.long()
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name}: token ids must lie in [0, vocab_size={vocab_size}), got min {lo} max {hi}")
    return t


def check_mask(x, name: str, shape, device):
    if x is None:
        return None
    t = torch.as_tensor(x, device=device)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.long()


class ReferenceBart(nn.Module):
    """One of BART's five models, chosen by `head` ("base", "lm", "cls", "qa", "causal").

    Parameter names are those of transformers' model for that head without the tied copies (see
    `parity.reference` for loading). Outputs carry the 4.x Flax output names.
    """

    def __init__(self, config, head: str, attn_impl: str = "eager"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {HEADS}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        if config.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function={config.activation_function!r} is not supported by the reference; "
                f"supported: {sorted(ACTIVATIONS)}"
            )
        self.config, self.head, self.attn_impl = config, head, attn_impl
        d, vocab = config.d_model, config.vocab_size
        self.model = BartDecoderOnlyCore(config) if head == "causal" else BartSeq2SeqCore(config)
        if head == "lm":
            self.register_buffer("final_logits_bias", torch.zeros(1, vocab))
        if head in ("lm", "causal") and not config.tie_word_embeddings:
            self.lm_head = Linear(d, vocab, bias=False)
        if head == "cls":
            self.classification_head = BartClassificationHead(d, config.num_labels)
        if head == "qa":
            self.qa_outputs = Linear(d, 2)

    @property
    def token_embedding(self) -> torch.Tensor:
        if self.head == "causal":
            return self.model.decoder.embed_tokens.weight
        return self.model.shared.weight

    def _side_embedding(self, side: str) -> torch.Tensor:
        """The token embedding `side` ("encoder"/"decoder") reads: its own when it has one."""
        module = getattr(self.model, side)
        own = getattr(module, "embed_tokens", None)
        return self.token_embedding if own is None else own.weight

    @property
    def device(self) -> torch.device:
        return self.token_embedding.device

    def _lm_logits(self, h_BxTxD):
        weight = self.lm_head.weight if hasattr(self, "lm_head") else self.token_embedding
        logits = linear(h_BxTxD, weight)
        if self.head == "lm":
            logits = logits + self.final_logits_bias
        return logits

    def _check_length(self, name, past_len, length):
        limit = self.config.max_position_embeddings
        if past_len + length > limit:
            raise ValueError(
                f"{name}: {past_len + length} positions (past {past_len} + new {length}) exceed "
                f"max_position_embeddings={limit}"
            )

    @torch.no_grad()
    def encode(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False):
        """Encoder pass: last_hidden_state, hidden_states (L+1), attentions (L)."""
        if self.head == "causal":
            raise ValueError("head 'causal' has no encoder; call forward/decode")
        ids = check_token_ids(input_ids, "input_ids", self.config.vocab_size, self.device)
        self._check_length("input_ids", 0, ids.shape[1])
        mask = check_mask(attention_mask, "attention_mask", ids.shape, self.device)
        return self.model.encoder(ids, self._side_embedding("encoder"), mask, output_hidden_states,
                                  output_attentions, self.attn_impl)

    @torch.no_grad()
    def decode(self, decoder_input_ids, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, past_key_values=None, use_cache=True,
               output_hidden_states=False, output_attentions=False):
        """Decoder pass, one step or many: feed only the new tokens when `past_key_values` is given.

        `past_key_values`: per decoder layer (self_k, self_v[, cross_k, cross_v]), each
        (batch, heads, length, head_dim); cross-attention K/V are computed once and then reused.
        `decoder_attention_mask` covers past and new tokens. `logits` is set for "lm" and "causal".
        """
        ids = check_token_ids(decoder_input_ids, "decoder_input_ids", self.config.vocab_size, self.device)
        b, t = ids.shape
        past_len = 0 if past_key_values is None else int(past_key_values[0][0].shape[2])
        self._check_length("decoder_input_ids", past_len, t)
        mask = check_mask(decoder_attention_mask, "decoder_attention_mask", (b, past_len + t), self.device)
        enc, enc_mask = encoder_hidden_states, None
        if enc is None and self.head != "causal":
            raise ValueError(f"head {self.head!r}: decode needs encoder_hidden_states")
        if enc is not None:
            enc = torch.as_tensor(enc, device=self.device).to(self.token_embedding.dtype)
            if enc.dim() != 3 or enc.shape[0] != b or enc.shape[2] != self.config.d_model:
                raise ValueError(
                    f"encoder_hidden_states: expected shape ({b}, length, {self.config.d_model}), "
                    f"got {tuple(enc.shape)}"
                )
            enc_mask = check_mask(encoder_attention_mask, "encoder_attention_mask", enc.shape[:2], self.device)
        out = self.model.decoder(ids, self._side_embedding("decoder"), mask, enc, enc_mask, past_key_values, use_cache,
                                 output_hidden_states, output_attentions, self.attn_impl)
        logits = self._lm_logits(out.last_hidden_state) if self.head in ("lm", "causal") else None
        return Output(logits=logits, **out)

    def _classify(self, ids_BxT, h_BxTxD):
        eos = torch.isin(ids_BxT, torch.tensor(eos_ids(self.config), device=ids_BxT.device))
        counts = eos.sum(dim=1).tolist()
        if len(set(counts)) != 1 or counts[0] == 0:
            raise ValueError(
                f"sequence classification needs the same number (>= 1) of <eos> tokens "
                f"(eos_token_id={self.config.eos_token_id!r}) in every row of input_ids; got {counts}"
            )
        if h_BxTxD.shape[1] != ids_BxT.shape[1]:
            raise ValueError(
                f"sequence classification reads the decoder state at the <eos> positions of input_ids: "
                f"decoder length {h_BxTxD.shape[1]} != input length {ids_BxT.shape[1]}"
            )
        last_eos_BxD = h_BxTxD[eos, :].view(h_BxTxD.shape[0], -1, h_BxTxD.shape[-1])[:, -1, :]
        return self.classification_head(last_eos_BxD)

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None, use_cache=False,
                output_hidden_states=False, output_attentions=False) -> Output:
        """The head's forward pass; output names as the 4.x Flax model outputs.

        Seq2seq heads default `decoder_input_ids` to shift_tokens_right(input_ids). The causal head takes
        `input_ids`/`attention_mask` as decoder inputs and optional `encoder_hidden_states`.
        """
        flags = dict(use_cache=use_cache, output_hidden_states=output_hidden_states,
                     output_attentions=output_attentions)
        if self.head == "causal":
            if decoder_input_ids is not None or decoder_attention_mask is not None:
                raise ValueError("head 'causal': pass input_ids/attention_mask, not decoder_input_ids")
            dec = self.decode(input_ids, encoder_hidden_states, encoder_attention_mask, attention_mask,
                              past_key_values, **flags)
            return Output(logits=dec.logits, hidden_states=dec.hidden_states, attentions=dec.attentions,
                          cross_attentions=dec.cross_attentions, past_key_values=dec.past_key_values)
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ValueError(f"head {self.head!r}: forward computes the encoder states from input_ids")
        enc = self.encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        ids = check_token_ids(input_ids, "input_ids", self.config.vocab_size, self.device)
        if decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(ids, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask,
                          past_key_values, **flags)
        h = dec.last_hidden_state
        if self.head == "base":
            head_out = dict(last_hidden_state=h)
        elif self.head == "lm":
            head_out = dict(logits=dec.logits)
        elif self.head == "cls":
            head_out = dict(logits=self._classify(ids, h))
        else:
            start_BxT, end_BxT = self.qa_outputs(h).split(1, dim=-1)
            head_out = dict(start_logits=start_BxT.squeeze(-1).contiguous(),
                            end_logits=end_BxT.squeeze(-1).contiguous())
        return Output(
            **head_out,
            past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
        )
