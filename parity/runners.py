"""Run one framework on one input case: forward pass, teacher-forced cached decoding, greedy decoding.

`TorchRunner` wraps the PyTorch reference (built-in or transformers'), `FlaxRunner` a flax_bart model
and its params; both return numpy arrays with the same names and shapes, so the harness compares them
without knowing which is which. Cached decoding feeds the decoder inputs one token at a time through
the framework's cache (`past_key_values` in PyTorch, `init_cache` + `decode` in Flax).

Flax cache length: `steps` for the seq2seq heads, `prompt length + steps` for "causal", in teacher
forcing and greedy decoding alike, so that both reuse one compiled decoding step.
"""

from __future__ import annotations

import numpy as np

from parity.collect import as_numpy, collect_outputs, decoder_inputs

DECODING_HEADS = ("base", "lm", "causal")   # heads whose decoder runs step by step with a cache
GREEDY_HEADS = ("lm", "causal")             # heads with greedy decoding


def greedy_settings(config, head: str) -> dict:
    """Greedy settings exactly as the reference's `greedy_generate` reads them from the config."""
    from parity.reference import _generation_settings

    return _generation_settings(config, head, {})


def _pad_to(seqs: np.ndarray, length: int, pad: int) -> np.ndarray:
    seqs = np.asarray(seqs, dtype=np.int64)[:, :length]
    if seqs.shape[1] < length:
        seqs = np.concatenate([seqs, np.full((seqs.shape[0], length - seqs.shape[1]), pad, np.int64)], axis=1)
    return seqs


def stack_scores(scores, steps: int) -> tuple[np.ndarray, int]:
    """((B, steps, V) float32 per-step scores, zero after the last step run; number of steps run)."""
    arrays = [np.asarray(as_numpy(x), np.float32) for x in scores][:steps]
    if not arrays:
        return np.zeros((0, steps, 0), np.float32), 0
    out = np.zeros((arrays[0].shape[0], steps, arrays[0].shape[-1]), np.float32)
    for i, a in enumerate(arrays):
        out[:, i] = a
    return out, len(arrays)


def new_tokens(head: str, case: dict, steps: int, config) -> int:
    """Greedy new tokens: `steps`, fewer where the positions run out (a causal prompt of max length)."""
    used = case["input_ids"].shape[1] if head == "causal" else 0
    return max(0, min(steps, config.max_position_embeddings - used))


def greedy_length(head: str, case: dict, steps: int, config) -> int:
    """Length of the compared greedy sequences: start token (lm) or prompt (causal), plus new tokens."""
    return (case["input_ids"].shape[1] if head == "causal" else 1) + new_tokens(head, case, steps, config)


def decode_steps(head: str, case: dict, steps: int) -> int:
    """Teacher-forced steps available in this case (at most the decoder length)."""
    return min(steps, decoder_inputs(head, case)[0].shape[1])


class TorchRunner:
    def __init__(self, model, head: str, config):
        self.model, self.head, self.config = model, head, config

    def forward(self, case: dict, decoder_input_ids=None):
        """(numpy outputs, encoder states tensor or None) of the full forward pass."""
        import torch

        with torch.no_grad():
            if self.head == "causal":
                ids = case["input_ids"] if decoder_input_ids is None else decoder_input_ids
                mask = case["attention_mask"]
                if mask.shape[1] != ids.shape[1]:
                    mask = np.concatenate([mask, np.ones((ids.shape[0], ids.shape[1] - mask.shape[1]), mask.dtype)],
                                          axis=1)
                out = self.model.forward(ids, mask, output_hidden_states=True, output_attentions=True)
                return collect_outputs(out, self.head), None
            dec = case["decoder_input_ids"] if decoder_input_ids is None else decoder_input_ids
            dec_mask = case.get("decoder_attention_mask") if decoder_input_ids is None else None
            out = self.model.forward(case["input_ids"], case["attention_mask"], dec, dec_mask,
                                     output_hidden_states=True, output_attentions=True)
            return collect_outputs(out, self.head), out["encoder_last_hidden_state"]

    def cached_steps(self, case: dict, encoder_states, steps: int) -> list[dict]:
        """Per step {"logits": (B, 1, V) or None, "hidden": (B, 1, D)}, teacher forced."""
        import torch

        ids, mask = decoder_inputs(self.head, case)
        enc_mask = None if self.head == "causal" else case["attention_mask"]
        past, out_steps = None, []
        with torch.no_grad():
            for s in range(decode_steps(self.head, case, steps)):
                out = self.model.decode(ids[:, s:s + 1], encoder_states, enc_mask,
                                        None if mask is None else mask[:, :s + 1], past, use_cache=True)
                past = out["past_key_values"]
                out_steps.append({"logits": as_numpy(out["logits"]), "hidden": as_numpy(out["last_hidden_state"])})
        return out_steps

    def greedy(self, case: dict, steps: int) -> dict:
        """{"ids": (B, L) sequences, "scores": (B, n, V) per-step scores, "steps": steps run}."""
        n = new_tokens(self.head, case, steps, self.config)
        seqs, scores = self.model.greedy_generate(case["input_ids"], case["attention_mask"], max_new_tokens=n,
                                                  output_scores=True)
        ids = _pad_to(as_numpy(seqs), greedy_length(self.head, case, steps, self.config),
                      greedy_settings(self.config, self.head)["pad_token_id"])
        stacked, run = stack_scores(scores, n)
        return {"ids": ids, "scores": stacked, "steps": run}


