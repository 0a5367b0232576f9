"""The parity harness's PyTorch reference BART: build it, load a Hugging Face state dict strictly, decode.

`build_reference(config, head, state_dict)` needs only torch (the config is read by attribute, so a
`flax_bart.BartConfig` or any object with BART's config fields works; a plain dict is turned into a
`flax_bart.BartConfig`). The numerics are in `parity.reference_modules`.

State dicts use the key names of transformers' BartModel / BartForConditionalGeneration /
BartForSequenceClassification / BartForQuestionAnswering / BartForCausalLM. The token embedding may
come under any subset of its tied names (`model.shared.weight`, `model.encoder.embed_tokens.weight`,
`model.decoder.embed_tokens.weight`, and `lm_head.weight` when `tie_word_embeddings`); the copies
present must be equal. As in transformers, a missing `final_logits_bias` means zeros and the legacy
`encoder.version`/`decoder.version` entries are ignored; any other missing or unexpected key, a wrong
shape or unequal tied copies raise `ReferenceLoadError` listing every problem.

`load_transformers_reference` (opt-in, `--reference transformers`) runs transformers' own model behind
the same forward / encode / decode / greedy_generate API.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Mapping

import numpy as np
import torch
from torch import nn

from parity.reference_modules import (
    HEADS, Output, ReferenceBart, as_id_list, check_mask, check_token_ids, shift_tokens_right,
)

__all__ = [
    "HEADS", "BartReference", "Output", "ReferenceLoadError", "TransformersReference", "build_reference",
    "greedy_generate", "legacy_cache", "load_transformers_reference", "resolve_dtype", "shift_tokens_right",
    "to_numpy",
]

_DTYPES = {
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_OPTIONAL_ZERO = ("final_logits_bias",)
_IGNORED = ("model.encoder.version", "model.decoder.version")
_FROM_CONFIG = object()


class ReferenceLoadError(ValueError):
    """A state dict that does not fit the reference model; every problem is listed."""

    def __init__(self, head, missing=(), unexpected=(), wrong_shapes=(), tied=()):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.wrong_shapes, self.tied = list(wrong_shapes), list(tied)
        lines = [f"cannot load the state dict into the reference BART (head {head!r}):"]
        for title, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                             ("wrong shapes", self.wrong_shapes), ("tied copies differ", self.tied)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items))
        super().__init__("\n".join(lines))


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.removeprefix("torch.").lower()
    else:  # numpy / jax dtypes
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of float64, float32, float16, bfloat16")
    return _DTYPES[name]


def _as_config(config):
    if isinstance(config, Mapping):
        from flax_bart.config import BartConfig

        return BartConfig.from_dict(config)
    return config


def _to_tensor(value, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(arr))
    raise TypeError(f"state dict entry {key!r}: expected a torch tensor or an array, got {type(value).__name__}")


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (NaN equal to NaN), compared in the wider of the two dtypes."""
    dt = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to("cpu", dt), b.to("cpu", dt)
    if torch.equal(a, b):
        return True
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])


