"""Property tests over random small configs: conversions are bit-exact in every direction and
through files with random shard sizes."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from convert import convert_checkpoint, flax_to_pt, load_flax_params, pt_to_flax
from convert.rules import expected_flax_shapes, expected_pt_shapes

from convert_helpers import DTYPES, HEADS, assert_bits_equal, flat, random_flax_params, tiny_config, write_config, write_flax_msgpack


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    return tiny_config(
        vocab_size=draw(st.integers(5, 80)),
        d_model=heads * draw(st.integers(1, 6)),
        encoder_layers=draw(st.integers(1, 3)),
        decoder_layers=draw(st.integers(1, 3)),
        encoder_ffn_dim=draw(st.integers(1, 24)),
        decoder_ffn_dim=draw(st.integers(1, 24)),
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        max_position_embeddings=draw(st.integers(1, 40)),
        tie_word_embeddings=draw(st.booleans()),
        id2label={i: f"L{i}" for i in range(draw(st.integers(1, 5)))},
        pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0, forced_eos_token_id=0,
    )


@settings(max_examples=40, deadline=None)
@given(config=configs(), head=st.sampled_from(HEADS), dtype=st.sampled_from(sorted(DTYPES)),
       seed=st.integers(0, 2**16), tied=st.sampled_from(["all", "drop"]))
def test_in_memory_round_trips(config, head, dtype, seed, tied):
    params = random_flax_params(config, head, DTYPES[dtype], seed)
    pt = flax_to_pt(params, config, head, tied=tied)
    assert {k: v.shape for k, v in pt.items()} == expected_pt_shapes(config, head, tied=tied)
    back = pt_to_flax(pt, config, head)
    assert_bits_equal(flat(back), flat(params))
    assert_bits_equal(flax_to_pt(back, config, head, tied=tied), pt)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), head=st.sampled_from(HEADS), dtype=st.sampled_from(sorted(DTYPES)),
       shard=st.one_of(st.none(), st.integers(1, 4000)), pt_fmt=st.sampled_from(["safetensors", "bin"]),
       flax_fmt=st.sampled_from(["msgpack", "safetensors"]))
def test_file_round_trips_with_random_shard_sizes(config, head, dtype, shard, pt_fmt, flax_fmt):
    params = random_flax_params(config, head, DTYPES[dtype], seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        write_flax_msgpack(f"{tmp}/src", params)
        write_config(f"{tmp}/src", config)
        convert_checkpoint(f"{tmp}/src", f"{tmp}/pt", to="pytorch", format=pt_fmt, max_shard_size=shard)
        convert_checkpoint(f"{tmp}/pt", f"{tmp}/fx", to="flax", format=flax_fmt, max_shard_size=shard)
        loaded, summary = load_flax_params(f"{tmp}/fx", config, head)
    assert set(flat(loaded)) == set(expected_flax_shapes(config, head))
    assert_bits_equal(flat(loaded), flat(params))
    assert not summary.missing and not summary.unused and not summary.unexpected
