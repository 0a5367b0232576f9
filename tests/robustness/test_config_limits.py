"""The config guard counts parameters in closed form (no layout is built): that count must be the
exact size of every tensor the converter's rule table lists, and real BART configs stay far below
the limits."""

from __future__ import annotations

import math

import pytest

from convert.rules import all_params
from flax_bart.config import MAX_LAYERS, MAX_PARAMETERS, BartConfig, ConfigError

BART_LARGE = dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_ffn_dim=4096,
                  decoder_ffn_dim=4096, encoder_attention_heads=16, decoder_attention_heads=16,
                  max_position_embeddings=1024)


@pytest.mark.parametrize("changes", [{}, {"tie_word_embeddings": False}, {"num_labels": 7},
                                     {"encoder_layers": 3, "decoder_layers": 1, "d_model": 64,
                                      "encoder_attention_heads": 4, "decoder_attention_heads": 8}])
def test_closed_form_count_equals_the_rule_table(changes):
    config = BartConfig.from_dict({**BART_LARGE, **changes})
    assert config.num_parameters() == sum(math.prod(p.flax_shape) for p in all_params(config))


def test_bart_large_is_far_below_the_limits():
    config = BartConfig.from_dict(BART_LARGE)
    assert 406e6 < config.num_parameters() < 410e6  # lm: 406.3M; the count includes every head
    assert config.num_parameters() * 1000 < MAX_PARAMETERS and config.encoder_layers * 50 < MAX_LAYERS


def test_the_largest_part_is_named():
    with pytest.raises(ConfigError, match=r"the largest part is the word embedding \(vocab_size=2000000000 x "
                                          r"d_model=1024\)"):
        BartConfig.from_dict({**BART_LARGE, "vocab_size": 2_000_000_000})
    with pytest.raises(ConfigError, match=r"the largest part is the decoder layers \(decoder_layers=12, "
                                          r"d_model=1000000, decoder_ffn_dim=4096\)"):
        BartConfig.from_dict({**BART_LARGE, "d_model": 1_000_000})


def test_json_files_that_are_not_regular_files_are_refused_without_blocking(tmp_path):
    import os

    from flax_bart.config import read_json_file

    os.mkfifo(tmp_path / "config.json")  # opening it for reading would wait for a writer
    with pytest.raises(ConfigError, match="config is not a regular file"):
        read_json_file(tmp_path / "config.json", "config")
    with pytest.raises(ConfigError, match="config is not a regular file"):
        BartConfig.from_json_file(tmp_path)
