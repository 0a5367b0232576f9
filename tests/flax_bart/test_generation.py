"""generate(): settings, compile reuse, sampling, errors, generation_config.json (no PyTorch needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bart_helpers import TINY, batch, random_params
from flax_bart import BartConfig, FlaxBartForCausalLM, FlaxBartForConditionalGeneration, InputError
from flax_bart.generation import GenerationConfig, bucket_length

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_model(cls, seed):
    """A model with random N(0, 0.2) weights, made without compiling an initialiser."""
    model = cls(BartConfig(**TINY, tie_word_embeddings=False), _do_init=False)
    model.params = random_params(model, seed)
    return model


@pytest.fixture(scope="module")
def model():
    return _random_model(FlaxBartForConditionalGeneration, 3)


def test_second_call_and_same_bucket_do_not_recompile(model):
    ids, mask = batch(seed=0, b=2, t=9)
    first = model.generate(ids, max_new_tokens=6)
    traces = model._generate_traces
    again = model.generate(ids, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(first.sequences), np.asarray(again.sequences))
    longer, longer_mask = batch(seed=1, b=2, t=14)  # 9 and 14 share the bucket of 16
    model.generate(longer, attention_mask=longer_mask, max_new_tokens=6)
    assert model._generate_traces == traces
    program = model._generate_programs[next(iter(model._generate_programs))]
    assert program._cache_size() == 1
    assert first.sequences.shape[0] == 2 and first.scores is None


def test_padding_to_a_bucket_changes_nothing(model):
    """Right-padding the source (masked) gives the same tokens as the unpadded batch."""
    ids, _ = batch(seed=2, b=2, t=9)
    ids[:, -1] = 2
    plain = model.generate(ids, max_new_tokens=6)
    padded = np.concatenate([ids, np.ones((2, 3), ids.dtype)], axis=1)
    mask = np.concatenate([np.ones_like(ids), np.zeros((2, 3), ids.dtype)], axis=1)
    np.testing.assert_array_equal(np.asarray(model.generate(padded, attention_mask=mask, max_new_tokens=6).sequences),
                                  np.asarray(plain.sequences))


def test_a_fully_masked_source_row_ignores_the_bucket_padding(model):
    """A source row with nothing attended attends uniformly over its own positions (PyTorch BART):
    the positions generate() pads the source with to its length bucket (9 -> 16) must not join them."""
    ids, _ = batch(seed=4, b=2, t=9)
    mask = np.ones_like(ids)
    mask[1] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=2, output_scores=True, min_length=0,
                         forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0)
    enc = model.encode(ids, attention_mask=mask)   # the first step without a bucket: 9 source positions
    start = np.full((2, 1), model.config.decoder_start_token_id, np.int32)
    first = model.decode(start, enc, encoder_attention_mask=mask).logits[:, 0]
    np.testing.assert_allclose(np.asarray(out.scores[0]), np.asarray(first), rtol=1e-5, atol=1e-5)


def test_bucket_lengths():
    assert [bucket_length(n) for n in (1, 16, 17, 100, 128, 129, 256, 257)] == [16, 16, 32, 128, 128, 256, 256, 384]


def test_sampling(model):
    ids, mask = batch(seed=0, b=2, t=9)
    key = jax.random.PRNGKey(7)
    kw = dict(do_sample=True, max_new_tokens=6, temperature=2.0, top_p=0.9, num_return_sequences=2)
    a = model.generate(ids, attention_mask=mask, prng_key=key, **kw)
    b = model.generate(ids, attention_mask=mask, prng_key=key, **kw)
    c = model.generate(ids, attention_mask=mask, prng_key=jax.random.PRNGKey(8), **kw)
    assert a.sequences.shape[0] == 4
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))
    assert not np.array_equal(np.asarray(a.sequences), np.asarray(c.sequences))
    # top_k=1 leaves one candidate: every sample is the greedy sequence
    greedy = np.asarray(model.generate(ids, attention_mask=mask, max_new_tokens=6).sequences)
    top1 = model.generate(ids, attention_mask=mask, prng_key=key, **dict(kw, max_new_tokens=6, top_k=1))
    np.testing.assert_array_equal(np.asarray(top1.sequences), np.repeat(greedy, 2, axis=0))


def test_sampling_follows_the_4x_key_schedule(model):
    """Each step splits the key it got and draws with the first half, as 4.x Flax's sampling loop did:
    with JAX's random bits of that time (jax_threefry_partitionable=False) a key gives 4.x's tokens."""
    ids, mask = batch(seed=0, b=2, t=9)
    key = jax.random.PRNGKey(3)
    out = model.generate(ids, attention_mask=mask, prng_key=key, do_sample=True, top_k=7, max_new_tokens=4,
                         output_scores=True, forced_eos_token_id=None, min_length=0)
    seqs = np.asarray(out.sequences)
    for step, scores in enumerate(out.scores):
        use, key = jax.random.split(key)
        drawn = np.asarray(jax.random.categorical(use, np.asarray(scores), axis=-1))
        finished = (seqs[:, 1:1 + step] == model.config.eos_token_id).any(axis=1)   # padded from there
        want = np.where(finished, model.config.pad_token_id, drawn)
        np.testing.assert_array_equal(seqs[:, 1 + step], want, err_msg=f"step {step}")


def test_beam_sampling_is_deterministic_per_key(model):
    ids, mask = batch(seed=0, b=2, t=9)
    kw = dict(do_sample=True, num_beams=3, num_return_sequences=2, max_new_tokens=5, prng_key=jax.random.PRNGKey(1))
    a = model.generate(ids, attention_mask=mask, **kw)
    b = model.generate(ids, attention_mask=mask, **kw)
    assert a.sequences.shape[0] == 4 and a.sequences_scores.shape == (4,)
    np.testing.assert_array_equal(np.asarray(a.sequences), np.asarray(b.sequences))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(max_new_tokens=3, num_beamz=2), TypeError, ["num_beamz"]),
    (dict(max_new_tokens=3, typical_p=0.5), InputError, ["typical_p"]),
    (dict(max_length=41), InputError, ["max_length", "max_position_embeddings=40"]),
    (dict(max_new_tokens=40), InputError, ["max_new_tokens", "max_position_embeddings=40"]),
    (dict(max_length=1), InputError, ["max_length=1"]),
    (dict(max_new_tokens=3, num_return_sequences=2), InputError, ["num_return_sequences"]),
    (dict(max_new_tokens=3, num_beams=2, num_return_sequences=3), InputError, ["num_return_sequences=3", "num_beams=2"]),
    (dict(max_new_tokens=3, early_stopping="sometimes"), InputError, ["early_stopping"]),
    (dict(max_new_tokens=3, bad_words_ids=[[999]]), InputError, ["bad_words_ids"]),
    (dict(max_new_tokens=3, repetition_penalty=0.0), InputError, ["repetition_penalty"]),
], ids=lambda x: str(x) if not isinstance(x, dict) else "-".join(x))
def test_bad_settings(model, kwargs, error, words):
    ids, mask = batch(seed=0, b=2, t=9)
    with pytest.raises(error) as e:
        model.generate(ids, attention_mask=mask, **kwargs)
    for w in words:
        assert w in str(e.value)


def test_bad_inputs(model):
    with pytest.raises(InputError, match="input_ids is empty"):
        model.generate(np.zeros((2, 0), np.int32))
    with pytest.raises(InputError, match="input_ids holds token id 500"):
        model.generate(np.full((1, 3), 500, np.int32))
    with pytest.raises(InputError, match="attention_mask has shape"):
        model.generate(np.ones((1, 3), np.int32), attention_mask=np.ones((1, 4), np.int32))
    with pytest.raises(InputError, match="prng_key must be"):
        model.generate(np.ones((1, 3), np.int32), do_sample=True, prng_key=5)
    with pytest.raises(InputError, match="attention_mask has shape"):   # inside a caller's jit too
        jax.jit(lambda x: model.generate(x, attention_mask=np.ones((1, 4), np.int32)).sequences)(
            np.ones((1, 3), np.int32))


def test_generation_config_round_trip_and_priority(tmp_path):
    cfg = GenerationConfig.from_dict({"num_beams": 4, "max_length": 30, "custom_key": [1, 2]})
    assert cfg.extra == {"custom_key": [1, 2]}
    path = cfg.save_pretrained(tmp_path)
    assert json.load(open(path))["custom_key"] == [1, 2]
    again = GenerationConfig.from_pretrained(tmp_path)
    assert again == cfg
    merged = GenerationConfig(num_beams=2).merged_over(cfg)
    assert (merged.num_beams, merged.max_length) == (2, 30)
    model_cfg = BartConfig(**TINY).replace(num_beams=3, no_repeat_ngram_size=2,
                                           task_specific_params={"summarization": {"num_beams": 5, "min_length": 4}})
    from_model = GenerationConfig.from_model_config(model_cfg)
    assert (from_model.num_beams, from_model.no_repeat_ngram_size, from_model.forced_eos_token_id) == (3, 2, 2)
    task = GenerationConfig.from_model_config(model_cfg, task="summarization")
    assert (task.num_beams, task.min_length) == (5, 4)


def test_checkpoint_generation_config_is_honoured(tmp_path, model):
    path = model.save_pretrained(tmp_path / "ckpt")
    with open(os.path.join(path, "generation_config.json")) as f:
        written = json.load(f)
    assert written["decoder_start_token_id"] == 2
    GenerationConfig.from_dict(dict(written, max_new_tokens=3, forced_eos_token_id=None)).save_pretrained(path)
    loaded = FlaxBartForConditionalGeneration.from_pretrained(path)
    assert loaded.generation_config.max_new_tokens == 3
    ids, mask = batch(seed=0, b=2, t=9)
    out = loaded.generate(ids, attention_mask=mask)
    assert out.sequences.shape == (2, 4)
    # keyword arguments win over the file, an explicit None included; generation_config= fills the rest
    cfg, _ = loaded._resolve_generation_config(GenerationConfig(num_beams=2), dict(max_new_tokens=5, pad_token_id=None))
    assert (cfg.max_new_tokens, cfg.num_beams, cfg.pad_token_id, cfg.decoder_start_token_id) == (5, 2, None, 2)


def test_causal_lm_generates_after_its_prompt():
    model = _random_model(FlaxBartForCausalLM, 1)
    ids = np.array([[0, 5, 6, 7], [0, 8, 9, 10]], np.int32)
    out = model.generate(ids, max_new_tokens=4, forced_eos_token_id=None, eos_token_id=None)
    seqs = np.asarray(out.sequences)
    assert seqs.shape == (2, 8)
    np.testing.assert_array_equal(seqs[:, :4], ids)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_quick_mode_writes_valid_json(tmp_path, dtype):
    out = tmp_path / "generate.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.generate_bench", "--quick", "--dtype", dtype,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["tokens_equal"] is True
    assert result["case"]["dtype"] == dtype and f"new tokens, {dtype}," in proc.stdout
    for side in ("flax", "transformers"):
        assert result[side]["tokens_per_s"] > 0 and len(result[side]["samples_s"]) == result["case"]["repeats"]
    assert result["speedup"] > 0 and result["first_call_s"] > 0
    # the floor's bandwidth: a read timed in the same rounds as the calls, its median within its range
    low, high = result["floor"]["bandwidth_gb_s_range"]
    assert 0 < low <= result["floor"]["bandwidth_gb_s"] <= high and "GB/s (rounds " in proc.stdout
    # float32 on a CPU decodes with (out, in) kernel copies: the third arm times the kernels as stored
    lk = result["loop_kernels"]
    assert lk["transposed_used"] is (dtype == "float32")
    if dtype == "float32":
        assert lk["tokens_equal"] is True and len(lk["stored_kernels"]["samples_s"]) == result["case"]["repeats"]
        assert lk["stored_over_transposed"] > 0 and "kernel copies vs as stored" in proc.stdout


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("rows", [1, 3])
def test_decoding_lm_head_equals_exact_logits(dtype, rows):
    # the LM head of the decoding loop (a multiply-reduce on CPU for 2+ rows): the exact logits of the
    # dtype's values, rounded once to the dtype (float16: float32 products, no per-element float16)
    import types

    import jax.numpy as jnp

    from flax_bart.search import _lm_head

    cfg = BartConfig(**{**TINY, "vocab_size": 97, "tie_word_embeddings": True})
    rng = np.random.default_rng(0)
    table = rng.standard_normal((97, cfg.d_model)).astype(np.float32)
    bias = rng.standard_normal((1, 97)).astype(np.float32)
    h = rng.standard_normal((rows, cfg.d_model)).astype(np.float32)
    module = types.SimpleNamespace(config=cfg, dtype=getattr(jnp, dtype), precision="highest")
    params = {"model": {"shared": {"embedding": table}}, "final_logits_bias": bias}
    got = np.asarray(jax.jit(_lm_head(module, params, seq2seq=True))(h), np.float64)
    q = lambda a: np.asarray(jnp.asarray(a).astype(dtype), np.float64)   # noqa: E731
    exact = q(q(h) @ q(table).T)            # one rounding of the exact sum of exact products
    want = q(exact + q(bias))               # then the bias, in the dtype, as the model adds it
    ulp = {"float32": 2.0 ** -23, "bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}[dtype]
    # two roundings to the dtype (sum, bias), plus float32 summation error; bfloat16 rounds each product
    per_term = 2.0 ** -8 if dtype == "bfloat16" else 2.0 ** -22
    tol = 2 * ulp * np.abs(want) + per_term * (np.abs(q(h)) @ np.abs(q(table)).T)
    assert np.all(np.abs(got - want) <= tol), float(np.max(np.abs(got - want) / tol))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_cross_kv_widened_for_the_loop_changes_no_number(monkeypatch, dtype, num_beams):
    # generate() hands a bf16/fp16 model's cached cross-attention K/V to its decoding loop widened to
    # float32 on a CPU (flax_bart.search._split_cross): the same scores and tokens, bit for bit, as with
    # the K/V kept in the compute dtype
    import jax.numpy as jnp

    from flax_bart import search

    real, widened = search._split_cross, []

    def run(force_narrow: bool):
        def split(cache, widen=False):
            widened.append(widen)
            return real(cache, False if force_narrow else widen)

        monkeypatch.setattr(search, "_split_cross", split)
        base = _random_model(FlaxBartForConditionalGeneration, 5)
        model = FlaxBartForConditionalGeneration(base.config, dtype=getattr(jnp, dtype), _do_init=False)
        cast = model.to_bf16 if dtype == "bfloat16" else model.to_fp16
        ids = np.random.default_rng(0).integers(4, base.config.vocab_size, size=(3, 9)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, 6:] = 0
        out = model.generate(ids, attention_mask=mask, params=cast(base.params), max_new_tokens=5, min_new_tokens=5,
                             num_beams=num_beams, output_scores=True, return_dict_in_generate=True)
        scores = out.scores if num_beams > 1 else jnp.stack(out.scores)
        return np.asarray(out.sequences), np.asarray(scores, np.float32)

    wide, narrow = run(False), run(True)
    assert widened and widened[0] is (jax.default_backend() == "cpu")
    np.testing.assert_array_equal(wide[0], narrow[0])
    np.testing.assert_array_equal(wide[1], narrow[1])


def test_4x_positional_order_and_attention_mask_by_keyword(model):
    ids, mask = batch(seed=4, b=2, t=7)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=4).sequences
    got = model.generate(ids, GenerationConfig(max_new_tokens=4), None, True, None, attention_mask=mask).sequences
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(TypeError, match="pass attention_mask= by keyword"):
        model.generate(ids, mask)          # an old call with the mask second: said, not misread


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}])
def test_custom_logits_processor_acts_as_the_builtin_one(model, settings):
    """A 4.x-style processor fn(input_ids, scores, cur_len) that bans a token gives what suppress_tokens
    gives; one that reads input_ids sees the sequence so far, left-aligned, cur_len long."""
    ids, mask = batch(seed=5, b=2, t=7)
    common = dict(attention_mask=mask, max_new_tokens=5, **settings)
    plain = np.asarray(model.generate(ids, **common).sequences)
    banned = int(plain[0, 1])

    def ban(input_ids, scores, cur_len):
        return scores.at[:, banned].set(-np.inf)

    want = np.asarray(model.generate(ids, suppress_tokens=[banned], **common).sequences)
    got = np.asarray(model.generate(ids, logits_processor=[ban], **common).sequences)
    np.testing.assert_array_equal(got, want)
    assert banned not in got[:, 1:]

    v = model.config.vocab_size

    def successor(input_ids, scores, cur_len):   # force (last token + 1) mod V
        last = jax.numpy.take_along_axis(input_ids, jax.numpy.full((input_ids.shape[0], 1), cur_len - 1), axis=1)
        return jax.numpy.where(jax.numpy.arange(v)[None] == (last + 1) % v, 0.0, -np.inf).astype(scores.dtype)

    out = np.asarray(model.generate(ids, logits_processor=successor, forced_eos_token_id=None, eos_token_id=None,
                                    **{**common, "max_new_tokens": 4}).sequences)
    start = model.config.decoder_start_token_id
    np.testing.assert_array_equal(out[0], (start + np.arange(5)) % v)


def test_a_logits_processor_that_is_not_callable_is_refused(model):
    ids, _ = batch(seed=4, b=1, t=5)
    with pytest.raises(InputError, match=r"logits_processor\[1\] is a int"):
        model.generate(ids, logits_processor=[lambda i, s, c: s, 3], max_new_tokens=2)
    with pytest.raises(InputError, match="returned shape"):
        model.generate(ids, logits_processor=[lambda i, s, c: s[:, :3]], max_new_tokens=2)


def test_generation_config_changed_in_place_holds_and_an_untouched_one_follows_the_config(model):
    import copy

    m = copy.copy(model)
    m.__dict__.pop("_generation_config", None)
    m.__dict__.pop("_derived_generation_config", None)
    ids, _ = batch(seed=6, b=1, t=5)
    assert m.generation_config.max_length is None           # unset: generate's own default (20 new tokens)
    m.generation_config.max_length = 6                        # 4.x: assignment in place
    m.generation_config.my_note = "kept"
    assert m.generation_config.max_length == 6 and m.generation_config.extra["my_note"] == "kept"
    assert m.generate(ids, forced_eos_token_id=None, eos_token_id=None).sequences.shape == (1, 6)
    m.generation_config = None                                # back to the derived one, which follows the config
    m.config = m.config.replace(max_length=4)
    assert m.generation_config.max_length == 4


def test_from_pretrained_generation_keywords_override_the_files(tmp_path, model):
    model.save_pretrained(tmp_path / "m")
    GenerationConfig(max_length=12, num_beams=2).save_pretrained(tmp_path / "m")
    loaded = FlaxBartForConditionalGeneration.from_pretrained(tmp_path / "m", max_length=9)
    assert loaded.generation_config.max_length == 9 and loaded.generation_config.num_beams == 2
    assert FlaxBartForConditionalGeneration.from_pretrained(tmp_path / "m").generation_config.max_length == 12


def test_generation_config_takes_unknown_keywords_as_4x_did():
    g = GenerationConfig(max_length=5, my_flag=True)
    assert g.max_length == 5 and g.my_flag is True and g.to_dict() == {"max_length": 5, "my_flag": True}
    g.other = 1
    assert g.extra == {"my_flag": True, "other": 1}
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        g.missing


def test_a_config_assignment_takes_effect_on_the_next_call(model):
    """Programs compiled before `model.config.x = ...` are dropped (4.x traced anew on every call)."""
    import copy

    m = _random_model(FlaxBartForConditionalGeneration, 3)
    ids, mask = batch(seed=7, b=2, t=6)
    before = np.asarray(m(ids, attention_mask=mask).logits)
    assert m(ids, attention_mask=mask).decoder_hidden_states is None
    m.config.output_hidden_states = True
    assert len(m(ids, attention_mask=mask).decoder_hidden_states) == m.config.decoder_layers + 1
    m.config.activation_function = "relu"
    fresh = FlaxBartForConditionalGeneration(copy.deepcopy(m.config), _do_init=False)
    fresh.params = m.params
    after = np.asarray(m(ids, attention_mask=mask).logits)
    np.testing.assert_array_equal(after, np.asarray(fresh(ids, attention_mask=mask).logits))
    assert not np.array_equal(after, before)
    g = m.generation_config                                  # a held reference keeps its changes
    assert m.generation_config is g
    g.max_length = 5
    assert m.generate(ids, attention_mask=mask, forced_eos_token_id=None, eos_token_id=None).sequences.shape == (2, 5)


def test_programs_with_a_callers_processors_are_kept_for_the_latest_few_only(model):
    from flax_bart.generation import MAX_CUSTOM_PROGRAMS

    ids, _ = batch(seed=4, b=1, t=5)
    for _ in range(MAX_CUSTOM_PROGRAMS + 3):
        model.generate(ids, logits_processor=[lambda i, s, c: s], max_new_tokens=2)
    assert sum(bool(p.processors.custom) for p in model._generate_programs) == MAX_CUSTOM_PROGRAMS


def test_a_whole_new_config_rebuilds_the_module_or_is_refused(model):
    m = _random_model(FlaxBartForConditionalGeneration, 3)
    ids, mask = batch(seed=7, b=2, t=6)
    relu = m.config.replace(activation_function="relu")
    m.config = relu
    fresh = FlaxBartForConditionalGeneration(relu, _do_init=False)
    fresh.params = m.params
    np.testing.assert_array_equal(np.asarray(m(ids, attention_mask=mask).logits),
                                  np.asarray(fresh(ids, attention_mask=mask).logits))
    with pytest.raises(InputError, match="after the config changed: params do not fit"):
        m.config = m.config.replace(d_model=32, encoder_attention_heads=4, decoder_attention_heads=2)
    assert m.config is relu and m.module.config is relu       # refused: nothing changed
    g = m.generation_config
    m.config.output_hidden_states = True                      # unrelated: a held reference stays the one
    assert m.generation_config is g
    g.max_new_tokens = 2
    assert m.generate(ids, attention_mask=mask).sequences.shape == (2, 3)


def test_a_num_labels_change_that_no_longer_fits_the_head_is_named():
    from flax_bart import FlaxBartForSequenceClassification

    m = FlaxBartForSequenceClassification(BartConfig(**TINY, num_labels=2), _do_init=False)
    m.params = random_params(m, 1)
    ids = np.full((2, 6), 5, np.int32)
    ids[:, -1] = m.config.eos_token_id
    m.config.num_labels = 3
    with pytest.raises(InputError, match="classification_head/out_proj.*expected"):
        m(ids)


def test_generation_config_copies_hashes_and_numpy_scalars():
    import copy

    g = GenerationConfig(temperature=1, note="a")
    h = copy.copy(g)
    h.note = "b"
    assert g.note == "a"
    assert GenerationConfig(temperature=1) == GenerationConfig(temperature=1.0)
    assert hash(GenerationConfig(temperature=1)) == hash(GenerationConfig(temperature=1.0))
    c = BartConfig(**TINY)
    c.num_labels = np.int64(4)
    c.dropout = None                      # a config.json null: no dropout
    assert c.num_labels == 4 and c.dropout == 0.0
    assert hash(BartConfig(**{**TINY, "dropout": 0})) == hash(BartConfig(**{**TINY, "dropout": 0.0}))
    assert copy.deepcopy(c).version != c.version
