"""generate() equals transformers' PyTorch generate (token ids, and processed scores) on tiny models.

The models have an untied, random LM head and a small vocabulary so that greedy and beam search
produce varied tokens and some rows stop early; seeds are fixed ones checked to have no ties.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from bart_helpers import batch, flax_from_torch, torch_model  # noqa: E402
from flax_bart.logits_process import ProcessorSpec, StepContext, process, warp  # noqa: E402

VOCAB = 64
MODEL = dict(init_std=0.1, tie_word_embeddings=False, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def lm():
    tmodel = torch_model("lm", seed=1, **MODEL)
    model, params = flax_from_torch(tmodel, "lm")
    ids, mask = batch(seed=1, b=3, t=9, vocab=VOCAB)
    return tmodel, model, params, ids, mask


def _both(tmodel, model, params, ids, mask, **settings):
    out = model.generate(ids, attention_mask=mask, params=params, **settings)
    # transformers v5 sizes BartForCausalLM's default cache by encoder_layers: give it a dynamic one
    extra = {"past_key_values": transformers.DynamicCache()} if model.head == "causal" else {}
    with torch.no_grad():
        ref = tmodel.generate(torch.tensor(ids, dtype=torch.long),
                              attention_mask=None if mask is None else torch.tensor(mask, dtype=torch.long),
                              return_dict_in_generate=True, **settings, **extra)
    return out, ref


def _assert_same_ids(out, ref):
    np.testing.assert_array_equal(np.asarray(out.sequences), ref.sequences.numpy())


def _assert_close_scores(ours, theirs, atol=1e-4):
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        a, b = np.asarray(a), b.numpy()
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"step {step}: -inf positions differ")
        fin = np.isfinite(b)
        np.testing.assert_allclose(a[fin], b[fin], atol=atol, rtol=0, err_msg=f"step {step}")


def test_greedy_ids_and_scores(lm):
    out, ref = _both(*lm, max_new_tokens=12, output_scores=True)
    _assert_same_ids(out, ref)
    seqs = np.asarray(out.sequences)
    assert (seqs[:, 1:] == 2).any(axis=1).any() and seqs.shape[1] == 13  # a row stopped early, then padded
    _assert_close_scores(out.scores, ref.scores)


def test_greedy_processors(lm):
    """Repetition penalty, n-gram ban, bad words, suppression, min_new_tokens and eos as a list."""
    out, ref = _both(*lm, max_new_tokens=10, repetition_penalty=1.5, no_repeat_ngram_size=2,
                     bad_words_ids=[[20], [53, 20]], suppress_tokens=[10], begin_suppress_tokens=[62],
                     min_new_tokens=3, eos_token_id=[2, 44], output_scores=True)
    _assert_same_ids(out, ref)
    _assert_close_scores(out.scores, ref.scores)


@pytest.mark.parametrize("settings", [
    dict(num_beams=3, max_new_tokens=10, num_return_sequences=2, forced_eos_token_id=None),
    # bart-large-cnn style
    dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=6, max_length=14, early_stopping=True,
         forced_bos_token_id=0),
    dict(num_beams=4, max_new_tokens=9, early_stopping="never", length_penalty=0.5, forced_eos_token_id=None),
], ids=["beams3-nrs2", "cnn-style", "never"])
def test_beam_search(lm, settings):
    out, ref = _both(*lm, output_scores=True, **settings)
    _assert_same_ids(out, ref)
    np.testing.assert_allclose(np.asarray(out.sequences_scores), ref.sequences_scores.numpy(), atol=1e-4)
    _assert_close_scores(out.scores, ref.scores)


def test_beam_search_early_finish(lm):
    tmodel, model, params, ids, mask = lm
    out, ref = _both(tmodel, model, params, ids, mask, num_beams=2, max_new_tokens=12, early_stopping=False,
                     forced_eos_token_id=None, eos_token_id=[2, 53])
    _assert_same_ids(out, ref)


@pytest.mark.parametrize("prompt,settings", [
    ([[2], [2]], dict(max_new_tokens=8)),                                       # the start token alone
    ([[2, 0, 7], [2, 0, 9]], dict(max_new_tokens=8, output_scores=True)),       # a 4-slot bucket, one pad slot
    ([[0, 7], [5, 9]], dict(max_new_tokens=6)),                                 # no row starts with it: prepended
    ([[2, 0, 7, 11, 13], [2, 5, 9, 11, 13]], dict(num_beams=3, max_length=12, no_repeat_ngram_size=2,
                                                  min_new_tokens=3, output_scores=True)),
], ids=["start-only", "greedy-3", "prepended", "beams-5"])
def test_decoder_prompt(lm, prompt, settings):
    """`decoder_input_ids` as the decoder's prompt (transformers' and 4.x Flax's generate take it)."""
    tmodel, model, params, ids, mask = lm
    dec = np.asarray(prompt + [prompt[-1]], np.int32)[: ids.shape[0]]
    out = model.generate(ids, attention_mask=mask, params=params, decoder_input_ids=dec, **settings)
    with torch.no_grad():
        ref = tmodel.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                              decoder_input_ids=torch.tensor(dec, dtype=torch.long), return_dict_in_generate=True,
                              **settings)
    _assert_same_ids(out, ref)
    if settings.get("output_scores"):
        _assert_close_scores(out.scores, ref.scores)


