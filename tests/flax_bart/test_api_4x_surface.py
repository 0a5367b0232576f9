"""More of the 4.x surface: `can_generate`, `save_pretrained`'s order and hub upload, the linen modules'
4.x call order, `to_diff_dict` / `config.max_length`, and `prepare_inputs_for_generation`."""

import inspect
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart import BartConfig, GenerationConfig
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import TINY, batch

CFG = BartConfig(**TINY)
GENERATING = ("lm", "causal")


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, head):
    if head not in models:
        models[head] = MODEL_CLASSES[head](CFG, seed=0)
    return models[head]


# ---- 1. can_generate ----------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["base", "lm", "cls", "qa", "causal"])
def test_can_generate_is_a_classmethod_true_only_for_the_generating_classes(head):
    cls = MODEL_CLASSES[head]
    assert cls.can_generate() is (head in GENERATING)
    assert cls(CFG, _do_init=False).can_generate() is (head in GENERATING)


# ---- 2. save_pretrained ---------------------------------------------------------------------------
def test_save_pretrained_takes_4x_positional_order_and_token(models, tmp_path):
    m = _model(models, "lm")
    m.save_pretrained(tmp_path / "a", m.params, False, "10GB", None, True)   # 4.x: safe_serialization=True
    assert sorted(os.listdir(tmp_path / "a")) == ["config.json", "generation_config.json", "model.safetensors"]
    m.save_pretrained(tmp_path / "b", token=None)
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json", "flax_model.msgpack", "generation_config.json"]
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.save_pretrained(tmp_path / "c", not_an_option=1)
    with pytest.raises(TypeError, match="push_to_hub=True"):
        m.save_pretrained(tmp_path / "c", repo_id="me/x")


@pytest.mark.parametrize("head", GENERATING)
def test_loading_and_saving_signatures_show_their_parameters(head):
    cls = MODEL_CLASSES[head]
    save = list(inspect.signature(cls.save_pretrained).parameters)
    assert save == ["self", "save_directory", "params", "push_to_hub", "max_shard_size", "token",
                    "safe_serialization", "kwargs"]
    load = inspect.signature(cls.from_pretrained).parameters
    assert list(load)[:4] == ["pretrained_model_name_or_path", "dtype", "model_args", "config"]
    assert "token" in load and "revision" in load


