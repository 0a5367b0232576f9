"""transformers v5 with tie_word_embeddings=False: `shared`, `encoder.embed_tokens` and
`decoder.embed_tokens` are three parameters with different values. flax-bart loads that layout as three
Flax parameters, matches PyTorch on every output, generates the same tokens, and converts back to
exactly the keys and bits v5 wrote; copies that must be equal (tied configs) are still refused."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from bart_helpers import batch, torch_model
from convert import ConversionError, convert_checkpoint
from flax_bart.models import MODEL_CLASSES
from test_models_vs_torch import _check_all, _torch_forward

UNTIED = dict(tie_word_embeddings=False, vocab_size=64)


def v5_untied(head, directory, seed=3):
    """A v5 model of `head` whose input embeddings differ from `shared`, saved by v5 to `directory`."""
    tm = torch_model(head, seed=seed, **UNTIED)
    base = getattr(tm, "model", tm)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for module in (getattr(base, "encoder", None), base.decoder):
            if module is not None:
                module.embed_tokens.weight.copy_(0.05 * torch.randn(module.embed_tokens.weight.shape, generator=g))
    tm.save_pretrained(directory)
    return tm


@pytest.mark.parametrize("head", ["base", "lm", "causal", "qa"])
def test_untied_v5_checkpoint_loads_and_matches_pytorch(head, tmp_path):
    tm = v5_untied(head, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    prefix = "" if head == "base" else "model."
    if head != "causal":
        assert not np.array_equal(saved[f"{prefix}shared.weight"], saved[f"{prefix}encoder.embed_tokens.weight"])
    model = MODEL_CLASSES[head].from_pretrained(tmp_path)
    params = model.params if head == "base" else model.params["model"]
    if head == "causal":
        assert "shared" not in params  # the causal LM holds one word embedding either way
    else:
        assert model.config.separate_input_embeddings
        for side in ("encoder", "decoder"):
            np.testing.assert_array_equal(params[side]["embed_tokens"]["embedding"],
                                          saved[f"{prefix}{side}.embed_tokens.weight"])
        np.testing.assert_array_equal(params["shared"]["embedding"], saved[f"{prefix}shared.weight"])
    ids, mask = batch(seed=1, b=3, t=9, vocab=64)
    to = _torch_forward(tm, head, ids, mask)
    fo = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    _check_all(head, to, fo, mask)


def test_untied_greedy_generation_is_token_equal(tmp_path):
    tm = v5_untied("lm", tmp_path)
    model = MODEL_CLASSES["lm"].from_pretrained(tmp_path)
    ids, mask = batch(seed=2, b=3, t=9, vocab=64)
    settings = dict(max_new_tokens=6, num_beams=1, do_sample=False)
    out = model.generate(ids, attention_mask=mask, **settings)
    with torch.no_grad():
        ref = tm.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          **settings)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref.numpy())


@pytest.mark.parametrize("head, fmt", [("lm", "msgpack"), ("lm", "safetensors"), ("base", "msgpack"),
                                       ("causal", "msgpack")])
def test_round_trip_gives_back_v5s_exact_keys_and_bits(head, fmt, tmp_path):
    v5_untied(head, tmp_path / "v5")
    convert_checkpoint(str(tmp_path / "v5"), str(tmp_path / "flax"), to="flax", format=fmt)
    convert_checkpoint(str(tmp_path / "flax"), str(tmp_path / "back"), to="pytorch")
    a, b = load_file(str(tmp_path / "v5" / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    # the file itself: same header (keys, dtypes, shapes, offsets, metadata) and the same bytes
    assert (tmp_path / "v5" / "model.safetensors").read_bytes() == (tmp_path / "back" / "model.safetensors").read_bytes()
    if head == "lm":  # and v5 itself loads the result
        back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "back")
        assert not torch.equal(back.model.shared.weight, back.model.encoder.embed_tokens.weight)


def test_save_pretrained_keeps_the_layout(tmp_path):
    v5_untied("lm", tmp_path / "v5")
    model = MODEL_CLASSES["lm"].from_pretrained(tmp_path / "v5")
    model.save_pretrained(tmp_path / "flax")
    assert json.loads((tmp_path / "flax" / "config.json").read_text())["separate_input_embeddings"] is True
    again = MODEL_CLASSES["lm"].from_pretrained(tmp_path / "flax")
    flat_a = {"/".join(k): v for k, v in _flatten(model.params)}
    flat_b = {"/".join(k): v for k, v in _flatten(again.params)}
    assert flat_a.keys() == flat_b.keys() and "model/encoder/embed_tokens/embedding" in flat_a
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), np.asarray(v)


def test_a_causal_lm_reads_the_decoder_embedding_of_an_untied_seq2seq_checkpoint(tmp_path):
    """As PyTorch's BartForCausalLM does (model.decoder.embed_tokens.weight): `shared` and the encoder's
    copy, which differ from it, are another model's tensors, not tied copies to refuse."""
    v5_untied("lm", tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not np.array_equal(saved["model.shared.weight"], saved["model.decoder.embed_tokens.weight"])
    model = MODEL_CLASSES["causal"].from_pretrained(tmp_path)
    np.testing.assert_array_equal(model.params["model"]["decoder"]["embed_tokens"]["embedding"],
                                  saved["model.decoder.embed_tokens.weight"])
    np.testing.assert_array_equal(model.params["lm_head"]["kernel"], saved["lm_head.weight"].T)
    tm = transformers.BartForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = batch(seed=1, b=3, t=9, vocab=64)
    to = _torch_forward(tm, "causal", ids, mask)
    fo = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    _check_all("causal", to, fo, mask)
    out = tmp_path.parent / f"{tmp_path.name}-causal"
    summary = convert_checkpoint(str(tmp_path), str(out), to="flax", head="causal")
    assert summary.unused and not summary.unexpected


def test_equal_copies_keep_the_single_embedding_layout(tmp_path):
    torch_model("lm", seed=3, **UNTIED).save_pretrained(tmp_path)  # the helper keeps the copies equal
    model = MODEL_CLASSES["lm"].from_pretrained(tmp_path)
    assert not model.config.separate_input_embeddings
    assert "embed_tokens" not in model.params["model"]["encoder"]


def test_differing_copies_under_a_tied_config_are_still_refused(tmp_path):
    torch_model("lm", seed=3, vocab_size=64).save_pretrained(tmp_path)  # tied: v5 saves shared only
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["model.encoder.embed_tokens.weight"] = sd["model.shared.weight"] + np.float32(0.5)
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="tied copies differ: model.encoder.embed_tokens.weight"):
        MODEL_CLASSES["lm"].from_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="tied copies differ"):
        convert_checkpoint(str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}-out"), to="flax")


