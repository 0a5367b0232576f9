"""flax_bart.losses and the heads' `labels=` equal PyTorch: torch.nn.functional on the same logits, and
the transformers v5 models' own `loss` with the same weights. float32 throughout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flax_bart import BartConfig, ConfigError, InputError
from flax_bart.losses import causal_lm_loss, classification_loss, lm_loss, problem_type_for, qa_loss
from tests.bart_helpers import TINY, batch, flax_from_torch, torch_model

RTOL = 1e-5       # loss values, relative, float32
GRAD_ATOL = 1e-6  # d loss / d logits, absolute (the gradients are O(1 / tokens))


def close(got, want, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=0)


def eager_and_jit(fn, *args, **kw):
    """fn(*args) both ways; they must agree before either is compared with PyTorch."""
    eager = fn(*args, **kw)
    jitted = jax.jit(lambda *a: fn(*a, **kw))(*args)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=0)
    return eager


def lm_batch(seed=0, b=3, t=7, v=11):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.normal(size=(b, t, v))).astype(np.float32)
    labels = rng.integers(0, v, size=(b, t)).astype(np.int32)
    labels[0, :2] = -100
    labels[2, -3:] = -100
    return logits, labels


def torch_ce(logits, labels, **kw):
    v = logits.shape[-1]
    return F.cross_entropy(torch.tensor(logits).reshape(-1, v), torch.tensor(labels).long().reshape(-1), **kw)


# ---- lm_loss / causal_lm_loss --------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_lm_loss_equals_torch_with_ignored_tokens(eps):
    logits, labels = lm_batch()
    want = torch_ce(logits, labels, label_smoothing=eps).item()
    close(eager_and_jit(lm_loss, logits, labels, label_smoothing=eps), want)
    # -100 really is ignored: changing the logits there changes nothing, elsewhere it does.
    other = logits.copy()
    other[0, :2, 3] += 5.0
    close(lm_loss(other, labels, eps), want)
    other[1, 0, 3] += 5.0
    assert abs(float(lm_loss(other, labels, eps)) - want) > 1e-3


def test_lm_loss_smoothing_as_traced_argument_and_low_precision_logits():
    logits, labels = lm_batch(seed=1)
    want = torch_ce(logits, labels, label_smoothing=0.1).item()
    close(jax.jit(lm_loss)(logits, labels, 0.1), want)  # label_smoothing traced
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    got = lm_loss(bf16, labels)
    assert got.dtype == jnp.float32
    close(got, torch_ce(np.asarray(bf16.astype(jnp.float32)), labels).item())


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_lm_loss_gradient_equals_torch_autograd(eps):
    logits, labels = lm_batch(seed=2)
    t = torch.tensor(logits, requires_grad=True)
    F.cross_entropy(t.reshape(-1, t.shape[-1]), torch.tensor(labels).long().reshape(-1), label_smoothing=eps).backward()
    for grad in (jax.grad(lm_loss)(logits, labels, eps), jax.jit(jax.grad(lm_loss))(logits, labels, eps)):
        assert np.abs(np.asarray(grad)).max() > 1e-3
        np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=0, atol=GRAD_ATOL)


def test_all_ignored_batch_is_nan_with_zero_gradient_like_torch():
    logits, _ = lm_batch()
    labels = np.full(logits.shape[:-1], -100, np.int32)
    t = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(t.reshape(-1, t.shape[-1]), torch.tensor(labels).long().reshape(-1))
    want.backward()
    assert np.isnan(want.item()) and np.isnan(float(eager_and_jit(lm_loss, logits, labels)))
    assert (t.grad.numpy() == 0).all() and (np.asarray(jax.grad(lm_loss)(logits, labels)) == 0).all()


def test_causal_lm_loss_shifts_labels_like_transformers_for_causal_lm_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = lm_batch(seed=3)
    want = ForCausalLMLoss(torch.tensor(logits), torch.tensor(labels).long(), vocab_size=logits.shape[-1]).item()
    close(eager_and_jit(causal_lm_loss, logits, labels), want)
    # ForCausalLMLoss drops label_smoothing (fixed_cross_entropy does not pass it on): compare the
    # smoothed loss with torch's cross-entropy on the labels shifted by hand instead.
    shifted = np.concatenate([labels[:, 1:], np.full((labels.shape[0], 1), -100, np.int32)], axis=1)
    close(eager_and_jit(causal_lm_loss, logits, labels, label_smoothing=0.1),
          torch_ce(logits, shifted, label_smoothing=0.1).item())


def test_bad_lm_labels_raise_naming_the_argument_or_give_nan_under_jit():
    logits, labels = lm_batch()
    with pytest.raises(InputError, match=r"labels has shape \(3, 6\), expected \(3, 7\)"):
        lm_loss(logits, labels[:, :-1])
    with pytest.raises(InputError, match="labels must hold integer class ids, got dtype float32"):
        lm_loss(logits, labels.astype(np.float32))
    bad = labels.copy()
    bad[1, 1] = 11
    with pytest.raises(InputError, match=r"labels holds 11, expected a class id in \[0, 11\) or -100"):
        lm_loss(logits, bad)
    assert np.isnan(float(jax.jit(lm_loss)(logits, bad)))
    with pytest.raises(InputError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        lm_loss(logits, labels, 1.5)


# ---- qa_loss ---------------------------------------------------------------------------------------------
def test_qa_loss_equals_torch_with_positions_out_of_range():
    rng = np.random.default_rng(4)
    b, t = 5, 8
    start, end = (rng.normal(size=(2, b, t)) * 2).astype(np.float32)
    # past the end (ignored), exactly seq_len (ignored), negative (clamped to 0: not ignored), in range
    sp = np.array([3, 30, 8, -4, 0], np.int32)
    ep = np.array([5, 9, 2, -1, 7], np.int32)

    def torch_qa(s, e):
        ls, le = [F.cross_entropy(torch.tensor(x), torch.tensor(p).long().clamp(0, t), ignore_index=t)
                  for x, p in ((start, s), (end, e))]
        return ((ls + le) / 2).item()

    close(eager_and_jit(qa_loss, start, end, sp, ep), torch_qa(sp, ep))
    close(qa_loss(start, end, sp[:, None], ep[:, None]), torch_qa(sp, ep))  # (batch, 1) is squeezed
    assert np.isnan(float(qa_loss(start, end, np.full(b, t, np.int32), np.full(b, 99, np.int32))))
    with pytest.raises(InputError, match=r"end_positions has shape \(4,\), expected \(5,\) or \(5, 1\)"):
        qa_loss(start, end, sp, ep[:4])
    with pytest.raises(InputError, match=r"end_logits has shape \(5, 7\), expected \(5, 8\)"):
        qa_loss(start, end[:, :7], sp, ep)


# ---- classification_loss ---------------------------------------------------------------------------------
def test_classification_loss_picks_the_problem_type_like_pytorch():
    assert problem_type_for(1, np.int32) == "regression"
    assert problem_type_for(3, np.int32) == "single_label_classification"
    assert problem_type_for(3, np.float32) == "multi_label_classification"
    assert problem_type_for(3, np.int32, "regression") == "regression"
    with pytest.raises(InputError, match="problem_type is 'ranking', expected one of"):
        problem_type_for(3, np.int32, "ranking")


def test_classification_loss_equals_torch_for_all_three_problem_types():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([0, 2, -100, 1], np.int32)
    multi = (rng.random((4, 3)) > 0.5).astype(np.float32)
    target = rng.normal(size=(4, 3)).astype(np.float32)
    tl = torch.tensor(logits)
    close(eager_and_jit(classification_loss, logits, ids), F.cross_entropy(tl, torch.tensor(ids).long()).item())
    close(eager_and_jit(classification_loss, logits, multi),
          F.binary_cross_entropy_with_logits(tl, torch.tensor(multi)).item())
    close(eager_and_jit(classification_loss, logits, target, problem_type="regression"),
          F.mse_loss(tl, torch.tensor(target)).item())
    one, y = logits[:, :1], target[:, 0]  # one label: regression, (batch, 1) against (batch,)
    close(eager_and_jit(classification_loss, one, y), F.mse_loss(torch.tensor(one).squeeze(), torch.tensor(y)).item())
    with pytest.raises(InputError, match=r"labels has shape \(4, 2\), expected \(4, 3\) for multi_label"):
        classification_loss(logits, multi[:, :2])
    with pytest.raises(InputError, match=r"num_labels is 2, but the logits have 3 labels"):
        classification_loss(logits, ids, num_labels=2)
    with pytest.raises(InputError, match=r"labels holds 3, expected a class id in \[0, 3\)"):
        classification_loss(logits, np.array([0, 3, 1, 1], np.int32))


def test_config_problem_type_is_checked_and_round_trips():
    cfg = BartConfig(problem_type="multi_label_classification")
    assert BartConfig.from_dict(cfg.to_dict()).problem_type == "multi_label_classification"
    assert "problem_type" not in BartConfig().to_dict()
    with pytest.raises(ConfigError, match="'problem_type'='ranking' is not one of"):
        BartConfig(problem_type="ranking")


# ---- the heads' labels= against the transformers models' own loss ----------------------------------------
def _torch_loss(tm, **kw):
    with torch.no_grad():
        args = {k: torch.tensor(v).long() if v.dtype.kind == "i" else torch.tensor(v) for k, v in kw.items()}
        return tm(**args, use_cache=False).loss.item()


def _flax_loss(fm, params, ids, mask, **targets):
    """The head's loss eagerly and under the caller's jit (equal), and the tuple's first entry."""
    out = fm(ids, attention_mask=mask, params=params, **targets)
    jitted = jax.jit(lambda p, i, m, t: fm(i, attention_mask=m, params=p, **t).loss)(params, ids, mask, targets)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(out.loss), rtol=1e-6, atol=0)
    tup = fm(ids, attention_mask=mask, params=params, return_dict=False, **targets)
    assert tup[0] is not None and float(tup[0]) == float(out.loss) and out.keys()[0] == "loss"
    plain = fm(ids, attention_mask=mask, params=params, return_dict=False)
    assert len(tup) == len(plain) + 1 and "loss" not in fm(ids, attention_mask=mask, params=params).keys()
    return float(out.loss)


