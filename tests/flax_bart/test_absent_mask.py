"""Attention mask entries < 0 (flax_bart.modules.ABSENT) mark positions outside the sequence: padding a
batch with them on the right changes no output at the real positions, even for a row that attends to
nothing (uniform over its own positions, as in PyTorch BART), in every head and both attention paths."""

import jax
import numpy as np
import pytest

from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from flax_bart.modules import ABSENT
from tests.bart_helpers import TINY

CFG = BartConfig(**TINY)
T, PADDED = 9, 13   # 13: no other axis of the tiny model has this size


def _inputs(head, length):
    rng = np.random.default_rng(5)
    ids = rng.integers(4, TINY["vocab_size"], (3, T)).astype(np.int32)
    ids[:, -1] = 2
    mask = np.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, :] = 0   # attends to nothing
    dec = ids[:, ::-1].copy()
    dec_mask = np.ones_like(ids)
    dec_mask[1, :] = 0
    extra = length - T

    def pad(a, value):
        return np.concatenate([a, np.full((3, extra), value, a.dtype)], axis=1)

    kw = dict(attention_mask=pad(mask, ABSENT))
    if head != "causal":
        kw.update(decoder_input_ids=pad(dec, 1), decoder_attention_mask=pad(dec_mask, ABSENT))
    return pad(ids, 1), kw


def _cut(x):
    x = np.asarray(x, np.float32)
    return x[tuple(slice(0, T) if n == PADDED else slice(None) for n in x.shape)]


@pytest.mark.parametrize("head,impl", [(h, "explicit") for h in ("base", "lm", "cls", "qa", "causal")]
                         + [("lm", "xla"), ("causal", "xla")])
def test_absent_padding_changes_no_real_output(head, impl):
    model = MODEL_CLASSES[head](CFG, seed=0, attention_impl=impl)
    flags = dict(output_hidden_states=True, output_attentions=True)
    ids, kw = _inputs(head, T)
    plain = jax.tree_util.tree_leaves(model(ids, **kw, **flags).to_tuple())
    ids, kw = _inputs(head, PADDED)
    padded = jax.tree_util.tree_leaves(model(ids, **kw, **flags).to_tuple())
    assert len(plain) == len(padded) > 3
    for a, b in zip(plain, padded):
        np.testing.assert_allclose(_cut(b), np.asarray(a, np.float32), rtol=1e-5, atol=1e-6)


def test_masked_padding_would_change_the_row_that_attends_to_nothing():
    """The control: padding with 0 (masked) instead of ABSENT moves that row, so the test above can fail."""
    model = MODEL_CLASSES["base"](CFG, seed=0)
    ids, kw = _inputs("base", T)
    plain = np.asarray(model(ids, **kw).encoder_last_hidden_state)
    ids, kw = _inputs("base", PADDED)
    kw["attention_mask"] = np.where(kw["attention_mask"] < 0, 0, kw["attention_mask"])
    padded = np.asarray(model(ids, **kw).encoder_last_hidden_state)[:, :T]
    np.testing.assert_allclose(padded[:2], plain[:2], rtol=1e-5, atol=1e-6)
    assert np.abs(padded[2] - plain[2]).max() > 1e-3


def test_cached_decoding_ignores_the_slots_not_filled_yet():
    """A row that attends to nothing attends uniformly over the filled cache slots only, as PyTorch's
    growing cache does, so its outputs do not depend on the cache length."""
    model = MODEL_CLASSES["causal"](CFG, seed=0)
    ids = np.array([[5, 6, 7], [8, 9, 10]], np.int32)
    logits = {}
    for length in (4, 12):
        mask = np.ones((2, length), np.int32)
        mask[1] = 0
        cache, steps = model.init_cache(2, length), []
        for i in range(3):
            out = model(ids[:, i:i + 1], attention_mask=mask, past_key_values=cache)
            cache = out.past_key_values
            steps.append(np.asarray(out.logits[:, 0]))
        logits[length] = np.stack(steps, 1)
    np.testing.assert_allclose(logits[12], logits[4], rtol=1e-5, atol=1e-6)