class _KeyPlan:
    """The external (transformers) key names of a reference model, and its tied embedding group."""

    def __init__(self, model: ReferenceBart):
        self.head = model.head
        self.shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # internal names
        seq2seq = model.head != "causal"
        self.embedding = "model.shared.weight" if seq2seq else "model.decoder.embed_tokens.weight"
        separate = seq2seq and bool(getattr(model.config, "separate_input_embeddings", False))  # own params then
        aliases = ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"] \
            if seq2seq and not separate else []
        if model.head in ("lm", "causal") and model.config.tie_word_embeddings:
            aliases.append("lm_head.weight")
        self.tied = [self.external(self.embedding)] + [self.external(a) for a in aliases]

    def external(self, internal: str) -> str:
        return internal.removeprefix("model.") if self.head == "base" else internal

    def internal(self, external: str) -> str:
        return "model." + external if self.head == "base" else external

    def resolve(self, state_dict: Mapping) -> dict[str, torch.Tensor]:
        """Internal name -> tensor for every entry of the model; raises ReferenceLoadError."""
        values, copies, unexpected, wrong, tied_err = {}, [], [], [], []
        ignored = {self.external(k) for k in _IGNORED}
        for key, value in state_dict.items():
            if key in self.tied:
                copies.append((key, _to_tensor(value, key)))
            elif self.internal(key) in self.shapes and key not in ignored:
                t = _to_tensor(value, key)
                want = self.shapes[self.internal(key)]
                if tuple(t.shape) != want:
                    wrong.append(f"{key}: expected {want}, got {tuple(t.shape)}")
                values[self.internal(key)] = t
            elif key not in ignored:
                unexpected.append(key)
        want = self.shapes[self.embedding]
        bad_copies = [f"{key}: expected {want}, got {tuple(t.shape)}" for key, t in copies if tuple(t.shape) != want]
        wrong += bad_copies
        if copies and not bad_copies:
            first_key, first = copies[0]
            for key, t in copies[1:]:
                if not _same_values(first, t):
                    diff = float((first.double().cpu() - t.double().cpu()).abs().nan_to_num(nan=float("inf")).max())
                    tied_err.append(f"{key} != {first_key} (max |diff| {diff:.3g})")
            values[self.embedding] = first
        missing = [self.external(k) for k in self.shapes if k not in values and k != self.embedding
                   and k not in _OPTIONAL_ZERO]
        if not copies:
            missing.insert(0, " or ".join(self.tied))
        if missing or unexpected or wrong or tied_err:
            raise ReferenceLoadError(self.head, missing, unexpected, wrong, tied_err)
        for k in _OPTIONAL_ZERO:
            if k in self.shapes and k not in values:
                values[k] = torch.zeros(self.shapes[k])
        return values

    def export(self, values: Mapping[str, torch.Tensor], tied_copies: bool) -> dict[str, torch.Tensor]:
        out = {self.external(k): v for k, v in values.items()}
        if tied_copies:
            out.update({alias: values[self.embedding] for alias in self.tied[1:]})
        return out


def _draw(name: str, module: nn.Module, gen: torch.Generator, std: float, pad_token_id) -> None:
    """One module's share of BART's random init (normal(0, init_std), zero biases, unit LayerNorms)."""
    if isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
    elif isinstance(module, (nn.Linear, nn.Embedding)):
        w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float32) * std
        if isinstance(module, nn.Embedding) and "embed_positions" not in name and pad_token_id is not None:
            w[pad_token_id] = 0.0
        module.weight.copy_(w)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


