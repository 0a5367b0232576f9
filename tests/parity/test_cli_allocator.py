"""parity's CLI tunes the host allocator for a CPU gate (flax_bart.host_memory), the one arena only where
the model is not test-sized (parity.cli.tune_allocator_for)."""

from __future__ import annotations

import json

import pytest

from parity.cli import tune_allocator_for
from parity.options import compile_bound, count_params, estimated_params

BART_BASE = dict(d_model=768, vocab_size=50265, max_position_embeddings=1024, encoder_layers=6,
                 decoder_layers=6, encoder_ffn_dim=3072, decoder_ffn_dim=3072)


def test_estimated_params_follow_the_config():
    # facebook/bart-base holds 139,420,416 parameters; biases and norms are what the estimate leaves out
    assert 0.995 * 139_420_416 < estimated_params(BART_BASE) <= 139_420_416
    assert not compile_bound(estimated_params(BART_BASE))
    from bart_helpers import TINY
    from flax_bart import BartConfig
    from flax_bart.models import FlaxBartModel

    n = count_params(FlaxBartModel(BartConfig(**TINY), seed=0).params)
    estimate = estimated_params(TINY)
    assert 0.6 * n < estimate <= n and compile_bound(estimate)


@pytest.fixture
def calls(monkeypatch):
    seen = []
    import flax_bart.host_memory as hm

    monkeypatch.setattr(hm, "tune_host_allocator", lambda **kw: seen.append(kw) or True)
    monkeypatch.delenv("FLAX_BART_TUNE_ALLOCATOR", raising=False)
    return seen


def _ckpt(tmp_path, config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config) if isinstance(config, dict) else config)
    return tmp_path


@pytest.mark.parametrize("config, one_arena", [
    (BART_BASE, True),                                    # BART-size: keep XLA's big temporaries
    (dict(BART_BASE, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=99,
          encoder_layers=2, decoder_layers=2), False),    # test-sized: compile-bound, no arena lock
    ("{not json", True),                                  # a bad config: the gate reports it itself
])
def test_one_arena_only_for_models_that_are_not_test_sized(tmp_path, calls, config, one_arena):
    tune_allocator_for(("cpu",), _ckpt(tmp_path, config))
    assert calls == [{"one_arena": one_arena}]


def test_the_demo_says_which_it_runs(calls):
    tune_allocator_for(("cpu",), test_sized=True)
    tune_allocator_for(("cpu",), test_sized=False)
    tune_allocator_for(("cpu",))
    assert calls == [{"one_arena": False}, {"one_arena": True}, {"one_arena": True}]


def test_a_weights_file_reads_the_config_beside_it(tmp_path, calls):
    tune_allocator_for(("cpu:0",), _ckpt(tmp_path, BART_BASE) / "model.safetensors")
    assert calls == [{"one_arena": True}]


def test_left_alone_off_the_cpu_or_when_told(tmp_path, calls, monkeypatch):
    ckpt = _ckpt(tmp_path, BART_BASE)
    tune_allocator_for(("gpu",), ckpt)
    tune_allocator_for(("cpu", "gpu"), ckpt)
    monkeypatch.setenv("FLAX_BART_TUNE_ALLOCATOR", "0")
    tune_allocator_for(("cpu",), ckpt)
    assert calls == []


def test_a_fifo_or_huge_config_is_never_read(tmp_path, calls):
    import os

    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")   # reading it would block: the guarded reader refuses it
    tune_allocator_for(("cpu",), fifo)
    huge = _ckpt(tmp_path / "huge", '{"d_model": 16, "pad": "' + "x" * (64 << 20) + '"}')
    tune_allocator_for(("cpu",), huge)
    odd = _ckpt(tmp_path / "odd", '{"d_model": {"a": 1}, "vocab_size": [1]}')
    tune_allocator_for(("cpu",), odd)
    assert calls == [{"one_arena": True}] * 3