def test_parity_gate_passes_on_an_untied_checkpoint(tmp_path):
    from parity.harness import Options, run_parity

    v5_untied("lm", tmp_path / "v5")
    outcome = run_parity(str(tmp_path / "v5"), None, Options(heads=("lm",), dtypes=("float32",), steps=2,
                                                             cases=("right_padding",), batch_size=2, seq_len=8))
    assert outcome.checkpoint.config.separate_input_embeddings
    assert outcome.report.passed, outcome.report.headline


def test_gate_flax_params_in_memory_equal_the_files_conversion_on_an_untied_checkpoint(tmp_path):
    """The parity gate converts a PyTorch-only checkpoint's weights in memory, per head; on the v5 untied
    layout that gives what converting the files gives, for the source head and for heads it serves."""
    from convert import load_flax_params, rules
    from convert.tree import flatten
    from parity.checkpoint import open_checkpoint

    v5_untied("lm", tmp_path)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.config.separate_input_embeddings
    for head in ("lm", "qa", "cls", "base", "causal"):
        got = flatten(ckpt.flax_weights(head, ckpt.reference_weights(head, seed=0)))
        want, summary = load_flax_params(tmp_path, ckpt.config, head,
                                         allow_missing=rules.head_only_prefixes(ckpt.config, head))
        want = flatten(want)
        assert set(got) == set(want) | {tuple(k.split("/")) for k in summary.missing}, head
        assert all(got[k].dtype == v.dtype and np.array_equal(got[k], v) for k, v in want.items()), head