def _init_weights(model: nn.Module, seed: int, std: float, pad_token_id) -> None:
    """BART's random init, module by module in order, from one generator: same for every dtype."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            _draw(name, module, gen, std, pad_token_id)


def _in_body(name: str) -> bool:
    return name == "model" or name.startswith("model.")


def random_head_weights(config, head: str, seed: int, after_body: dict) -> dict[str, np.ndarray]:
    """What `build_reference(config, head, seed=seed)` draws for the modules outside the shared body
    (`model.*`: `qa_outputs`, `classification_head`, `lm_head`), under transformers' names, as numpy.

    The body comes first in the module order, so those values depend on the body only through the
    generator's state after it. `after_body` (a dict the caller keeps, e.g. per checkpoint) holds that
    state per body shape and seed: the first head drawn pays for the body's draws (about 0.7 s for
    BART-base), any later head of the same body draws only its own weights."""
    config = _as_config(config)
    with torch.device("meta"), _init_skipped():
        model = BartReference(config, head)
    names = [n for n, _ in model.named_modules() if n]
    if any(_in_body(a) and not _in_body(b) for a, b in zip(names[1:], names)):   # a body module after a head one
        raise RuntimeError(f"internal: the {head!r} reference's modules do not put the body first: {names}")
    key = (repr(sorted(config.to_dict().items())), type(model.model).__name__, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if key in after_body:
            gen.set_state(after_body[key])
        else:   # the body's draws as _draw makes them, values dropped: only the generator's state is kept
            for name, module in model.named_modules():
                if _in_body(name) and isinstance(module, (nn.Linear, nn.Embedding)):
                    torch.randn(module.weight.shape, generator=gen, dtype=torch.float32)
            after_body[key] = gen.get_state()
        for child, sub in model.named_children():
            if child != "model":
                sub.to_empty(device="cpu")
                for t in itertools.chain(sub.parameters(), sub.buffers()):
                    t.zero_()
        for name, module in model.named_modules():   # the same order as _init_weights
            if name and not _in_body(name):
                _draw(name, module, gen, config.init_std, config.pad_token_id)
        # the root's own tensors (final_logits_bias) are zero, as build_reference leaves them
        own = {k: torch.zeros(v.shape, dtype=torch.float32) if v.is_meta else v
               for k, v in model.state_dict().items() if not _in_body(k)}
    return {k: v.numpy() for k, v in _KeyPlan(model).export(own, tied_copies=False).items()}


class BartReference(ReferenceBart):
    """ReferenceBart plus strict Hugging Face state dict loading/export and greedy decoding."""

    def load_hf_state_dict(self, state_dict: Mapping) -> None:
        values = _KeyPlan(self).resolve(state_dict)
        own = self.state_dict()
        with torch.no_grad():
            for k, v in values.items():
                own[k].copy_(v)

    def hf_state_dict(self, tied_copies: bool = True) -> dict[str, torch.Tensor]:
        """The weights under transformers' key names (with every tied copy unless told otherwise)."""
        return _KeyPlan(self).export(self.state_dict(), tied_copies)

    def greedy_generate(self, input_ids, attention_mask=None, max_new_tokens=None, **kwargs) -> torch.Tensor:
        return greedy_generate(self, input_ids, attention_mask, max_new_tokens, **kwargs)


