"""The decoding loop's transposed decoder kernels (flax_bart.search._transposed_kernels,
chunked_dot.matmul_transposed): the same tokens and scores as the (in, out) kernels, and only where
they are meant to be used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bart_helpers import TINY, random_params
from flax_bart import BartConfig, FlaxBartForCausalLM, FlaxBartForConditionalGeneration, chunked_dot, search


def _model(cls, seed=3, **kwargs):
    model = cls(BartConfig(**TINY), _do_init=False, **kwargs)
    return model, random_params(model, seed)


@pytest.mark.parametrize("shape", [(5, 24), (3, 1, 24), (2, 4, 24)])
def test_matmul_transposed_is_the_product(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((24, 7)).astype(np.float32)
    got = jax.jit(chunked_dot.matmul_transposed)(x, kernel.T.copy())
    assert got.shape == shape[:-1] + (7,)
    exact = x.astype(np.float64) @ kernel.astype(np.float64)
    np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-5, atol=1e-5)


def _spy(monkeypatch):
    calls = []
    real = chunked_dot.matmul_transposed

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked_dot, "matmul_transposed", spy)
    return calls


@pytest.mark.parametrize("cls,num_beams", [(FlaxBartForConditionalGeneration, 1),
                                           (FlaxBartForConditionalGeneration, 2), (FlaxBartForCausalLM, 1)])
def test_generation_with_transposed_kernels_matches(monkeypatch, cls, num_beams):
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, TINY["vocab_size"], size=(3, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    if cls is FlaxBartForCausalLM:
        mask = np.ones_like(ids)

    def run(on: bool):
        monkeypatch.setattr(search, "TRANSPOSE_MIN_TOKENS", 8 if on else 10 ** 9)
        model, params = _model(cls)
        out = model.generate(ids, attention_mask=mask, params=params, max_new_tokens=10, min_new_tokens=10,
                             num_beams=num_beams, output_scores=True, return_dict_in_generate=True)
        scores = out.scores if num_beams > 1 else jnp.stack(out.scores)
        return np.asarray(out.sequences), np.asarray(scores)

    seqs_on, scores_on = run(True)
    taken = len(calls)
    seqs_off, scores_off = run(False)
    layers = TINY["decoder_layers"]
    # every decoder layer: self-attention q/k/v/out, cross-attention q/out, fc1, fc2 (cross k/v are cached)
    per_layer = 8 if cls is FlaxBartForConditionalGeneration else 6
    assert taken == layers * per_layer and len(calls) == taken, (taken, len(calls))
    np.testing.assert_array_equal(seqs_on, seqs_off)
    finite = np.isfinite(scores_off)
    np.testing.assert_array_equal(np.isfinite(scores_on), finite)
    np.testing.assert_allclose(scores_on[finite], scores_off[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["float32", "bfloat16", "highest", "scan_all", "many_rows", "few_tokens"])
def test_transposed_kernels_only_where_they_pay(case):
    kwargs = {"bfloat16": dict(dtype=jnp.bfloat16), "highest": dict(precision="highest"),
              "scan_all": dict(scan_layers="all")}.get(case, {})
    model, params = _model(FlaxBartForConditionalGeneration, **kwargs)
    rows = search.TRANSPOSE_MAX_ROWS + 1 if case == "many_rows" else 4
    tokens = search.TRANSPOSE_MIN_TOKENS - 1 if case == "few_tokens" else 32
    picked = search._transposed_kernels(model.module, params, rows, tokens)
    assert search.transposes_loop_kernels(model.module, rows, tokens) is (picked is not None)
    if case != "float32":
        assert picked is None
        return
    flat = traverse_util.flatten_dict(picked)
    assert len(flat) == TINY["decoder_layers"] * 8
    source = traverse_util.flatten_dict(params)
    for path, kernel_t in flat.items():
        assert "decoder" in path and path[-1] == "kernel"
        np.testing.assert_array_equal(np.asarray(kernel_t), source[path].T)