def test_decoder_prompt_is_checked(lm):
    from flax_bart import InputError

    tmodel, model, params, ids, mask = lm
    with pytest.raises(InputError, match=r"decoder_input_ids must have shape \(batch=3, length >= 1\), got \(2, 2\)"):
        model.generate(ids, attention_mask=mask, params=params, decoder_input_ids=np.zeros((2, 2), np.int32))
    with pytest.raises(InputError, match="decoder_input_ids"):
        model.generate(ids, attention_mask=mask, params=params, decoder_input_ids=np.full((3, 2), VOCAB))


@pytest.fixture(scope="module")
def causal():
    tmodel = torch_model("causal", seed=4, **MODEL)
    model, params = flax_from_torch(tmodel, "causal")
    return tmodel, model, params


def test_causal_greedy_left_padded(causal):
    tmodel, model, params = causal
    ids, _ = batch(seed=2, b=2, t=7, vocab=VOCAB)
    ids[:, -1] = 5  # no <eos> in the prompts
    mask = np.ones_like(ids)
    ids[1, :3], mask[1, :3] = 1, 0  # left padding
    out, ref = _both(tmodel, model, params, ids, mask, max_new_tokens=8, output_scores=True)
    _assert_same_ids(out, ref)
    _assert_close_scores(out.scores, ref.scores)
    # another prompt length in the same bucket reuses the compiled program
    traces = model._generate_traces
    out, ref = _both(tmodel, model, params, ids[:, 2:], mask[:, 2:], max_new_tokens=8, output_scores=True)
    _assert_same_ids(out, ref)
    assert model._generate_traces == traces


def test_a_max_length_of_20_set_anywhere_is_a_total_length(causal):
    """transformers v5 reads max_length=20 (its old default) set in a generation config as set: a total
    length, like the keyword (4.57's PyTorch took a config's 20 as unset); only no max_length at all means
    20 new tokens."""
    from flax_bart import GenerationConfig

    tmodel, model, params = causal
    ids, _ = batch(seed=2, b=2, t=7, vocab=VOCAB)
    ids[:, -1] = 5
    mask = np.ones_like(ids)
    out = model.generate(ids, GenerationConfig(max_length=20, eos_token_id=None), attention_mask=mask, params=params)
    with torch.no_grad():
        ref = tmodel.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                              generation_config=transformers.GenerationConfig(max_length=20, eos_token_id=None),
                              past_key_values=transformers.DynamicCache())
    assert ref.shape[1] == 20
    np.testing.assert_array_equal(np.asarray(out.sequences), ref.numpy())
    for settings, width in ((dict(max_length=20), 20), ({}, 7 + 20)):
        out, ref = _both(tmodel, model, params, ids, mask, eos_token_id=None, **settings)
        assert ref.sequences.shape[1] == width
        _assert_same_ids(out, ref)


# ---- the processors one by one, against transformers' own --------------------------------------
def _context(first, cur_len, **kw):
    vals = dict(max_length=12, min_length=0, begin_index=1, repetition_penalty=1.0, temperature=1.0, top_p_cut=0.0)
    vals.update(kw)
    return StepContext(cur_len=jnp.int32(cur_len), next_slot=jnp.int32(first + cur_len), first_slot=jnp.int32(first),
                       penalty_from=jnp.full((4,), first, jnp.int32), max_length=jnp.int32(vals["max_length"]),
                       min_length=jnp.int32(vals["min_length"]), begin_index=jnp.int32(vals["begin_index"]),
                       repetition_penalty=jnp.float32(vals["repetition_penalty"]),
                       temperature=jnp.float32(vals["temperature"]), top_p_cut=jnp.float32(vals["top_p_cut"]))