def test_push_to_hub_creates_the_repo_and_uploads_the_saved_files(models, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class Url:
        def __init__(self, repo_id):
            self.repo_id = repo_id if "/" in repo_id else "user/" + repo_id

    def create_repo(repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return Url(repo_id)

    def upload_folder(**kw):
        calls.append(("upload_folder", sorted(os.listdir(kw["folder_path"])), kw))
        return "commit"

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    m = _model(models, "lm")
    m.save_pretrained(str(tmp_path / "my-bart") + os.sep, push_to_hub=True, token="tok", private=True)
    (_, repo, ckw), (_, files, ukw) = calls
    assert repo == "my-bart" and ckw == dict(token="tok", private=True, exist_ok=True)
    assert files == ["config.json", "flax_model.msgpack", "generation_config.json"]
    assert ukw["repo_id"] == "user/my-bart" and ukw["token"] == "tok"
    assert ukw["folder_path"] == str(tmp_path / "my-bart") + os.sep and ukw["commit_message"] == "Upload model"
    calls.clear()
    m.save_pretrained(tmp_path / "other", None, True, repo_id="org/named", use_auth_token="t2",
                      commit_message="msg", create_pr=True)
    (_, repo, ckw), (_, _, ukw) = calls
    assert repo == "org/named" and ckw["token"] == "t2"
    assert (ukw["repo_id"], ukw["commit_message"], ukw["create_pr"], ukw["token"]) == ("org/named", "msg", True, "t2")
    calls.clear()
    m.push_to_hub("org/pushed", commit_message="m2", token="t3")   # 4.x's model.push_to_hub
    (_, repo, ckw), (_, files, ukw) = calls
    assert repo == "org/pushed" and ckw["token"] == "t3" and ukw["commit_message"] == "m2"
    assert files == ["config.json", "generation_config.json", "model.safetensors"]   # Flax safetensors, as 4.x
    assert not os.path.exists(ukw["folder_path"])   # a temporary directory, gone after the upload


# ---- 3. the linen modules -------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["base", "lm", "cls", "qa"])
def test_seq2seq_module_takes_4x_positional_order_and_return_dict(models, head):
    m = _model(models, head)
    ids, mask = batch()
    dec = ids[:, :5] if head != "cls" else ids
    pos, dpos = (np.broadcast_to(np.arange(a.shape[1], dtype=np.int32), a.shape) for a in (ids, dec))
    dmask = np.ones_like(dec)
    args = (ids, mask, dec, dmask, pos, dpos)
    out = m.module.apply({"params": m.params}, *args, False, True, True, True)
    tup = m.module.apply({"params": m.params}, *args, False, True, False, True)
    ref = m(ids, attention_mask=mask, decoder_input_ids=dec, output_hidden_states=True, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(ref) == len(out.to_tuple())
    for got, want in zip(jax.tree_util.tree_leaves(tup), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    kw = m.module.apply({"params": m.params}, input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                        decoder_attention_mask=dmask, position_ids=pos, decoder_position_ids=dpos,
                        return_dict=False, deterministic=True)
    np.testing.assert_allclose(np.asarray(kw[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head", ["base", "lm"])
def test_encoder_and_decoder_modules_serve_4x_style_methods(models, head):
    m = _model(models, head)
    ids, mask = batch()
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)

    def encoder_forward(module, input_ids, attention_mask, position_ids, *args, **kwargs):   # as 4.x's encode
        return module._get_encoder_module()(input_ids, attention_mask, position_ids, *args, **kwargs)

    enc = m.module.apply({"params": m.params}, ids, mask, pos, output_attentions=False, output_hidden_states=False,
                         return_dict=True, deterministic=True, method=encoder_forward)
    want = m.encode(ids, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(enc.last_hidden_state), np.asarray(want.last_hidden_state), atol=1e-6)
    tup = m.module.apply({"params": m.params}, ids, mask, pos, False, True, False, True, method=encoder_forward)
    assert len(tup) == 2 and len(tup[1]) == CFG.encoder_layers + 1

    def decoder_forward(module, decoder_input_ids, decoder_attention_mask, decoder_position_ids, **kwargs):
        return module._get_decoder_module()(decoder_input_ids, decoder_attention_mask, decoder_position_ids,
                                            **kwargs)

    dec = m.module.apply({"params": m.params}, ids[:, :4], None, pos[:, :4],
                         encoder_hidden_states=enc.last_hidden_state, encoder_attention_mask=mask,
                         method=decoder_forward)
    ref = m.module.apply({"params": m.params}, ids, mask, ids[:, :4], np.ones_like(ids[:, :4]), pos, pos[:, :4])
    last = ref.last_hidden_state if head == "base" else None
    if last is not None:
        np.testing.assert_allclose(np.asarray(dec.last_hidden_state), np.asarray(last), atol=1e-5)
    assert dec.last_hidden_state.shape == (3, 4, CFG.d_model)


def test_causal_module_takes_4x_positional_order_and_sizes_a_4x_cache(models):
    m = _model(models, "causal")
    ids, mask = batch()
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    tup = m.module.apply({"params": m.params}, ids, mask, pos, None, None, False, False, True, False, True)
    ref = m(ids, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(ref) == 2
    np.testing.assert_allclose(np.asarray(tup[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-5)
    # 4.x's init_cache: module.init on (batch, max_length) ids with init_cache=True
    cache = m.module.init(jax.random.PRNGKey(0), np.ones((2, 7), np.int32), np.ones((2, 7), np.int32),
                          np.zeros((2, 7), np.int32), init_cache=True)["cache"]
    assert cache["model"]["decoder"]["layers"]["0"]["self_attn"]["cached_key"].shape[:2] == (2, 7)


# ---- 4. configs -----------------------------------------------------------------------------------
def test_generation_config_to_diff_dict_is_what_differs_from_the_defaults():
    g = GenerationConfig(max_length=20, num_beams=4, top_k=50, eos_token_id=2, num_beam_groups=1, my_key="x")
    assert g.to_diff_dict() == {"num_beams": 4, "eos_token_id": 2, "my_key": "x"}
    assert g.to_dict()["max_length"] == 20 and GenerationConfig().to_diff_dict() == {}


def test_config_max_length_reads_4x_default_without_changing_generation(models):
    assert CFG.max_length == 20 and CFG.num_beams == 1 and "max_length" not in CFG.to_dict()
    assert _model(models, "lm").generation_config.max_length is None   # generate's own default stays
    c = CFG.replace(max_length=142)
    assert c.max_length == 142 and c.to_dict()["max_length"] == 142
    assert GenerationConfig.from_model_config(c).max_length == 142


# ---- 5. prepare/update_inputs_for_generation -------------------------------------------------------
def test_prepare_and_update_inputs_drive_a_cached_seq2seq_loop(models):
    m = _model(models, "lm")
    ids, mask = batch()
    enc = m.encode(ids, attention_mask=mask)
    start = np.full((3, 1), CFG.decoder_start_token_id, np.int32)
    kw = m.prepare_inputs_for_generation(start, 6, attention_mask=mask, encoder_outputs=enc)
    assert sorted(kw) == ["decoder_attention_mask", "decoder_position_ids", "encoder_attention_mask",
                          "encoder_outputs", "past_key_values"]
    assert kw["decoder_attention_mask"].shape == (3, 6) and np.asarray(kw["decoder_position_ids"]).tolist() == [[0]] * 3
    seq, token = start, start
    for _ in range(4):
        out = m.decode(token, **kw)
        token = np.asarray(jnp.argmax(out.logits[:, -1], -1), np.int32)[:, None]
        seq = np.concatenate([seq, token], 1)
        kw = m.update_inputs_for_generation(out, kw)
    full = m(ids, attention_mask=mask, decoder_input_ids=seq[:, :-1]).logits
    np.testing.assert_array_equal(np.argmax(np.asarray(full), -1), seq[:, 1:])
    assert np.asarray(kw["decoder_position_ids"]).tolist() == [[4]] * 3


def test_prepare_and_update_inputs_drive_a_cached_causal_loop(models):
    m = _model(models, "causal")
    ids = np.array([[5, 6, 7], [8, 9, 10]], np.int32)
    kw = m.prepare_inputs_for_generation(ids, 8, attention_mask=np.ones_like(ids))
    assert sorted(kw) == ["attention_mask", "past_key_values", "position_ids"]
    assert kw["attention_mask"].shape == (2, 8) and np.asarray(kw["position_ids"]).tolist() == [[0, 1, 2]] * 2
    seq, token = ids, ids
    for _ in range(3):
        out = m(token, **kw)
        token = np.asarray(jnp.argmax(out.logits[:, -1], -1), np.int32)[:, None]
        seq = np.concatenate([seq, token], 1)
        kw = m.update_inputs_for_generation(out, kw)
    full = m(seq[:, :-1]).logits
    np.testing.assert_array_equal(np.argmax(np.asarray(full), -1)[:, 2:], seq[:, 3:])
    left = m.prepare_inputs_for_generation(ids, 8, attention_mask=np.array([[0, 1, 1], [1, 1, 1]]))
    assert np.asarray(left["position_ids"]).tolist() == [[0, 0, 1], [0, 1, 2]]   # 4.x: cumsum - 1, >= 0 here
    assert np.asarray(left["attention_mask"])[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]


def test_the_documented_base_classes_are_importable():
    """The 4.x documentation names FlaxBartPreTrainedModel and FlaxBartDecoderPreTrainedModel (the causal
    LM's base)."""
    import flax_bart
    from flax_bart import FlaxBartDecoderPreTrainedModel, FlaxBartForCausalLM, FlaxBartPreTrainedModel

    assert issubclass(FlaxBartForCausalLM, FlaxBartDecoderPreTrainedModel)
    assert issubclass(FlaxBartDecoderPreTrainedModel, FlaxBartPreTrainedModel)
    assert not issubclass(flax_bart.FlaxBartForConditionalGeneration, FlaxBartDecoderPreTrainedModel)
    assert {"FlaxBartPreTrainedModel", "FlaxBartDecoderPreTrainedModel"} <= set(flax_bart.__all__)