@contextlib.contextmanager
def _init_skipped():
    """`torch.nn.init`'s in-place initialisers as no-ops: on the meta device they only cost time (its
    `normal_` imports torch._dynamo, ~3 s on the 2-core CPU, for values that are never stored)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")
             and callable(getattr(torch.nn.init, n))]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def build_reference(config, head: str, state_dict: Mapping | None = None, dtype=torch.float32,
                    device="cpu", attn_impl: str = "eager", seed: int = 0) -> BartReference:
    """The reference model for `head` in eval mode; random weights from `seed` when no state dict."""
    config = _as_config(config)
    # Built on the meta device, then given zeroed storage: every tensor is set below (PyTorch's own init,
    # overwritten anyway, took ~3 s of a warm BART-base demo gate). No parameter is shared between two
    # modules (the tied embedding is read by reference), so `to_empty` breaks no tie.
    with torch.device("meta"), _init_skipped():
        model = BartReference(config, head, attn_impl)
    model = model.to(dtype=resolve_dtype(dtype)).to_empty(device=device)   # storage allocated once, in the dtype
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            t.zero_()
    if state_dict is None:
        _init_weights(model, seed, config.init_std, config.pad_token_id)
    else:
        model.load_hf_state_dict(state_dict)
    return model.eval()


def _generation_settings(config, head, kw):
    unknown = set(kw) - {"max_length", "decoder_start_token_id", "eos_token_id", "pad_token_id",
                         "forced_bos_token_id", "forced_eos_token_id"}
    if unknown:
        raise TypeError(f"greedy_generate: unknown arguments {sorted(unknown)}")
    s = {k: getattr(config, k) if kw.get(k, _FROM_CONFIG) is _FROM_CONFIG else kw[k]
         for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "forced_bos_token_id",
                   "forced_eos_token_id")}
    s["eos_token_id"] = as_id_list(s["eos_token_id"])
    s["forced_eos_token_id"] = as_id_list(s["forced_eos_token_id"])
    if s["pad_token_id"] is None and s["eos_token_id"]:
        s["pad_token_id"] = s["eos_token_id"][0]
    if head == "lm" and s["decoder_start_token_id"] is None:
        raise ValueError("greedy_generate: decoder_start_token_id is None (argument and config)")
    return s


@torch.no_grad()
def greedy_generate(model: ReferenceBart, input_ids, attention_mask=None, max_new_tokens=None, **kwargs):
    """Plain greedy decoding with a KV cache, as transformers' generate(do_sample=False, num_beams=1).

    Supported: `max_new_tokens` or `max_length` (total length of the returned sequences),
    `decoder_start_token_id`, `eos_token_id` (int or list: a row stops at its first one, then gets
    `pad_token_id`), `forced_bos_token_id` (forced when the sequence has length 1) and
    `forced_eos_token_id` (forced at `max_length - 1`). Each defaults to the config's value; pass None
    to switch one off. Without `attention_mask`, pad tokens are masked when pad differs from eos (as
    transformers infers it). Returns the sequences: `decoder_start + generated` for "lm",
    `prompt + generated` for "causal"; with `output_scores=True`, `(sequences, scores)` where `scores`
    holds one (batch, vocab) float32 tensor of processed scores per generated token, as transformers'
    `output_scores` (forced steps: 0 at the forced token, -inf elsewhere). Scores are compared in float32.
    """
    if model.head not in ("lm", "causal"):
        raise ValueError(f"greedy_generate needs head 'lm' or 'causal', got {model.head!r}")
    max_length = kwargs.pop("max_length", None)
    output_scores = bool(kwargs.pop("output_scores", False))
    s = _generation_settings(model.config, model.head, kwargs)
    dev = model.device
    ids = check_token_ids(input_ids, "input_ids", model.config.vocab_size, dev)
    mask = check_mask(attention_mask, "attention_mask", ids.shape, dev)
    if mask is None:
        pad = s["pad_token_id"]
        infer = pad is not None and bool((ids == pad).any()) and pad not in s["eos_token_id"]
        mask = (ids != pad).long() if infer else torch.ones_like(ids)
    batch = ids.shape[0]
    if model.head == "lm":
        enc = model.encode(ids, mask).last_hidden_state
        seq, dec_mask = torch.full((batch, 1), s["decoder_start_token_id"], dtype=torch.long, device=dev), None
    else:
        enc, seq, dec_mask = None, ids, mask
    if (max_new_tokens is None) == (max_length is None):
        raise ValueError("greedy_generate: pass exactly one of max_new_tokens and max_length")
    max_length = seq.shape[1] + max_new_tokens if max_new_tokens is not None else max_length
    eos = torch.tensor(s["eos_token_id"], dtype=torch.long, device=dev)
    unfinished = torch.ones(batch, dtype=torch.bool, device=dev)
    past, step, all_scores = None, seq, []
    while seq.shape[1] < max_length:
        out = model.decode(step, enc, mask if enc is not None else None, dec_mask, past, use_cache=True)
        past, scores = out.past_key_values, out.logits[:, -1, :].float()
        if s["forced_bos_token_id"] is not None and seq.shape[1] == 1:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, s["forced_bos_token_id"]] = 0.0
        if s["forced_eos_token_id"] and seq.shape[1] == max_length - 1:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, s["forced_eos_token_id"]] = 0.0
        all_scores.append(scores)
        nxt = scores.argmax(dim=-1)
        if eos.numel():
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, s["pad_token_id"]))
            unfinished &= ~torch.isin(nxt, eos)
        seq, step = torch.cat([seq, nxt[:, None]], dim=1), nxt[:, None]
        if dec_mask is not None:
            dec_mask = torch.cat([dec_mask, dec_mask.new_ones(batch, 1)], dim=1)
        if not bool(unfinished.any()):
            break
    return (seq, tuple(all_scores)) if output_scores else seq


def legacy_cache(past):
    """A decoder cache as per-layer tuples (self_k, self_v[, cross_k, cross_v]); also transformers' Cache."""
    if past is None or isinstance(past, (tuple, list)):
        return past
    if hasattr(past, "self_attention_cache"):
        sa, ca = past.self_attention_cache, past.cross_attention_cache
        n = len(sa.layers)
        return tuple((sa.layers[i].keys, sa.layers[i].values)
                     + ((ca.layers[i].keys, ca.layers[i].values) if len(ca.layers) > i
                        and ca.layers[i].keys is not None and ca.layers[i].keys.numel() else ())
                     for i in range(n))
    return tuple((layer.keys, layer.values) for layer in past.layers)