@pytest.mark.parametrize("cur_len", [1, 2, 6, 9])
def test_processors_match_transformers(cur_len):
    from transformers import generation as G

    rng = np.random.default_rng(cur_len)
    v, first, slots = 12, 3, 16
    scores = rng.normal(size=(4, v)).astype(np.float32) * 3
    history = rng.integers(0, 5, size=(4, cur_len))  # few distinct ids: n-grams repeat
    buffer = np.full((4, slots), -1, np.int32)
    buffer[:, first:first + cur_len] = history
    cases = [
        (dict(repetition_penalty=True), dict(repetition_penalty=1.7), G.RepetitionPenaltyLogitsProcessor(1.7)),
        (dict(no_repeat_ngram_size=2), {}, G.NoRepeatNGramLogitsProcessor(2)),
        (dict(no_repeat_ngram_size=3), {}, G.NoRepeatNGramLogitsProcessor(3)),
        (dict(no_repeat_ngram_size=1), {}, G.NoRepeatNGramLogitsProcessor(1)),
        (dict(bad_words_ids=((7,), (3, 4), (1, 2, 3))), {}, G.NoBadWordsLogitsProcessor([[7], [3, 4], [1, 2, 3]], 2)),
        (dict(min_length=True, eos_token_ids=(2, 5)), dict(min_length=5), G.MinLengthLogitsProcessor(5, [2, 5])),
        (dict(forced_bos_token_id=4), {}, G.ForcedBOSTokenLogitsProcessor(4)),
        (dict(forced_eos_token_ids=(2, 6)), dict(max_length=cur_len + 1), G.ForcedEOSTokenLogitsProcessor(cur_len + 1, [2, 6])),
        (dict(suppress_tokens=(0, 9)), {}, G.SuppressTokensLogitsProcessor([0, 9])),
        (dict(begin_suppress_tokens=(1, 3)), dict(begin_index=2), G.SuppressTokensAtBeginLogitsProcessor([1, 3], 2)),
    ]
    for spec_kw, ctx_kw, theirs in cases:
        ours = process(ProcessorSpec(vocab_size=v, **spec_kw), jnp.asarray(scores), jnp.asarray(buffer),
                       _context(first, cur_len, **ctx_kw))
        want = theirs(torch.tensor(history), torch.tensor(scores)).numpy()
        np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-6, err_msg=str(spec_kw))
    warpers = [
        (dict(temperature=True), dict(temperature=0.7), G.TemperatureLogitsWarper(0.7)),
        (dict(top_k=3), {}, G.TopKLogitsWarper(3)),
        (dict(top_k=3, min_tokens_to_keep=5), {}, G.TopKLogitsWarper(3, min_tokens_to_keep=5)),
        (dict(top_p=True), dict(top_p_cut=np.float32(1 - 0.8)), G.TopPLogitsWarper(0.8)),
        (dict(top_p=True, min_tokens_to_keep=3), dict(top_p_cut=np.float32(1 - 0.3)),
         G.TopPLogitsWarper(0.3, min_tokens_to_keep=3)),
    ]
    for spec_kw, ctx_kw, theirs in warpers:
        ours = warp(ProcessorSpec(vocab_size=v, **spec_kw), jnp.asarray(scores), _context(first, cur_len, **ctx_kw))
        want = theirs(torch.tensor(history), torch.tensor(scores)).numpy()
        np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-6, err_msg=str(spec_kw))


@pytest.mark.parametrize("settings", [
    dict(max_new_tokens=12, eos_token_id=[2, 53]),
    dict(num_beams=3, max_new_tokens=9, eos_token_id=[2, 53]),
    dict(do_sample=True, top_k=5, max_new_tokens=8),
], ids=["greedy", "beams", "sample"])
def test_generate_inside_a_callers_jit(lm, settings):
    """As 4.x's did: inside jit the sequences are prompt + max_new_tokens wide, pad after the tokens
    generated; the tokens are those of the eager call."""
    import jax

    _, model, params, ids, mask = lm
    key = jax.random.PRNGKey(4)
    eager = np.asarray(model.generate(ids, attention_mask=mask, params=params, prng_key=key, **settings).sequences)
    jitted = jax.jit(lambda i, a, k: model.generate(i, attention_mask=a, params=params, prng_key=k,
                                                    **settings).sequences)
    got = np.asarray(jitted(ids, mask, key))
    assert got.shape == (eager.shape[0], 1 + settings["max_new_tokens"])
    np.testing.assert_array_equal(got[:, :eager.shape[1]], eager)
    assert (got[:, eager.shape[1]:] == model.config.pad_token_id).all()


def test_causal_generate_inside_a_callers_jit_infers_the_mask(causal):
    import jax

    _, model, params = causal
    ids, mask = batch(seed=3, b=2, t=7, vocab=VOCAB)
    ids[0, :2] = model.config.pad_token_id   # left padding, no mask given: inferred from the pad token
    eager = np.asarray(model.generate(ids, params=params, max_new_tokens=5).sequences)
    got = np.asarray(jax.jit(lambda i: model.generate(i, params=params, max_new_tokens=5).sequences)(ids))
    np.testing.assert_array_equal(got[:, :eager.shape[1]], eager)


def test_generate_inside_jit_refuses_what_it_cannot_know(lm):
    import jax

    from flax_bart import InputError

    _, model, params, ids, mask = lm
    with pytest.raises(InputError, match="output_scores=True inside a caller's jax.jit"):
        jax.jit(lambda i: model.generate(i, params=params, output_scores=True, max_new_tokens=3).sequences)(ids)
    dec = np.full((3, 2), 2, np.int32)
    with pytest.raises(InputError, match="concrete decoder_input_ids"):
        jax.jit(lambda i, d: model.generate(i, params=params, decoder_input_ids=d, max_new_tokens=3).sequences)(ids, dec)
