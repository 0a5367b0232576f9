"""Checkpoints written by transformers 4.57.6's Flax BART load into every class and reproduce the
outputs 4.x computed for them (tests/fixtures/make_4x_fixtures.py made both)."""

import numpy as np
import pytest

from flax_bart.models import MODEL_CLASSES

FIX = "tests/fixtures/bart4x"
CASES = {"base": "base", "lm": "lm", "lm_untied": "lm", "lm_sharded": "lm", "cls": "cls", "qa": "qa",
         "causal": "causal"}
ATOL = 1e-5


def _close(a, b, mask=None, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    if mask is not None:
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    err = float(np.abs(a - b).max())
    assert err <= ATOL, f"{what}: max |diff| {err:.3g} > {ATOL}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_4x_checkpoint_reproduces_4x_outputs(name):
    head = CASES[name]
    model = MODEL_CLASSES[head].from_pretrained(f"{FIX}/{name}")
    z = np.load(f"{FIX}/{name}/expected_outputs.npz")
    if head == "causal":
        out = model(z["input_ids"], attention_mask=z["attention_mask"], output_hidden_states=True)
        m = z["attention_mask"]
        _close(out.logits, z["logits"], m, "logits")
        for i, h in enumerate(out.hidden_states):
            _close(h, z[f"hidden_states_{i}"], m, f"hidden_states[{i}]")
        x = model(z["input_ids"], attention_mask=m, encoder_hidden_states=z["encoder_hidden_states"],
                  encoder_attention_mask=z["encoder_attention_mask"], output_hidden_states=True)
        _close(x.logits, z["xattn_logits"], m, "cross-attention logits")
        return
    kw = {}
    if "decoder_input_ids" in z.files:
        kw = dict(decoder_input_ids=z["decoder_input_ids"], decoder_attention_mask=z["decoder_attention_mask"])
    out = model(z["input_ids"], attention_mask=z["attention_mask"], output_hidden_states=True, **kw)
    dec_mask = z["decoder_attention_mask"] if kw else z["derived_decoder_attention_mask"]
    head_mask = None if head == "cls" else dec_mask  # cls logits are per row, the rest per position
    for field in ("logits", "start_logits", "end_logits", "last_hidden_state"):
        if field in z.files:
            _close(getattr(out, field), z[field], head_mask, field)
    _close(out.encoder_last_hidden_state, z["encoder_last_hidden_state"], z["attention_mask"], "encoder_last")
    for i, h in enumerate(out.encoder_hidden_states):
        _close(h, z[f"encoder_hidden_states_{i}"], z["attention_mask"], f"encoder_hidden_states[{i}]")
    for i, h in enumerate(out.decoder_hidden_states):
        _close(h, z[f"decoder_hidden_states_{i}"], dec_mask, f"decoder_hidden_states[{i}]")


@pytest.mark.parametrize("name", ["lm", "lm_untied"])
def test_4x_cached_decoding_steps(name):
    """The 4.x generate-style call sequence (mask over the whole cache, explicit positions) works unchanged."""
    model = MODEL_CLASSES["lm"].from_pretrained(f"{FIX}/{name}")
    z = np.load(f"{FIX}/{name}/expected_outputs.npz")
    enc = model.encode(z["input_ids"], attention_mask=z["attention_mask"])
    max_len = int(z["cache_max_length"])
    past = model.init_cache(2, max_len, enc)
    for t in range(z["cached_decoder_input_ids"].shape[1]):
        out = model.decode(z["cached_decoder_input_ids"][:, t:t + 1], enc,
                           encoder_attention_mask=z["attention_mask"],
                           decoder_attention_mask=np.ones((2, max_len), "i4"),
                           decoder_position_ids=np.full((2, 1), t, "i4"), past_key_values=past)
        past = out.past_key_values
        _close(out.logits[:, 0], z["cached_step_logits"][t], None, f"step {t}")


def test_4x_causal_cached_steps():
    model = MODEL_CLASSES["causal"].from_pretrained(f"{FIX}/causal")
    z = np.load(f"{FIX}/causal/expected_outputs.npz")
    past = model.init_cache(2, int(z["cache_max_length"]))
    for t in range(z["cached_input_ids"].shape[1]):
        out = model(z["cached_input_ids"][:, t:t + 1], past_key_values=past)
        past = out.past_key_values
        _close(out.logits[:, 0], z["cached_step_logits"][t], None, f"step {t}")


def test_base_checkpoint_into_head_models_warns_and_draws_only_head_weights():
    with pytest.warns(UserWarning, match="qa_outputs"):
        qa = MODEL_CLASSES["qa"].from_pretrained(f"{FIX}/base")
    base = MODEL_CLASSES["base"].from_pretrained(f"{FIX}/base")
    np.testing.assert_array_equal(qa.params["model"]["shared"]["embedding"], base.params["shared"]["embedding"])


def test_head_checkpoint_into_base_model_strips_prefix():
    base = MODEL_CLASSES["base"].from_pretrained(f"{FIX}/qa")
    qa = MODEL_CLASSES["qa"].from_pretrained(f"{FIX}/qa")
    np.testing.assert_array_equal(base.params["encoder"]["layers"]["1"]["fc2"]["kernel"],
                                  qa.params["model"]["encoder"]["layers"]["1"]["fc2"]["kernel"])