def test_conditional_generation_labels_derive_decoder_inputs_and_equal_torch_loss():
    tm = torch_model("lm", seed=3)
    fm, params = flax_from_torch(tm, "lm")
    ids, mask = batch(seed=1, b=3, t=9)
    labels = np.random.default_rng(6).integers(3, 99, size=(3, 6)).astype(np.int32)
    labels[1, -2:] = -100  # padding of the targets: ignored, and decoded as <pad>
    close(_flax_loss(fm, params, ids, mask, labels=labels), _torch_loss(tm, input_ids=ids, attention_mask=mask,
                                                                        labels=labels))
    dec = np.random.default_rng(7).integers(3, 99, size=(3, 6)).astype(np.int32)  # given inputs win
    got = fm(ids, attention_mask=mask, decoder_input_ids=dec, labels=labels, params=params).loss
    close(got, _torch_loss(tm, input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels))
    with pytest.raises(InputError, match=r"labels has shape \(2, 6\), expected \(3, target_length\)"):
        fm(ids, attention_mask=mask, labels=labels[:2], params=params)
    with pytest.raises(InputError, match=r"labels has shape \(3, 5\), expected \(3, 6\)"):
        fm(ids, attention_mask=mask, decoder_input_ids=dec, labels=labels[:, :5], params=params)


