"""The PyTorch reference BART equals transformers' PyTorch BART (eager attention) on tiny random models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flax_bart.config import BartConfig
from parity import inputs
from parity.reference import (
    ReferenceLoadError, build_reference, greedy_generate, legacy_cache, load_transformers_reference, random_head_weights,
    to_numpy,
)
from parity.reference_modules import ACTIVATIONS

transformers = pytest.importorskip("transformers")

HEADS = ("base", "lm", "cls", "qa", "causal")
HF_CLASSES = {
    "base": "BartModel", "lm": "BartForConditionalGeneration", "cls": "BartForSequenceClassification",
    "qa": "BartForQuestionAnswering", "causal": "BartForCausalLM",
}
TINY = dict(vocab_size=80, max_position_embeddings=40, dropout=0.0, init_std=0.3)
CONFIGS = {
    # symmetric, tied, gelu, no embedding scale
    "gelu_tied": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, activation_function="gelu"),
    # asymmetric depth/heads/ffn, untied lm_head, scaled embeddings, tanh-approximate gelu
    "gelu_new_untied": dict(d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
                            decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=40,
                            activation_function="gelu_new", scale_embedding=True, tie_word_embeddings=False),
    "silu_scaled": dict(d_model=24, encoder_layers=3, decoder_layers=2, encoder_attention_heads=3,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=16,
                        activation_function="silu", scale_embedding=True, num_labels=4),
    "quick_gelu": dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                       activation_function="quick_gelu", tie_word_embeddings=False),
}


def make_config(name: str) -> BartConfig:
    return BartConfig.from_dict({**TINY, **CONFIGS[name]})


def hf_model(config: BartConfig, head: str, seed: int = 0):
    """A transformers model with random weights everywhere (LayerNorms, biases, final_logits_bias too)."""
    torch.manual_seed(seed)
    hf_config = transformers.BartConfig.from_dict(config.to_dict())
    model = getattr(transformers, HF_CLASSES[head])._from_config(hf_config, attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("bias") or "norm" in name:
                t.add_(0.2 * torch.randn(t.shape, generator=gen))
        if head != "causal":  # v5 unties encoder/decoder embeddings when untied; BART shares them
            core = model if head == "base" else model.model
            core.encoder.embed_tokens.weight = core.shared.weight
            core.decoder.embed_tokens.weight = core.shared.weight
    return model


def hf_outputs(model, head, case, use_cache=True):
    kw = dict(output_hidden_states=True, output_attentions=True, use_cache=use_cache, return_dict=True)
    t = {k: torch.as_tensor(v).long() for k, v in case.items()}
    with torch.no_grad():
        if head == "causal":
            out = model(**t, past_key_values=transformers.DynamicCache() if use_cache else None, **kw)
            return dict(logits=out.logits, hidden_states=out.hidden_states, attentions=out.attentions,
                        past_key_values=legacy_cache(out.past_key_values))
        out = model(**t, **kw)
    named = {"base": ("last_hidden_state",), "lm": ("logits",), "cls": ("logits",),
             "qa": ("start_logits", "end_logits")}[head]
    rest = ("decoder_hidden_states", "decoder_attentions", "cross_attentions", "encoder_last_hidden_state",
            "encoder_hidden_states", "encoder_attentions")
    res = {k: getattr(out, k) for k in named + rest}
    res["past_key_values"] = legacy_cache(out.past_key_values)
    return res


def valid(name: str, case: dict, shape, head: str) -> np.ndarray:
    """Where a tensor carries meaning: attended query positions, and for decoder outputs of seq2seq
    heads every row with at least one attended input token (a fully padded row's outputs mean nothing)."""
    mask = case["attention_mask"].astype(bool)
    row = mask.any(axis=1)
    if name == "logits" and len(shape) == 2:  # classification logits (B, labels)
        return np.broadcast_to(row[:, None], shape)
    attn = "attentions" in name  # (B, H, Q, K)
    if name.startswith("encoder_") or head == "causal":
        q = mask
    else:
        q = np.broadcast_to(row[:, None], (shape[0], shape[2] if attn else shape[1]))
        if "decoder_attention_mask" in case:
            q = q & case["decoder_attention_mask"].astype(bool)
    if attn:
        return np.broadcast_to(q[:, None, :, None], shape)
    return np.broadcast_to(q.reshape(q.shape + (1,) * (len(shape) - 2)), shape)


def max_diff(a: torch.Tensor, b: torch.Tensor, where=None) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    d = (a.double() - b.double()).abs().numpy()
    if where is not None:
        d = d[where]
    return float(d.max()) if d.size else 0.0


def compare(ours: dict, theirs: dict, case: dict, head: str, tol: float):
    """Every tensor of `theirs` against ours under the same name; returns {name: max |diff|}."""
    worst = {}
    for name, ref in theirs.items():
        got = ours[name]
        assert (got is None) == (ref is None), name
        if ref is None:
            continue
        if name == "past_key_values":
            for i, (gl, rl) in enumerate(zip(got, ref, strict=True)):
                for j, (g, r) in enumerate(zip(gl, rl, strict=True)):
                    worst[f"past_key_values[{i}][{j}]"] = max_diff(g, r)
            continue
        pairs = zip(got, ref, strict=True) if isinstance(ref, tuple) else [(got, ref)]
        for i, (g, r) in enumerate(pairs):
            key = f"{name}[{i}]" if isinstance(ref, tuple) else name
            worst[key] = max_diff(g, r, valid(name, case, tuple(r.shape), head))
    bad = {k: v for k, v in worst.items() if not v <= tol}
    assert not bad, f"exceeds {tol}: {bad}"
    return worst


def test_activations_equal_pytorch_table():
    from transformers.activations import ACT2FN

    from flax_bart.activations import ACTIVATIONS as FLAX_ACTIVATIONS

    assert set(FLAX_ACTIVATIONS) <= set(ACTIVATIONS)
    x = torch.linspace(-6, 6, 257, dtype=torch.float64)
    for name, dtype in itertools.product(ACTIVATIONS, (torch.float64, torch.float32, torch.float16, torch.bfloat16)):
        xs = x.to(dtype)
        assert torch.equal(ACTIVATIONS[name](xs), ACT2FN[name](xs)), (name, dtype)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_forward_equals_transformers_fp32(config_name, head):
    config = make_config(config_name)
    model = hf_model(config, head, seed=len(config_name))
    ref = build_reference(config, head, model.state_dict())
    for case_name, case in inputs.cases_for_head(config, head, seed=1).items():
        ours = ref.forward(**case, output_hidden_states=True, output_attentions=True, use_cache=True)
        theirs = hf_outputs(model, head, case)
        assert set(theirs) <= set(ours)
        compare(ours, theirs, case, head, tol=1e-6)
        n_enc, n_dec = config.encoder_layers, config.decoder_layers
        hidden = ours["hidden_states"] if head == "causal" else ours["decoder_hidden_states"]
        assert len(hidden) == n_dec + 1, case_name
        if head != "causal":
            assert len(ours["encoder_hidden_states"]) == n_enc + 1
            assert len(ours["cross_attentions"]) == n_dec


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head", ["lm", "qa", "causal"])
def test_low_and_double_precision_equal_transformers(dtype, head):
    """Same torch ops in the same order: the reference reproduces transformers bit for bit."""
    config = make_config("gelu_new_untied")
    model = hf_model(config, head, seed=3)
    sd = model.state_dict()
    ref = build_reference(config, head, sd, dtype=dtype)
    model = model.to(dtype)
    case = inputs.cases_for_head(config, head, seed=2)["right_padding"]
    compare(ref.forward(**case, output_hidden_states=True, output_attentions=True, use_cache=True),
            hf_outputs(model, head, case), case, head, tol=0.0)


def test_fp16_encoder_clamp_matches_transformers():
    config = make_config("gelu_tied")
    model = hf_model(config, "qa", seed=5)
    with torch.no_grad():  # the last encoder layer's LayerNorm output overflows fp16
        model.model.encoder.layers[-1].final_layer_norm.weight.fill_(6e4)
    ref = build_reference(config, "qa", model.state_dict(), dtype="float16")
    model = model.half()
    case = inputs.cases_for_head(config, "qa", seed=0)["right_padding"]
    ours = ref.forward(**case, output_hidden_states=True)
    theirs = hf_outputs(model, "qa", case, use_cache=False)
    enc = ours["encoder_last_hidden_state"]
    assert torch.isfinite(enc).all() and enc.abs().max() == torch.finfo(torch.float16).max - 1000
    for name in ("encoder_last_hidden_state", "start_logits", "end_logits"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("head", ["base", "lm", "causal"])
def test_cached_decoding_equals_full_pass(head):
    config = make_config("gelu_new_untied")
    ref = build_reference(config, head, hf_model(config, head, seed=7).state_dict())
    case = inputs.cases_for_head(config, head, seed=3)["right_padding"]
    dec_ids = torch.as_tensor(case["input_ids" if head == "causal" else "decoder_input_ids"]).long()
    kw = dict(output_hidden_states=True, output_attentions=True)
    enc = mask = None
    if head != "causal":
        mask = case["attention_mask"]
        enc = ref.encode(case["input_ids"], mask).last_hidden_state
    full = ref.decode(dec_ids, enc, mask, use_cache=False, **kw)
    for splits in ([1] * dec_ids.shape[1], [3, 1, dec_ids.shape[1] - 4]):
        past, start, steps = None, 0, []
        for n in splits:
            out = ref.decode(dec_ids[:, start:start + n], enc, mask, past_key_values=past, **kw)
            past, start = out.past_key_values, start + n
            steps.append(out)
        assert past[0][0].shape[2] == dec_ids.shape[1]
        for name in ("logits", "last_hidden_state") if head != "base" else ("last_hidden_state",):
            got = torch.cat([s[name] for s in steps], dim=1)
            assert max_diff(got, full[name]) <= 1e-5, (name, splits)
        for i in range(config.decoder_layers + 1):
            got = torch.cat([s.hidden_states[i] for s in steps], dim=1)
            assert max_diff(got, full.hidden_states[i]) <= 1e-5
        # the last step's attention rows equal the full pass's last rows
        last = steps[-1].attentions[0]
        assert max_diff(last, full.attentions[0][:, :, -last.shape[2]:, :]) <= 1e-6
    if head == "lm":  # the same through forward(..., past_key_values=...)
        first = ref.forward(case["input_ids"], mask, decoder_input_ids=dec_ids[:, :5], use_cache=True)
        rest = ref.forward(case["input_ids"], mask, decoder_input_ids=dec_ids[:, 5:],
                           past_key_values=first.past_key_values)
        assert max_diff(torch.cat([first.logits, rest.logits], dim=1), full.logits) <= 1e-5


def _hf_generate(model, head, ids, mask, **kw):
    extra = {"past_key_values": transformers.DynamicCache()} if head == "causal" else {}
    with torch.no_grad():
        return model.generate(input_ids=torch.as_tensor(ids).long(), attention_mask=torch.as_tensor(mask).long(),
                              do_sample=False, num_beams=1, **extra, **kw)


@pytest.mark.parametrize("config_name", ["gelu_tied", "quick_gelu"])
@pytest.mark.parametrize("head", ["lm", "causal"])
def test_greedy_equals_transformers_generate(config_name, head):
    config = make_config(config_name)
    model = hf_model(config, head, seed=11)
    ref = build_reference(config, head, model.state_dict())
    case = inputs.cases_for_head(config, head, seed=4)["left_padding" if head == "causal" else "right_padding"]
    ids, mask = case["input_ids"], case["attention_mask"]
    base = ref.greedy_generate(ids, mask, max_new_tokens=8)
    assert base.tolist() == _hf_generate(model, head, ids, mask, max_new_tokens=8).tolist()
    # stop early: make a token the model emits an <eos>, so rows finish at different steps and get pad
    start = 1 if head == "lm" else ids.shape[1]
    stop_token = int(base[0, start + 2])
    settings = [dict(max_new_tokens=8, eos_token_id=[config.eos_token_id, stop_token]),
                dict(max_new_tokens=6, forced_bos_token_id=config.bos_token_id),
                dict(max_length=start + 5)]
    for kw in settings:
        got = ref.greedy_generate(ids, mask, **kw)
        assert got.tolist() == _hf_generate(model, head, ids, mask, **kw).tolist(), kw
    early = ref.greedy_generate(ids, mask, **settings[0])
    assert (early[0, start + 3:] == config.pad_token_id).all()
    # per-step processed scores equal transformers' output_scores (forced steps included)
    for kw in settings[:2]:
        seqs, scores = ref.greedy_generate(ids, mask, output_scores=True, **kw)
        hf = _hf_generate(model, head, ids, mask, output_scores=True, return_dict_in_generate=True, **kw)
        assert seqs.tolist() == hf.sequences.tolist() and len(scores) == len(hf.scores) == seqs.shape[1] - start
        for mine, theirs in zip(scores, hf.scores):
            assert mine.dtype == torch.float32 and torch.allclose(mine, theirs.float(), atol=1e-5, rtol=1e-5), kw
    # switching forced <eos> off (transformers needs it set on its generation config)
    adapter = load_transformers_reference(config, head, model.state_dict())
    assert (greedy_generate(ref, ids, mask, 7, forced_eos_token_id=None).tolist()
            == adapter.greedy_generate(ids, mask, 7, forced_eos_token_id=None).tolist())


@pytest.mark.parametrize("head", HEADS)
def test_transformers_adapter_equals_reference(head):
    config = make_config("silu_scaled")
    ref = build_reference(config, head, seed=21)
    adapter = load_transformers_reference(config, head, seed=21)  # same random weights
    case = inputs.cases_for_head(config, head, seed=5)["fully_masked_row" if head == "cls" else "fully_padded_row"]
    ours = ref.forward(**case, output_hidden_states=True, output_attentions=True, use_cache=True)
    theirs = adapter.forward(**case, output_hidden_states=True, output_attentions=True, use_cache=True)
    assert list(ours) == list(theirs)
    theirs["past_key_values"] = legacy_cache(theirs["past_key_values"])
    compare(ours, theirs, case, head, tol=1e-6)
    if head != "causal":
        assert max_diff(ref.encode(case["input_ids"]).last_hidden_state,
                        adapter.encode(case["input_ids"]).last_hidden_state) <= 1e-6


def test_sdpa_close_to_eager():
    config = make_config("gelu_tied")
    sd = hf_model(config, "qa", seed=2).state_dict()
    eager, sdpa = build_reference(config, "qa", sd), build_reference(config, "qa", sd, attn_impl="sdpa")
    case = inputs.cases_for_head(config, "qa", seed=6)["qa_pairs"]
    a, b = eager.forward(**case), sdpa.forward(**case)
    for name in ("start_logits", "end_logits"):
        assert max_diff(a[name], b[name], valid(name, case, tuple(a[name].shape), "qa")) <= 1e-5
    assert sdpa.forward(**case, output_attentions=True)["encoder_attentions"] is not None


# ---- strict loading -----------------------------------------------------------------------------

TIED = ["model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
        "lm_head.weight"]


def test_loading_accepts_any_subset_of_tied_copies():
    config = make_config("gelu_tied")
    full = hf_model(config, "lm", seed=1).state_dict()
    want = build_reference(config, "lm", full).forward(np.array([[0, 5, 6, 2]]))["logits"]
    for r in range(1, 5):
        for keep in itertools.combinations(TIED, r):
            sd = {k: v for k, v in full.items() if k not in TIED or k in keep}
            assert torch.equal(build_reference(config, "lm", sd).forward(np.array([[0, 5, 6, 2]]))["logits"], want)


@pytest.mark.parametrize("head", ["base", "lm", "cls", "qa", "causal"])
def test_loaded_reference_holds_exactly_the_state_dict(head):
    # the model is built on the meta device and given fresh storage: nothing of that storage may survive
    config = make_config("gelu_tied")
    sd = build_reference(config, head, seed=3).hf_state_dict(tied_copies=False)
    for dtype in (torch.float32, torch.bfloat16):
        ref = build_reference(config, head, sd, dtype=dtype)
        got = ref.hf_state_dict(tied_copies=False)
        assert sorted(got) == sorted(sd)
        for key, value in sd.items():
            assert got[key].dtype == dtype and torch.equal(got[key], value.to(dtype)), key
    assert build_reference(config, head, seed=3).hf_state_dict(tied_copies=False).keys() == sd.keys()


def test_loading_errors_list_every_problem():
    config = make_config("gelu_tied")
    sd = dict(hf_model(config, "lm", seed=1).state_dict())
    del sd["model.encoder.layers.1.fc2.bias"]
    sd["model.encoder.layers.9.fc1.weight"] = torch.zeros(3)
    sd["model.decoder.layers.0.fc1.weight"] = torch.zeros(48, 31)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    with pytest.raises(ReferenceLoadError) as info:
        build_reference(config, "lm", sd)
    err, msg = info.value, str(info.value)
    assert err.missing == ["model.encoder.layers.1.fc2.bias"]
    assert err.unexpected == ["model.encoder.layers.9.fc1.weight"]
    assert err.wrong_shapes == ["model.decoder.layers.0.fc1.weight: expected (48, 32), got (48, 31)"]
    assert len(err.tied) == 1 and "lm_head.weight != model.shared.weight" in err.tied[0]
    for part in ("missing keys (1)", "unexpected keys (1)", "wrong shapes (1)", "tied copies differ (1)"):
        assert part in msg


def test_loading_edge_cases():
    config = make_config("gelu_new_untied")
    sd = dict(hf_model(config, "lm", seed=2).state_dict())
    # untied: lm_head is its own weight and required; final_logits_bias may be absent (zeros)
    ref = build_reference(config, "lm", {k: v for k, v in sd.items() if k != "final_logits_bias"})
    assert torch.count_nonzero(ref.final_logits_bias) == 0
    with pytest.raises(ReferenceLoadError, match="missing keys .*lm_head.weight"):
        build_reference(config, "lm", {k: v for k, v in sd.items() if k != "lm_head.weight"})
    with pytest.raises(ReferenceLoadError, match="missing keys .*model.shared.weight or"):
        build_reference(config, "lm", {k: v for k, v in sd.items() if k not in TIED[:3]})
    # legacy fairseq entries are ignored as transformers ignores them; numpy arrays are accepted
    base = {k.removeprefix("model."): v.numpy() for k, v in sd.items() if k.startswith("model.")}
    build_reference(config, "base", {**base, "encoder.version": np.array([2.0])})
    with pytest.raises(ReferenceLoadError, match="unexpected keys"):
        build_reference(config, "base", {"model." + k: v for k, v in base.items()})
    with pytest.raises(ReferenceLoadError, match="tied copies differ"):
        nan = torch.full_like(sd["model.shared.weight"], float("nan"))
        build_reference(config, "lm", {**sd, "model.shared.weight": nan})


def test_exported_state_dict_loads_into_transformers_strictly():
    config = make_config("gelu_new_untied")
    for head in HEADS:
        ref = build_reference(config, head, seed=3)
        sd = ref.hf_state_dict()
        model = getattr(transformers, HF_CLASSES[head])._from_config(
            transformers.BartConfig.from_dict(config.to_dict()))
        model.load_state_dict(sd, strict=True)
        assert "final_logits_bias" in sd if head == "lm" else "final_logits_bias" not in sd


# ---- input checks ------------------------------------------------------------------------------

def test_bad_inputs_give_clear_errors():
    config = make_config("gelu_tied")
    cls = build_reference(config, "cls", seed=0)
    with pytest.raises(ValueError, match=r"same number .* got \[1, 2\]"):
        cls.forward(np.array([[0, 5, 6, 2], [0, 2, 6, 2]]))
    with pytest.raises(ValueError, match=r"got \[0\]"):
        cls.forward(np.array([[0, 5, 6, 7]]))
    with pytest.raises(ValueError, match=r"input_ids: token ids must lie in \[0, vocab_size=80\), got min 0 max 80"):
        cls.forward(np.array([[0, 80, 2]]))
    with pytest.raises(ValueError, match="41 positions .* max_position_embeddings=40"):
        cls.forward(np.full((1, 41), 2))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(1, 3\), got \(1, 4\)"):
        cls.forward(np.array([[0, 5, 2]]), np.ones((1, 4)))
    with pytest.raises(ValueError, match="head='bogus'"):
        build_reference(config, "bogus")
    with pytest.raises(ValueError, match="dtype='int8'"):
        build_reference(config, "lm", dtype="int8")
    with pytest.raises(ValueError, match="needs head 'lm' or 'causal'"):
        greedy_generate(cls, np.array([[0, 2]]), max_new_tokens=2)


def test_missing_transformers_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="needs the `transformers` package"):
        load_transformers_reference(make_config("gelu_tied"), "qa")


def test_to_numpy_keeps_dtypes():
    import ml_dtypes

    config = make_config("gelu_tied")
    out = build_reference(config, "lm", seed=1, dtype="bfloat16").forward(np.array([[0, 5, 2]]), use_cache=True)
    arrays = to_numpy(out)
    assert arrays["logits"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(arrays["logits"].astype(np.float32), out["logits"].float().numpy())
    assert arrays["past_key_values"][0][0].shape == (1, 4, 3, 8)


@pytest.mark.parametrize("config_name", ["gelu_tied", "gelu_new_untied", "silu_scaled"])
def test_head_weights_drawn_alone_equal_the_whole_models_draw(config_name):
    config = make_config(config_name)
    after_body = {}
    for order in (("qa", "cls", "lm", "causal", "base", "qa"), ("cls", "lm")):   # a cold and a warm body state
        for head in order:
            own = random_head_weights(config, head, 3, after_body)
            full = build_reference(config, head, seed=3).hf_state_dict(tied_copies=False)
            body = ("model", "encoder", "decoder", "shared")   # "base" exports the body without "model."
            assert set(own) == {k for k in full if k.split(".")[0] not in body}, head
            for k, v in own.items():
                assert v.dtype == np.float32 and np.array_equal(v, full[k].numpy()), (head, k)
    assert len(after_body) == 2   # one state per body: seq2seq and decoder-only
    other = random_head_weights(config, "qa", 4, after_body)   # another seed: another draw
    assert not np.array_equal(other["qa_outputs.weight"], random_head_weights(config, "qa", 3, {})["qa_outputs.weight"])
