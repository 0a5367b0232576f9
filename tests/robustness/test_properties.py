"""Property tests (hypothesis, derandomized so CI is deterministic; few examples because every new
config compiles):

- conversion round trips are bit-exact for every source format x target format, sharded with random
  shard sizes, fp32 / fp16 / bf16, every head, tied or not;
- sharded writing (`save_flax_params`, every Flax format) is exact and respects the shard size;
- the Flax model and the PyTorch reference agree within 1e-5 (fp32) on random inputs and random
  masks, fully padded rows included (compared at unmasked query positions; finite everywhere);
- cached decoding equals uncached decoding for random splits of the target into steps.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from convert import convert_checkpoint, flax_to_pt, load_flax_params, save_flax_params
from convert.rules import expected_flax_shapes
from flax_bart.config import BartConfig

from pt_flax_pair import ATOL_FP32, build_pair, compare_masks, make_inputs, max_abs_diff, run_flax, run_reference
from tests.convert.convert_helpers import (
    DTYPES, HEADS, assert_bits_equal, flat, random_flax_params, write_flax_msgpack, write_pt_checkpoint,
)

# examples per property (the reliability figures in docs/reliability.md are these numbers)
EXAMPLES = {"round_trip": 15, "shards": 10, "flax_vs_reference": 6, "cached_decoding": 20}
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# source/target layouts: (framework, format); "flax"+"safetensors" is Flax-format safetensors
LAYOUTS = [("pt", "safetensors"), ("pt", "bin"), ("flax", "msgpack"), ("flax", "safetensors")]


@st.composite
def configs(draw, max_vocab=40):
    heads = draw(st.sampled_from([1, 2, 4]))
    return BartConfig.from_dict(dict(
        vocab_size=draw(st.integers(8, max_vocab)), d_model=heads * draw(st.integers(1, 4)) * 2,
        encoder_layers=draw(st.integers(1, 2)), decoder_layers=draw(st.integers(1, 2)),
        encoder_ffn_dim=draw(st.integers(1, 16)), decoder_ffn_dim=draw(st.integers(1, 16)),
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        max_position_embeddings=draw(st.integers(8, 16)), tie_word_embeddings=draw(st.booleans()),
        scale_embedding=draw(st.booleans()), dropout=0.0,
        activation_function=draw(st.sampled_from(["gelu", "relu", "gelu_new", "silu"])),
        id2label={i: f"L{i}" for i in range(draw(st.integers(1, 4)))},
    ))


def write_layout(directory: str, layout, params: dict, config: BartConfig, head: str, shard) -> None:
    """`params` written in `layout` by the libraries themselves where there is one (safetensors,
    torch.save, flax.serialization) and by this package's writer for Flax safetensors."""
    framework, fmt = layout
    os.makedirs(directory, exist_ok=True)
    if framework == "pt":
        shards = 1 if shard is None else 2
        write_pt_checkpoint(directory, flax_to_pt(params, config, head, tied="drop"), fmt, shards)
    elif fmt == "msgpack":
        write_flax_msgpack(directory, params, 1 if shard is None else 2)
    else:
        save_flax_params(params, directory, format="safetensors", max_shard_size=shard)
    config.save_pretrained(directory)


def converted(src: str, dst: str, layout, shard) -> None:
    framework, fmt = layout
    convert_checkpoint(src, dst, to="flax" if framework == "flax" else "pytorch", format=fmt, max_shard_size=shard)


def test_every_source_format_converts_to_every_target_format_bit_exactly(tmp_path):
    """All 4 x 4 layout pairs once, deterministic (the random search below varies everything else)."""
    config = BartConfig.from_dict(dict(vocab_size=24, d_model=8, encoder_layers=1, decoder_layers=2,
                                       encoder_ffn_dim=6, decoder_ffn_dim=5, encoder_attention_heads=2,
                                       decoder_attention_heads=2, max_position_embeddings=8))
    params = random_flax_params(config, "lm", DTYPES["bfloat16"], seed=3)
    for i, src_layout in enumerate(LAYOUTS):
        src = str(tmp_path / f"src{i}")
        write_layout(src, src_layout, params, config, "lm", "600B" if i % 2 else None)
        for j, dst_layout in enumerate(LAYOUTS):
            dst = str(tmp_path / f"dst{i}{j}")
            converted(src, dst, dst_layout, "700B" if j % 2 else None)
            loaded, _ = load_flax_params(dst, config, "lm")
            assert_bits_equal(flat(loaded), flat(params))


