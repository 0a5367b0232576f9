"""`generate` for FlaxBartForConditionalGeneration and FlaxBartForCausalLM.

Settings come from keyword arguments, then `generation_config=`, then the model's
`generation_config` (its checkpoint's `generation_config.json`, else the generation fields of its
`config.json`), then transformers' global defaults. Tokens equal those of transformers' PyTorch
`generate` with the same weights and settings; the sequences have PyTorch's length (prompt plus
generated tokens, finished rows padded), not 4.x Flax's fixed `max_length`.

Each call runs one compiled program (see `flax_bart.search`), cached on the model per (batch,
bucketed lengths, static settings): the source (and a decoder-only prompt) is padded to a length
bucket with its attention mask, so a new prompt length reuses the program of its bucket.
`generate` reads its inputs on the host, so it cannot itself be called inside `jax.jit`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from flax_bart.generation_config import (
    GENERATION_CONFIG_NAME, UNSUPPORTED, GenerationConfig, unsupported_settings,
)
from flax_bart.logits_process import ProcessorSpec, custom_processors
from flax_bart.modules import ABSENT
from flax_bart.outputs import ModelOutput
from flax_bart.search import SearchPlan, loop_kernels, make_program
from flax_bart.validation import InputError, check_ids, check_length, check_mask

__all__ = ["GenerationConfig", "GenerationMixin", "FlaxGreedySearchOutput", "FlaxSampleOutput",
           "FlaxBeamSearchOutput", "bucket_length"]

Array = Any
GENERATE_ARGUMENTS = frozenset(GenerationConfig.field_names()) | frozenset(UNSUPPORTED)
# Compiled generate programs kept per model for calls with a caller's logits_processor objects (held by
# identity: a new processor object each call would otherwise keep one more program each time)
MAX_CUSTOM_PROGRAMS = 4


@struct.dataclass
class FlaxGreedySearchOutput(ModelOutput):
    """`sequences` (batch, length); `scores`: with output_scores, one (batch, vocab) array of
    processed scores per generated token (PyTorch's `scores`)."""

    sequences: Array = None
    scores: Optional[tuple] = None


@struct.dataclass
class FlaxSampleOutput(ModelOutput):
    sequences: Array = None
    scores: Optional[tuple] = None


@struct.dataclass
class FlaxBeamSearchOutput(ModelOutput):
    """`sequences_scores` (batch * num_return_sequences,): length-penalised log probabilities.
    `scores`: with output_scores, one (batch * num_beams, vocab) array of processed log probabilities
    per step (PyTorch's `scores`); without, the sequence scores, as 4.x Flax returned them."""

    sequences: Array = None
    scores: Any = None
    sequences_scores: Array = None


# ---- length buckets -----------------------------------------------------------------------------
def bucket_length(n: int) -> int:
    """The padded length for `n` tokens: 16, 32, 64, 128, then multiples of 128."""
    if n <= 16:
        return 16
    if n <= 128:
        return 1 << (n - 1).bit_length()
    return -(-n // 128) * 128


def _bucket_floor(bucket: int) -> int:
    """The smallest length that maps to `bucket`."""
    if bucket <= 16:
        return 1
    return (bucket // 2 if bucket <= 128 else bucket - 128) + 1


# ---- validation of settings ---------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _int(name: str, v, low: int) -> int:
    if not _is_int(v) or v < low:
        raise InputError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _float(name: str, v, positive: bool = False, unit: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise InputError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if (positive and not v > 0) or (unit and not 0.0 <= v <= 1.0) or not np.isfinite(v):
        raise InputError(f"{name} must be {'in [0, 1]' if unit else 'a positive number'}, got {v!r}")
    return v


def _token_ids(name: str, v, vocab_size: int) -> tuple[int, ...]:
    """None -> (); an id or a list of ids -> tuple, each in [0, vocab_size)."""
    if v is None:
        return ()
    ids = list(v) if isinstance(v, (list, tuple)) else [v]
    for i in ids:
        if not _is_int(i) or not 0 <= i < vocab_size:
            raise InputError(f"{name}={v!r}: every id must be an integer in [0, vocab_size={vocab_size})")
    return tuple(int(i) for i in ids)


def _one_token(name: str, v, vocab_size: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        raise InputError(f"{name} must be a single token id, got {v!r}")
    return _token_ids(name, v, vocab_size)[0]


def _bad_words(v, vocab_size: int, eos: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)) or not v or any(not isinstance(w, (list, tuple)) or not w for w in v):
        raise InputError(f"bad_words_ids must be a non-empty list of non-empty lists of token ids, got {v!r}")
    words = tuple(_token_ids("bad_words_ids", list(w), vocab_size) for w in v)
    return tuple(w for w in words if not (len(w) == 1 and w[0] in eos))  # PyTorch never bans <eos> alone


def _early_stopping(v) -> bool | str:
    if v is True or v is False or v == "never":
        return v
    raise InputError(f"early_stopping must be True, False or 'never', got {v!r}")


_DEFAULT_KEY = []


def _check_key(prng_key):
    """The key to sample with: `prng_key`, or jax.random.PRNGKey(0) (made once) like 4.x Flax."""
    if prng_key is None:
        if not _DEFAULT_KEY:
            _DEFAULT_KEY.append(jax.random.PRNGKey(0))
        return _DEFAULT_KEY[0]
    dtype = getattr(prng_key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return prng_key
    if np.ndim(prng_key) != 1 or dtype != np.uint32:
        raise InputError(f"prng_key must be a key from jax.random.PRNGKey or jax.random.key, got "
                         f"{type(prng_key).__name__} of shape {np.shape(prng_key)}")
    return prng_key


class GenerationMixin:
    """Adds `generate` (and `generation_config`) to the model classes that decode."""

    # ---- the model's generation config ---------------------------------------------------------
    @property
    def generation_config(self) -> GenerationConfig:
        """The model's generation settings: the one assigned (or read from generation_config.json), else
        one derived from the model's config. A derived one that nobody changed follows later changes of
        the config; once changed in place (`model.generation_config.max_length = 7`) it is kept, as 4.x did."""
        own = self.__dict__.get("_generation_config")
        derived = self.__dict__.get("_derived_generation_config")   # (config version, settings) when derived
        version = self.config.version
        if own is None:
            own = GenerationConfig.from_model_config(self.config)
            self.__dict__["_generation_config"] = own
            self.__dict__["_derived_generation_config"] = (version, own.to_dict())
        elif derived is not None and derived[0] != version and own.to_dict() == derived[1]:
            fresh = GenerationConfig.from_model_config(self.config)   # untouched: follow the config, in place
            own.update_from(fresh)
            self.__dict__["_derived_generation_config"] = (version, own.to_dict())
        return own

    @generation_config.setter
    def generation_config(self, value) -> None:
        if isinstance(value, dict):
            value = GenerationConfig.from_dict(value)
        if value is not None and not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig or a dict, got {type(value).__name__}")
        self._generation_config = value
        self._derived_generation_config = None

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def update_inputs_for_generation(self, model_outputs, model_kwargs):
        """As 4.x: `model_kwargs` from `prepare_inputs_for_generation` (updated in place) for the next token:
        the new cache, the next position (the decoder's; the causal LM's own)."""
        key = "position_ids" if self.head == "causal" else "decoder_position_ids"
        model_kwargs["past_key_values"] = model_outputs.past_key_values
        model_kwargs[key] = model_kwargs[key][:, -1:] + 1
        return model_kwargs

    def _loaded_from(self, directory: str, settings: dict) -> None:
        """From `from_pretrained`: read the checkpoint's `generation_config.json` when it has one."""
        super()._loaded_from(directory, settings)
        file = os.path.join(directory, GENERATION_CONFIG_NAME) if directory else None
        if file and os.path.isfile(file):
            # as 4.x: generation settings among from_pretrained's keyword arguments override the file's
            settings = {k: v for k, v in settings.items() if k in GenerationConfig.field_names()}
            self.generation_config = GenerationConfig.from_json_file(file).replace(**settings)

    def _save_extra_files(self, directory: str) -> None:
        """From `save_pretrained`: also `generation_config.json`."""
        super()._save_extra_files(directory)
        self.generation_config.save_pretrained(directory)

    # ---- generate ------------------------------------------------------------------------------
    def _resolve_generation_config(self, generation_config, kwargs) -> tuple[GenerationConfig, bool]:
        unknown = sorted(set(kwargs) - GENERATE_ARGUMENTS)
        if unknown:
            raise TypeError(
                f"generate() got unknown arguments {unknown}; generation settings it takes: "
                f"{sorted(GenerationConfig.field_names())}"
            )
        if isinstance(generation_config, dict):
            generation_config = GenerationConfig.from_dict(generation_config)
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig or a dict, got "
                            f"{type(generation_config).__name__} (the positional order is 4.x's: generate(input_ids, "
                            f"generation_config, prng_key, trace, params, logits_processor); pass attention_mask= "
                            f"by keyword)")
        # Like transformers: the config's unset fields come from the model's; keyword arguments then
        # override, an explicit None included (e.g. forced_eos_token_id=None switches it off).
        cfg = self.generation_config if generation_config is None else generation_config.merged_over(
            self.generation_config)
        has_default_max_length = cfg.max_length is None and kwargs.get("max_length") is None
        cfg = cfg.replace(**kwargs).with_defaults()
        refused = unsupported_settings(cfg.to_dict())
        if refused:
            raise InputError(
                f"generation settings not supported by flax_bart's generate: {refused} "
                f"(from the arguments, generation_config or the checkpoint's generation config)"
            )
        return cfg, has_default_max_length

    def generate(self, input_ids, generation_config=None, prng_key=None, trace: bool = True, params=None,
                 logits_processor=None, *, attention_mask=None, **kwargs):
        """Generate token ids: greedy, sampling (`do_sample=True`, with `prng_key`) or beam search
        (`num_beams > 1`). The positional order is 4.x's; `attention_mask`, `decoder_input_ids` and the
        generation settings (see `GenerationConfig`) are keywords. `trace=False` runs the same program
        op by op (for debugging; slow). `logits_processor`: callables `fn(input_ids, scores, cur_len) ->
        scores`, as 4.x's processors, applied after the built-in ones (see `custom_processors`).
        Returns `FlaxGreedySearchOutput`, `FlaxSampleOutput` or `FlaxBeamSearchOutput`."""
        decoder_ids = kwargs.pop("decoder_input_ids", None)
        custom = custom_processors(logits_processor)
        cfg, default_max = self._resolve_generation_config(generation_config, kwargs)
        traced = isinstance(input_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer)
        if traced and cfg.output_scores:
            raise InputError("output_scores=True inside a caller's jax.jit: the number of steps is not known "
                             "there; call generate outside jit for per-step scores")
        ids, mask, eos, pad = self._generation_inputs(input_ids, attention_mask, cfg, traced)
        arrays, prompt_len, slots, src = self._generation_prompt(ids, mask, cfg, pad, decoder_ids)
        plan, scalars = self._generation_plan(cfg, default_max, ids.shape[0], prompt_len, slots, src, eos, pad,
                                              custom)
        program = self._generate_program(plan)
        params = self._resolve_params(params)
        args = (params, dict(arrays), scalars, _check_key(prng_key), loop_kernels(self.module, plan, params))
        if trace or traced:
            out = program(*args)
        else:
            with jax.disable_jit():
                out = program(*args)
        if traced:
            return self._traced_output(plan, out, prompt_len)
        return self._generate_output(plan, jax.device_get(out), prompt_len)

    @staticmethod
    def _traced_output(plan: SearchPlan, out: dict, prompt_len: int):
        """The output inside a caller's jit: every row `prompt + new_tokens` wide (4.x's fixed `max_length`),
        the slots past the tokens generated holding the pad token."""
        seqs = out["sequences"][:, plan.prompt_slots - prompt_len:]
        done = out["steps"] if plan.mode in ("greedy", "sample") else out["generated"]
        seqs = jnp.where(jnp.arange(seqs.shape[1])[None] < prompt_len + done, seqs, plan.pad_token_id)
        if plan.mode == "greedy":
            return FlaxGreedySearchOutput(sequences=seqs, scores=None)
        if plan.mode == "sample":
            return FlaxSampleOutput(sequences=seqs, scores=None)
        return FlaxBeamSearchOutput(sequences=seqs, scores=out["sequences_scores"],
                                    sequences_scores=out["sequences_scores"])

    def _generation_inputs(self, input_ids, attention_mask, cfg: GenerationConfig, traced: bool = False):
        """Checked (ids, mask, eos ids, pad id); the mask inferred as transformers does. `traced`: inside a
        caller's jit, shapes are checked, values not (an id out of range gives NaN embeddings, as in the
        forward pass), and the arrays stay jax arrays."""
        if input_ids is None:
            raise InputError("input_ids is required")
        c = self.config
        xp = jnp if traced else np
        ids = xp.asarray(input_ids)
        if traced and (ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer)):
            raise InputError(f"input_ids must be a 2-D integer array, got shape {ids.shape} of {ids.dtype}")
        if not traced:
            check_ids("input_ids", ids, c.vocab_size)
        ids = ids.astype(xp.int32)
        b, t = ids.shape
        check_length("input_ids", t, c.max_position_embeddings)
        check_mask("attention_mask", attention_mask, (b, t))
        eos = _token_ids("eos_token_id", cfg.eos_token_id, c.vocab_size)
        pad = _one_token("pad_token_id", cfg.pad_token_id, c.vocab_size)
        if pad is None and eos:
            pad = eos[0]
        if attention_mask is not None:
            mask = xp.asarray(attention_mask).astype(xp.int32)
        elif self.head == "causal" and pad is not None and pad not in eos:
            mask = (ids != pad).astype(xp.int32)  # transformers infers it so for decoder-only models
        else:
            mask = xp.ones((b, t), xp.int32)
        return ids, mask, eos, pad

    def _generation_prompt(self, ids, mask, cfg: GenerationConfig, pad, decoder_ids=None):
        """(arrays for the program, decoder prompt length, its bucket, bucketed source length). The
        decoder prompt is left-padded to its bucket (masked), so one program serves a bucket's lengths."""
        c, (b, t) = self.config, ids.shape
        fill = pad if pad is not None else 0
        xp = jnp if isinstance(ids, jax.Array) else np   # jnp inside a caller's jit (_generation_inputs)

        def left_padded(prompt, prompt_mask):
            n = prompt.shape[1]
            slots = bucket_length(n)
            return dict(prompt=xp.pad(prompt, ((0, 0), (slots - n, 0)), constant_values=fill),
                        prompt_mask=xp.pad(prompt_mask, ((0, 0), (slots - n, 0)), constant_values=ABSENT)), n, slots

        if self.head == "causal":  # the prompt is the decoder's
            if decoder_ids is not None:
                raise InputError("decoder_input_ids is for encoder-decoder models; FlaxBartForCausalLM takes its "
                                 "prompt as input_ids")
            arrays, n, slots = left_padded(ids, mask)
            return arrays, n, slots, 0
        start = _one_token("decoder_start_token_id", cfg.decoder_start_token_id, c.vocab_size)
        start = start if start is not None else _one_token("bos_token_id", cfg.bos_token_id, c.vocab_size)
        if start is None:
            raise InputError("decoder_start_token_id (or bos_token_id) must be set for encoder-decoder generation")
        if decoder_ids is None:
            prompt = np.full((b, 1), start, np.int32)
        else:
            prompt = self._decoder_prompt(decoder_ids, b, start)
        arrays, n, slots = left_padded(prompt, np.ones(prompt.shape, np.int32))
        src = min(bucket_length(t), c.max_position_embeddings)  # right-pad the source, masked
        arrays.update(input_ids=xp.pad(ids, ((0, 0), (0, src - t)), constant_values=fill),
                      attention_mask=xp.pad(mask, ((0, 0), (0, src - t)), constant_values=ABSENT))
        return arrays, n, slots, src

    def _decoder_prompt(self, decoder_ids, batch: int, start: int) -> np.ndarray:
        """`decoder_input_ids` as the decoder's prompt, every row attended: the start token put first
        when no row begins with it, as transformers' PyTorch `generate` does (4.x Flax took the ids
        as they were, so the two agree on a prompt that begins with the start token)."""
        if isinstance(decoder_ids, jax.core.Tracer):
            raise InputError("generate() needs concrete decoder_input_ids: call it outside jax.jit")
        prompt = np.asarray(decoder_ids)
        if prompt.ndim != 2 or prompt.shape[0] != batch or prompt.shape[1] < 1:
            raise InputError(f"decoder_input_ids must have shape (batch={batch}, length >= 1), got {prompt.shape}")
        check_ids("decoder_input_ids", prompt, self.config.vocab_size)
        prompt = prompt.astype(np.int32)
        if (prompt[:, 0] != start).all():
            prompt = np.concatenate([np.full((batch, 1), start, np.int32), prompt], axis=1)
        check_length("decoder_input_ids", prompt.shape[1], self.config.max_position_embeddings)
        return prompt

    def _generation_plan(self, cfg: GenerationConfig, default_max: bool, batch: int, prompt_len: int, slots: int,
                         src: int, eos: tuple, pad, custom: tuple = ()):
        """The static SearchPlan (compile key) and the traced scalars, from validated settings."""
        v, max_pos, seq2seq = self.config.vocab_size, self.config.max_position_embeddings, self.head != "causal"
        if cfg.max_new_tokens is not None:
            new = _int("max_new_tokens", cfg.max_new_tokens, 1)
            max_length, length_arg = prompt_len + new, "max_new_tokens"
        elif default_max:  # transformers: 20 new tokens, within max_position_embeddings
            new, length_arg = 20, "max_length"
            max_length = min(prompt_len + new, max_pos)
        else:  # a total length: the buffers fit the shortest prompt of this bucket
            max_length, length_arg = _int("max_length", cfg.max_length, 1), "max_length"
            new = max_length - (prompt_len if seq2seq else _bucket_floor(slots))
        if max_length <= prompt_len:
            raise InputError(f"max_length={max_length} leaves no room to generate after the "
                             f"{'decoder prompt' if seq2seq else 'input_ids'} of length {prompt_len}; "
                             f"raise max_length or set max_new_tokens")
        if max_length > max_pos:
            raise InputError(f"{length_arg}: sequences of up to {max_length} tokens need positions beyond "
                             f"max_position_embeddings={max_pos}")
        if cfg.min_new_tokens is not None:
            min_length = prompt_len + _int("min_new_tokens", cfg.min_new_tokens, 0)
        else:
            min_length = _int("min_length", cfg.min_length, 0)

        num_beams = _int("num_beams", cfg.num_beams, 1)
        nrs = _int("num_return_sequences", cfg.num_return_sequences, 1)
        do_sample = bool(cfg.do_sample)
        if num_beams > 1:
            mode = "beam_sample" if do_sample else "beam"
            if nrs > num_beams:
                raise InputError(f"num_return_sequences={nrs} must be <= num_beams={num_beams}")
        else:
            mode = "sample" if do_sample else "greedy"
            if mode == "greedy" and nrs != 1:
                raise InputError(f"num_return_sequences={nrs}: greedy search returns one sequence per input; "
                                 "use do_sample=True or num_beams > 1")
        rep = _float("repetition_penalty", cfg.repetition_penalty, positive=True)
        temperature = _float("temperature", cfg.temperature, positive=True) if do_sample else 1.0
        top_p = _float("top_p", cfg.top_p, unit=True) if do_sample else 1.0
        top_k = _int("top_k", cfg.top_k, 0) if do_sample else 0
        forced_bos = _one_token("forced_bos_token_id", cfg.forced_bos_token_id, v)
        spec = ProcessorSpec(
            vocab_size=v, eos_token_ids=eos, repetition_penalty=rep != 1.0,
            no_repeat_ngram_size=_int("no_repeat_ngram_size", cfg.no_repeat_ngram_size, 0),
            bad_words_ids=_bad_words(cfg.bad_words_ids, v, eos),
            min_length=bool(eos) and (min_length > 0 or (cfg.min_new_tokens or 0) > 0),
            forced_bos_token_id=forced_bos,
            forced_eos_token_ids=_token_ids("forced_eos_token_id", cfg.forced_eos_token_id, v),
            suppress_tokens=_token_ids("suppress_tokens", cfg.suppress_tokens, v),
            begin_suppress_tokens=_token_ids("begin_suppress_tokens", cfg.begin_suppress_tokens, v),
            temperature=temperature != 1.0, top_k=top_k, top_p=top_p < 1.0,
            min_tokens_to_keep=(len(eos) + 1 if eos else 2) if mode == "beam_sample" else 1,
            custom=custom, pad_token_id=pad if pad is not None else 0,
        )
        plan = SearchPlan(
            mode=mode, seq2seq=seq2seq, batch=batch, rows_per_item=num_beams if num_beams > 1 else nrs,
            src_len=src, prompt_slots=slots, new_tokens=new, processors=spec, eos_token_ids=eos,
            pad_token_id=pad if pad is not None else 0,
            fill_token_id=((pad if pad else eos[0]) if eos else -1),  # transformers' beam buffer fill
            length_penalty=_float("length_penalty", cfg.length_penalty),
            early_stopping=_early_stopping(cfg.early_stopping), num_return_sequences=nrs,
            output_scores=bool(cfg.output_scores),
        )
        begin_index = prompt_len + (1 if prompt_len == 1 and forced_bos is not None else 0)
        scalars = dict(
            prompt_len=np.int32(prompt_len), max_length=np.int32(max_length), min_length=np.int32(min_length),
            begin_index=np.int32(begin_index), repetition_penalty=np.float32(rep),
            temperature=np.float32(temperature), top_p_cut=np.float32(1.0 - top_p),
        )
        return plan, scalars

    def _generate_program(self, plan: SearchPlan):
        self._follow_config()
        programs = self.__dict__.setdefault("_generate_programs", {})
        if plan not in programs:
            def count_trace():
                self._generate_traces = getattr(self, "_generate_traces", 0) + 1
            if plan.processors.custom:   # a caller's processors are held by identity: keep only the latest few
                custom = [p for p in programs if p.processors.custom]
                for old in custom[:max(0, len(custom) - MAX_CUSTOM_PROGRAMS + 1)]:
                    del programs[old]
            programs[plan] = make_program(self.module, plan, count_trace, self.compiler_options)
        return programs[plan]

    @staticmethod
    def _generate_output(plan: SearchPlan, out: dict, prompt_len: int):
        first = plan.prompt_slots - prompt_len
        steps = int(out["steps"])
        scores = tuple(jax.device_put(out["scores"][i]) for i in range(steps)) if plan.output_scores else None
        if plan.mode in ("greedy", "sample"):
            seqs = jax.device_put(out["sequences"][:, first:plan.prompt_slots + steps])
            cls = FlaxGreedySearchOutput if plan.mode == "greedy" else FlaxSampleOutput
            return cls(sequences=seqs, scores=scores)
        seqs = jax.device_put(out["sequences"][:, first:plan.prompt_slots + int(out["generated"])])
        seq_scores = jax.device_put(out["sequences_scores"])
        return FlaxBeamSearchOutput(sequences=seqs, scores=scores if plan.output_scores else seq_scores,
                                    sequences_scores=seq_scores)