def to_numpy(x):
    """Tensors (nested in dicts/tuples, caches included) as numpy arrays; bf16 as ml_dtypes.bfloat16."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            import ml_dtypes

            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    if isinstance(x, dict):
        return type(x)({k: to_numpy(v) for k, v in x.items()})
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(v) for v in x)
    if x is not None and hasattr(x, "layers"):
        return to_numpy(legacy_cache(x))
    return x



# ---- transformers' own BART behind the same API (opt-in: --reference transformers) ---------------

_HF_CLASSES = {
    "base": "BartModel", "lm": "BartForConditionalGeneration", "cls": "BartForSequenceClassification",
    "qa": "BartForQuestionAnswering", "causal": "BartForCausalLM",
}


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "the transformers reference (--reference transformers) needs the `transformers` package, "
            "which is not installed; the built-in reference (parity.reference.build_reference) needs only torch"
        ) from e
    return transformers


def load_transformers_reference(config, head: str, state_dict: Mapping | None = None, dtype=torch.float32,
                                device="cpu", attn_impl: str = "eager", seed: int = 0):
    """transformers' own model for `head`, loaded with the same strict rules as `build_reference`
    (random weights equal to `build_reference(..., seed=seed)` when no state dict is given)."""
    tf = _import_transformers()
    config = _as_config(config)
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}")
    with torch.device("meta"):
        plan = _KeyPlan(ReferenceBart(config, head))
    if state_dict is None:
        values = build_reference(config, head, seed=seed).state_dict()
    else:
        values = plan.resolve(state_dict)
    dtype = resolve_dtype(dtype)
    hf_config = config if isinstance(config, tf.PretrainedConfig) else tf.BartConfig.from_dict(config.to_dict())
    model = getattr(tf, _HF_CLASSES[head])._from_config(hf_config, attn_implementation=attn_impl, dtype=dtype)
    model.load_state_dict(plan.export(values, tied_copies=True), strict=True)
    return TransformersReference(model.to(device).eval(), config, head)


class TransformersReference:
    """A transformers BART model with BartReference's forward / encode / decode / greedy_generate.

    Its `past_key_values` are transformers Cache objects (pass them back as they are; `legacy_cache`
    turns them into tensors).
    """

    def __init__(self, model, config, head: str):
        self.model, self.config, self.head = model, config, head

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _core(self):
        return self.model if self.head == "base" else self.model.model

    def _ids(self, x, name):
        return None if x is None else check_token_ids(x, name, self.config.vocab_size, self.device)

    def _mask(self, x):
        return None if x is None else torch.as_tensor(x, device=self.device).long()

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None, use_cache=False,
                output_hidden_states=False, output_attentions=False) -> Output:
        kw = dict(use_cache=use_cache, output_hidden_states=output_hidden_states,
                  output_attentions=output_attentions, return_dict=True)
        if past_key_values is not None:
            kw["past_key_values"] = past_key_values
        ids, mask = self._ids(input_ids, "input_ids"), self._mask(attention_mask)
        if self.head == "causal":
            kw["past_key_values"] = self._causal_cache(past_key_values, use_cache, encoder_hidden_states)
            out = self.model(input_ids=ids, attention_mask=mask, encoder_hidden_states=encoder_hidden_states,
                             encoder_attention_mask=self._mask(encoder_attention_mask), **kw)
            return Output(logits=out.logits, hidden_states=out.hidden_states, attentions=out.attentions,
                          cross_attentions=out.cross_attentions or None, past_key_values=out.past_key_values)
        if encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ValueError(f"head {self.head!r}: forward computes the encoder states from input_ids")
        out = self.model(input_ids=ids, attention_mask=mask,
                         decoder_input_ids=self._ids(decoder_input_ids, "decoder_input_ids"),
                         decoder_attention_mask=self._mask(decoder_attention_mask), **kw)
        if self.head == "base":
            head_out = dict(last_hidden_state=out.last_hidden_state)
        elif self.head == "qa":
            head_out = dict(start_logits=out.start_logits, end_logits=out.end_logits)
        else:
            head_out = dict(logits=out.logits)
        return Output(**head_out, past_key_values=out.past_key_values,
                      decoder_hidden_states=out.decoder_hidden_states, decoder_attentions=out.decoder_attentions,
                      cross_attentions=out.cross_attentions, encoder_last_hidden_state=out.encoder_last_hidden_state,
                      encoder_hidden_states=out.encoder_hidden_states, encoder_attentions=out.encoder_attentions)

    __call__ = forward

    def _causal_cache(self, past, use_cache, encoder_hidden_states):
        """A fresh cache sized by use, not by the config: transformers v5 sizes BartForCausalLM's cache by
        `num_hidden_layers` (= encoder_layers) and fails when decoder_layers is larger."""
        if past is not None or not use_cache or self.head != "causal":
            return past
        tf = _import_transformers()
        if encoder_hidden_states is None:
            return tf.DynamicCache()
        return tf.EncoderDecoderCache(tf.DynamicCache(), tf.DynamicCache())

    @torch.no_grad()
    def encode(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False):
        if self.head == "causal":
            raise ValueError("head 'causal' has no encoder; call forward/decode")
        out = self._core().encoder(input_ids=self._ids(input_ids, "input_ids"),
                                   attention_mask=self._mask(attention_mask), return_dict=True,
                                   output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return Output(last_hidden_state=out.last_hidden_state, hidden_states=out.hidden_states,
                      attentions=out.attentions)

    @torch.no_grad()
    def decode(self, decoder_input_ids, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, past_key_values=None, use_cache=True,
               output_hidden_states=False, output_attentions=False):
        out = self._core().decoder(
            input_ids=self._ids(decoder_input_ids, "decoder_input_ids"),
            attention_mask=self._mask(decoder_attention_mask), encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=self._mask(encoder_attention_mask),
            past_key_values=self._causal_cache(past_key_values, use_cache, encoder_hidden_states),
            use_cache=use_cache, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            return_dict=True)
        h, logits = out.last_hidden_state, None
        if self.head in ("lm", "causal"):
            logits = self.model.lm_head(h)
            if self.head == "lm":
                logits = logits + self.model.final_logits_bias
        return Output(logits=logits, last_hidden_state=h, hidden_states=out.hidden_states,
                      attentions=out.attentions, cross_attentions=out.cross_attentions or None,
                      past_key_values=out.past_key_values)

    @torch.no_grad()
    def greedy_generate(self, input_ids, attention_mask=None, max_new_tokens=None, **kwargs) -> torch.Tensor:
        """transformers' generate(do_sample=False, num_beams=1) with `greedy_generate`'s settings."""
        tf = _import_transformers()
        max_length = kwargs.pop("max_length", None)
        output_scores = bool(kwargs.pop("output_scores", False))
        if (max_new_tokens is None) == (max_length is None):
            raise ValueError("greedy_generate: pass exactly one of max_new_tokens and max_length")
        s = _generation_settings(self.config, self.head, kwargs)
        settings = dict(
            do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, max_length=max_length,
            eos_token_id=s["eos_token_id"] or None, pad_token_id=s["pad_token_id"],
            forced_bos_token_id=s["forced_bos_token_id"], forced_eos_token_id=s["forced_eos_token_id"] or None,
            bos_token_id=self.config.bos_token_id,
        )
        extra = {"past_key_values": self._causal_cache(None, True, None)} if self.head == "causal" else {}
        if self.head == "lm":
            settings["decoder_start_token_id"] = s["decoder_start_token_id"]
        # generate() fills settings left at None from model.generation_config, so that is where ours go.
        if output_scores:
            settings.update(output_scores=True, return_dict_in_generate=True)
        saved, self.model.generation_config = self.model.generation_config, tf.GenerationConfig(**settings)
        try:
            out = self.model.generate(input_ids=self._ids(input_ids, "input_ids"),
                                      attention_mask=self._mask(attention_mask), **extra)
            return (out.sequences, tuple(t.float() for t in out.scores)) if output_scores else out
        finally:
            self.model.generation_config = saved