def test_causal_lm_labels_are_not_shifted_like_transformers_v5():
    tm = torch_model("causal", seed=4)
    fm, params = flax_from_torch(tm, "causal")
    ids, mask = batch(seed=2, b=3, t=8)
    labels = np.where(mask == 1, np.roll(ids, -1, axis=1), -100).astype(np.int32)
    close(_flax_loss(fm, params, ids, mask, labels=labels), _torch_loss(tm, input_ids=ids, attention_mask=mask,
                                                                        labels=labels))


def test_question_answering_positions_equal_torch_loss():
    tm = torch_model("qa", seed=5)
    fm, params = flax_from_torch(tm, "qa")
    ids, mask = batch(seed=3, b=3, t=9)
    sp, ep = np.array([2, 40, -1], np.int32), np.array([4, 9, 3], np.int32)
    close(_flax_loss(fm, params, ids, mask, start_positions=sp, end_positions=ep),
          _torch_loss(tm, input_ids=ids, attention_mask=mask, start_positions=sp, end_positions=ep))
    with pytest.raises(InputError, match="start_positions given without end_positions"):
        fm(ids, attention_mask=mask, start_positions=sp, params=params)
    with pytest.raises(InputError, match="FlaxBartForQuestionAnswering takes no labels"):
        fm(ids, attention_mask=mask, labels=sp, params=params)


@pytest.mark.parametrize("problem_type,num_labels", [(None, 3), (None, 1), ("multi_label_classification", 3),
                                                     ("regression", 2)])
def test_sequence_classification_labels_equal_torch_loss(problem_type, num_labels):
    tm = torch_model("cls", seed=6, num_labels=num_labels, problem_type=problem_type)
    fm, params = flax_from_torch(tm, "cls")
    assert fm.config.problem_type == problem_type
    ids, mask = batch(seed=4, b=3, t=9)
    rng = np.random.default_rng(8)
    if problem_type == "multi_label_classification":
        labels = (rng.random((3, num_labels)) > 0.5).astype(np.float32)
    elif problem_type == "regression":
        labels = rng.normal(size=(3, num_labels)).astype(np.float32)
    elif num_labels == 1:  # picked: regression against (batch,)
        labels = rng.normal(size=3).astype(np.float32)
    else:  # picked: single label from the integer dtype
        labels = rng.integers(0, num_labels, 3).astype(np.int32)
    close(_flax_loss(fm, params, ids, mask, labels=labels), _torch_loss(tm, input_ids=ids, attention_mask=mask,
                                                                        labels=labels))


def test_base_model_takes_no_labels():
    from flax_bart import FlaxBartModel

    ids, mask = batch(seed=1, b=2, t=5)
    model = FlaxBartModel(BartConfig(**TINY), _do_init=False)
    with pytest.raises(InputError, match=r"FlaxBartModel takes no labels \(its loss arguments: none\)"):
        model(ids, attention_mask=mask, labels=ids)