@settings(max_examples=EXAMPLES["round_trip"], **SETTINGS)
@given(config=configs(), head=st.sampled_from(HEADS), dtype=st.sampled_from(sorted(DTYPES)),
       chain=st.lists(st.sampled_from(LAYOUTS), min_size=2, max_size=3),
       shards=st.lists(st.one_of(st.none(), st.integers(64, 3000)), min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_conversion_chains_are_bit_exact(config, head, dtype, chain, shards, seed):
    """source layout -> layout -> (layout) -> back into memory: the same bits, whatever the path."""
    params = random_flax_params(config, head, DTYPES[dtype], seed)
    with tempfile.TemporaryDirectory() as tmp:
        current = f"{tmp}/0"
        write_layout(current, chain[0], params, config, head, shards[0])
        for i, layout in enumerate(chain[1:], 1):
            converted(current, f"{tmp}/{i}", layout, shards[i])
            current = f"{tmp}/{i}"
        loaded, summary = load_flax_params(current, config, head)
    assert set(flat(loaded)) == set(expected_flax_shapes(config, head))
    assert_bits_equal(flat(loaded), flat(params))
    assert not summary.missing and not summary.unexpected


@settings(max_examples=EXAMPLES["shards"], **SETTINGS)
@given(config=configs(), head=st.sampled_from(HEADS), fmt=st.sampled_from(["msgpack", "safetensors"]),
       shard=st.integers(1, 4000), dtype=st.sampled_from(sorted(DTYPES)))
def test_sharded_writing_is_exact_and_respects_the_shard_size(config, head, fmt, shard, dtype):
    params = random_flax_params(config, head, DTYPES[dtype], seed=shard)
    sizes = {k: v.nbytes for k, v in flat(params).items()}
    with tempfile.TemporaryDirectory() as tmp:
        files = save_flax_params(params, tmp, format=fmt, max_shard_size=shard)
        loaded, _ = load_flax_params(tmp, config, head)
        index_path = [f for f in files if f.endswith(".index.json")]
        if index_path:
            index = json.loads(open(index_path[0]).read())
            assert index["metadata"]["total_size"] == sum(sizes.values())
            per_shard: dict = {}
            for name, shard_file in index["weight_map"].items():
                key = tuple(name.split("/" if fmt == "msgpack" else "."))
                per_shard.setdefault(shard_file, []).append(sizes[key])
            for shard_file, tensor_sizes in per_shard.items():  # a tensor larger than the limit goes alone
                assert sum(tensor_sizes) <= shard or len(tensor_sizes) == 1, (shard_file, tensor_sizes)
            assert len(per_shard) == len(files) - 1
        else:
            assert sum(sizes.values()) <= shard or len(sizes) == 1 or len(files) == 1
    assert_bits_equal(flat(loaded), flat(params))


@settings(max_examples=EXAMPLES["flax_vs_reference"], **SETTINGS)
@given(config=configs(), head=st.sampled_from(HEADS), batch=st.integers(1, 4), src_len=st.integers(1, 8),
       tgt_len=st.integers(1, 8), padded_row=st.booleans(), holes=st.booleans(), seed=st.integers(0, 2**16))
def test_flax_matches_the_pytorch_reference_on_random_inputs_and_masks(config, head, batch, src_len, tgt_len,
                                                                      padded_row, holes, seed):
    ref, model, params, _ = build_pair(config, head, seed=seed % 1000)
    inputs = make_inputs(config, head, np.random.default_rng(seed), batch, src_len, tgt_len, padded_row, holes)
    want, got = run_reference(ref, head, inputs), run_flax(model, params, head, inputs)
    for name in want:
        assert np.isfinite(got[name]).all() and np.isfinite(want[name]).all(), name
    diffs = max_abs_diff(want, got, compare_masks(head, inputs))
    assert max(diffs.values()) <= ATOL_FP32, diffs


CACHE_CONFIG = BartConfig.from_dict(dict(
    vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=24, decoder_ffn_dim=20,
    encoder_attention_heads=2, decoder_attention_heads=4, max_position_embeddings=16, scale_embedding=True,
))
CACHE_TOTAL, CACHE_BATCH, CACHE_SRC = 7, 2, 5


@functools.lru_cache(maxsize=1)
def _cache_pair():
    """One model for every example: the wrapper keeps its compiled functions, so an example only
    compiles step lengths not seen before (the splits are what varies; configs vary above)."""
    return build_pair(CACHE_CONFIG, "lm", seed=11)


@settings(max_examples=EXAMPLES["cached_decoding"], **SETTINGS)
@given(steps=st.lists(st.integers(1, 3), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_cached_decoding_equals_uncached_for_random_step_splits(steps, seed):
    import torch

    ref, model, params, _ = _cache_pair()
    inputs = make_inputs(CACHE_CONFIG, "lm", np.random.default_rng(seed), CACHE_BATCH, CACHE_SRC, CACHE_TOTAL,
                         holes=False)
    ids, mask, dec = inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"]
    enc = model.encode(ids, mask, params=params)
    full = np.asarray(model.decode(dec, enc, encoder_attention_mask=mask, params=params).logits)
    cache = model.init_cache(CACHE_BATCH, CACHE_TOTAL, enc, params=params)
    pieces, start, i = [], 0, 0
    while start < CACHE_TOTAL:  # the drawn step lengths, cycled until the target is consumed
        n = min(steps[i % len(steps)], CACHE_TOTAL - start)
        i += 1
        out = model.decode(dec[:, start:start + n], enc, encoder_attention_mask=mask, past_key_values=cache,
                           params=params)
        cache, start = out.past_key_values, start + n
        pieces.append(np.asarray(out.logits))
    cached = np.concatenate(pieces, axis=1)
    assert cached.shape == full.shape
    np.testing.assert_allclose(cached, full, rtol=0, atol=ATOL_FP32)
    # and the reference's own (uncached) decoder agrees with both
    want = ref.decode(torch.as_tensor(dec, dtype=torch.long), torch.tensor(np.array(enc[0])),
                      torch.as_tensor(mask, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(full, want, rtol=0, atol=ATOL_FP32)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_counts_are_small(name):
    assert 1 <= EXAMPLES[name] <= 20  # each new config compiles: keep CI time bounded