class FlaxRunner:
    """A flax_bart model of one head and dtype with its params (already cast and on the device)."""

    def __init__(self, model, params, head: str, config, fast_model=None, compile_mode: str = "optimized"):
        self.model, self.params, self.head, self.config = model, params, head, config
        self.greedy_path = "model.generate" if callable(getattr(model, "generate", None)) else "init_cache + decode loop"
        # compile_mode "auto": buckets of little work run `fast_model` (flax_bart.FAST_COMPILE) instead
        self.fast_model, self.compile_mode = fast_model, compile_mode
        self._n_params = None

    def for_bucket(self, case: dict) -> tuple["FlaxRunner", str]:
        """(the runner for a shape bucket's inputs, "fast" or "optimized"): see parity.options.fast_compile."""
        from parity.options import count_params, fast_compile

        if self.fast_model is None:   # one model for every bucket ("auto" without a fast copy: optimised)
            return self, "fast" if self.compile_mode == "fast" else "optimized"
        ids = case["input_ids"]
        dec = 0 if self.head == "causal" else case["decoder_input_ids"].shape[1]
        if self._n_params is None:   # counted once per runner, not per bucket
            self._n_params = count_params(self.params)
        if not fast_compile("auto", self._n_params, ids.shape[0] * (ids.shape[1] + dec)):
            return self, "optimized"
        return FlaxRunner(self.fast_model, self.params, self.head, self.config), "fast"

    def forward(self, case: dict):
        """(numpy outputs, encoder states on the device or None); the outputs leave the device in one
        `jax.device_get`, not tensor by tensor."""
        import jax

        if self.head == "causal":
            out = self.model(case["input_ids"], attention_mask=case["attention_mask"], params=self.params,
                             output_hidden_states=True, output_attentions=True)
            return collect_outputs(jax.device_get(out), self.head), None
        out = self.model(case["input_ids"], attention_mask=case["attention_mask"],
                         decoder_input_ids=case["decoder_input_ids"],
                         decoder_attention_mask=case.get("decoder_attention_mask"), params=self.params,
                         output_hidden_states=True, output_attentions=True)
        return collect_outputs(jax.device_get(out), self.head), out.encoder_last_hidden_state

    def cache_length(self, case: dict, steps: int) -> int:
        if self.head == "causal":
            return case["input_ids"].shape[1] + new_tokens(self.head, case, steps, self.config)
        return min(steps, self.config.max_position_embeddings)

    def _cache(self, batch: int, length: int, encoder_states):
        if self.head == "causal":
            return self.model.init_cache(batch, length, params=self.params)
        return self.model.init_cache(batch, length, encoder_states, params=self.params)

    def _step(self, ids, cache, encoder_states, enc_mask, dec_mask):
        """One cached call; returns (logits or None, last hidden state, new cache)."""
        if self.head == "causal":
            out = self.model(ids, attention_mask=dec_mask, params=self.params, past_key_values=cache,
                             output_hidden_states=True)
        else:
            out = self.model.decode(ids, encoder_states, encoder_attention_mask=enc_mask,
                                    decoder_attention_mask=dec_mask, past_key_values=cache, params=self.params,
                                    output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        return getattr(out, "logits", None), hidden, out.past_key_values

    def _full_mask(self, mask, batch: int, length: int):
        """A decoder mask covering the whole cache (future positions on: the causal mask hides them)."""
        if mask is None:
            return None
        extra = length - mask.shape[1]
        if extra <= 0:
            return mask[:, :length]
        return np.concatenate([mask, np.ones((batch, extra), mask.dtype)], axis=1)

    def cached_steps(self, case: dict, encoder_states, steps: int) -> list[dict]:
        import jax

        ids, mask = decoder_inputs(self.head, case)
        batch, length = ids.shape[0], self.cache_length(case, steps)
        cache = self._cache(batch, length, encoder_states)
        full = self._full_mask(mask, batch, length)
        enc_mask = None if self.head == "causal" else case["attention_mask"]
        out_steps = []
        for s in range(decode_steps(self.head, case, steps)):
            logits, hidden, cache = self._step(ids[:, s:s + 1], cache, encoder_states, enc_mask, full)
            out_steps.append({"logits": logits, "hidden": hidden})
        return jax.device_get(out_steps)   # one transfer after the loop: no host sync inside it

    def greedy(self, case: dict, encoder_states, steps: int) -> dict:
        """As `TorchRunner.greedy`: ids, per-step processed scores and the number of steps run."""
        s = greedy_settings(self.config, self.head)
        length = greedy_length(self.head, case, steps, self.config)
        steps = new_tokens(self.head, case, steps, self.config)
        if self.greedy_path == "model.generate":
            # The reference's greedy rules spelled out, so that no other generation setting of the
            # checkpoint (min_length, no_repeat_ngram_size, ...) applies to one side only.
            settings = dict(forced_bos_token_id=s["forced_bos_token_id"],
                            forced_eos_token_id=s["forced_eos_token_id"] or None,
                            eos_token_id=s["eos_token_id"] or None, pad_token_id=s["pad_token_id"],
                            min_length=0, no_repeat_ngram_size=0, repetition_penalty=1.0, bad_words_ids=None,
                            suppress_tokens=None, begin_suppress_tokens=None)
            if self.head != "causal":
                settings["decoder_start_token_id"] = s["decoder_start_token_id"]
            out = self.model.generate(case["input_ids"], attention_mask=case["attention_mask"], max_new_tokens=steps,
                                      num_beams=1, do_sample=False, output_scores=True, params=self.params,
                                      **settings)
            seqs, scores = out.sequences, out.scores
        else:
            seqs, scores = self._greedy_loop(case, encoder_states, steps, s)
        stacked, run = stack_scores(scores, steps)
        return {"ids": _pad_to(as_numpy(seqs), length, s["pad_token_id"]), "scores": stacked, "steps": run}

    def _greedy_loop(self, case: dict, encoder_states, steps: int, s: dict) -> tuple[np.ndarray, list]:
        """Greedy decoding with the same rules as the reference's `greedy_generate`: (sequences, scores)."""
        ids, mask = case["input_ids"], case["attention_mask"]
        batch = ids.shape[0]
        length = self.cache_length(case, steps)
        cache = self._cache(batch, length, encoder_states)
        if self.head == "causal":
            seq, full, enc_mask = ids.astype(np.int64), self._full_mask(mask, batch, length), None
            feed = seq
        else:
            seq = np.full((batch, 1), s["decoder_start_token_id"], np.int64)
            full, enc_mask, feed = None, mask, seq
        max_length = seq.shape[1] + new_tokens(self.head, case, steps, self.config)
        eos = np.asarray(s["eos_token_id"], np.int64)
        unfinished, all_scores = np.ones(batch, bool), []
        while seq.shape[1] < max_length:
            logits, _, cache = self._step(feed.astype(np.int32), cache, encoder_states, enc_mask, full)
            scores = np.asarray(logits[:, -1, :], dtype=np.float32)
            if s["forced_bos_token_id"] is not None and seq.shape[1] == 1:
                scores = np.full_like(scores, -np.inf)
                scores[:, s["forced_bos_token_id"]] = 0.0
            if s["forced_eos_token_id"] and seq.shape[1] == max_length - 1:
                scores = np.full_like(scores, -np.inf)
                scores[:, s["forced_eos_token_id"]] = 0.0
            all_scores.append(scores)
            nxt = scores.argmax(axis=-1).astype(np.int64)
            if eos.size:
                nxt = np.where(unfinished, nxt, s["pad_token_id"])
                unfinished &= ~np.isin(nxt, eos)
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
            feed = nxt[:, None]
            if not unfinished.any():
                break
        return seq, all_scores
