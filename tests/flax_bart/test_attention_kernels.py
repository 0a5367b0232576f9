"""Attention through `jax.nn.dot_product_attention` (flax_bart.attention_kernels) computes what the
explicit path computes: every head, a row without any attended key, cached decoding, generation and
gradients; the kernel choice per backend, dtype and head size; "auto" falls back when cuDNN refuses,
"cudnn" says why it cannot run; dropout on the weights keeps the explicit path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_bart.attention_kernels as ak
from flax_bart import BartConfig
from flax_bart.models import MODEL_CLASSES
from tests.bart_helpers import TINY

CFG = BartConfig(**{**TINY, "encoder_layers": 2, "decoder_layers": 2})


@pytest.fixture
def kernel_calls(monkeypatch):
    """The implementations `jax.nn.dot_product_attention` was called with (at trace time)."""
    calls, real = [], jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["implementation"])
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    return calls


def _inputs(head):
    rng = np.random.default_rng(1)
    ids = rng.integers(4, TINY["vocab_size"], (3, 9)).astype(np.int32)
    ids[:, -1] = 2
    mask = np.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, :] = 0   # a row that attends to nothing: uniform weights, as in PyTorch BART
    kw = dict(attention_mask=mask)
    if head != "causal":
        kw["decoder_input_ids"] = ids[:, ::-1].copy()
    return ids, kw


def _close(a, b, dtype):
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("head,dtype", [(h, jnp.float32) for h in ("base", "lm", "cls", "qa", "causal")]
                         + [(h, jnp.bfloat16) for h in ("lm", "causal")],
                         ids=lambda v: v if isinstance(v, str) else jnp.dtype(v).name)
def test_fused_equals_explicit_every_head(head, dtype, kernel_calls):
    explicit = MODEL_CLASSES[head](CFG, seed=0, dtype=dtype, attention_impl="explicit")
    fused = MODEL_CLASSES[head](CFG, seed=0, dtype=dtype, _do_init=False, attention_impl="xla")
    ids, kw = _inputs(head)
    a = explicit(ids, **kw, output_hidden_states=True, output_attentions=True)
    assert kernel_calls == []
    b = fused(ids, **kw, params=explicit.params, output_hidden_states=True, output_attentions=True)
    assert kernel_calls and set(kernel_calls) == {"xla"}
    _close(a, b, dtype)
    # without attentions requested: the same outputs (the explicit weights are dead code then)
    c = fused(ids, **kw, params=explicit.params, output_hidden_states=True)
    _close(a.to_tuple()[0], c.to_tuple()[0], dtype)


@pytest.mark.parametrize("scan,expected", [(True, 3), (False, 6)])
def test_each_attention_kind_is_fused(scan, expected, kernel_calls):
    model = MODEL_CLASSES["lm"](CFG, seed=0, attention_impl="xla", scan_layers=scan)
    ids, kw = _inputs("lm")
    kernel_calls.clear()
    model(ids, **kw)
    # scanned: one encoder layer body (self) and one decoder layer body (self, cross); unrolled: 2 + 2 x 2
    assert kernel_calls == ["xla"] * expected


def test_fused_cached_decoding_and_generation_match_explicit():
    cfg = CFG
    explicit = MODEL_CLASSES["lm"](cfg, seed=0, attention_impl="explicit")
    fused = MODEL_CLASSES["lm"](cfg, seed=0, _do_init=False, attention_impl="xla")
    ids, kw = _inputs("lm")
    ids, mask = ids[:2], kw["attention_mask"][:2]
    outs = []
    for model in (explicit, fused):
        enc = model.encode(ids, attention_mask=mask, params=explicit.params)
        cache = model.init_cache(2, 4, enc.last_hidden_state, params=explicit.params)
        logits, dec = [], np.full((2, 1), cfg.decoder_start_token_id, np.int32)
        for step in range(4):
            out = model.decode(dec, enc.last_hidden_state, encoder_attention_mask=mask, past_key_values=cache,
                               params=explicit.params)
            cache = out.past_key_values
            logits.append(np.asarray(out.logits))
            dec = np.asarray(out.logits).argmax(-1).astype(np.int32)
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=5, params=explicit.params,
                             num_beams=1, do_sample=False)
        outs.append((np.stack(logits), np.asarray(gen.sequences)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_fused_gradients_match_explicit():
    explicit = MODEL_CLASSES["qa"](CFG, seed=0, attention_impl="explicit")
    fused = MODEL_CLASSES["qa"](CFG, seed=0, _do_init=False, attention_impl="xla")
    ids, kw = _inputs("qa")

    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)

    def loss(model):
        def f(p):
            out = model.module.apply({"params": p}, ids, kw["attention_mask"], kw["decoder_input_ids"], None, pos,
                                     pos)
            return jnp.sum(out.start_logits ** 2) + jnp.sum(out.end_logits)
        return jax.jit(jax.grad(f))(explicit.params)

    _close(loss(explicit), loss(fused), jnp.float32)


def test_dropout_on_the_weights_keeps_the_explicit_path(kernel_calls):
    cfg = BartConfig(**{**TINY, "encoder_layers": 1, "decoder_layers": 1, "attention_dropout": 0.1})
    model = MODEL_CLASSES["qa"](cfg, seed=0, attention_impl="xla")
    ids, kw = _inputs("qa")
    kernel_calls.clear()
    model(ids, **kw, train=True, dropout_rng=jax.random.PRNGKey(0))
    assert kernel_calls == []
    model(ids, **kw)   # inference: dropout off, fused
    assert kernel_calls and set(kernel_calls) == {"xla"}


# ---- the choice of kernel --------------------------------------------------------------------------
def test_bad_attention_impl_is_named():
    with pytest.raises(ValueError, match="attention_impl='flash'.*auto, explicit, xla, cudnn"):
        MODEL_CLASSES["lm"](CFG, _do_init=False, attention_impl="flash")


# (backend, attention_impl, dtype, head size, dropout active) -> kernel, or the ValueError's words
CHOICES = [
    ("cpu", "auto", jnp.bfloat16, 64, False, None),            # CPU: the explicit path
    ("cpu", "explicit", jnp.bfloat16, 64, False, None),
    ("cpu", "xla", jnp.float32, 64, False, "xla"),
    ("cpu", "xla", jnp.float32, 64, True, None),               # dropout on the weights
    ("cpu", "xla", jnp.float16, 64, False, "float16 on the cpu backend"),
    ("cpu", "cudnn", jnp.bfloat16, 64, False, "attention_impl='cudnn': the default JAX backend is cpu"),
    ("gpu", "auto", jnp.bfloat16, 64, False, "cudnn"),
    ("gpu", "auto", jnp.float16, 128, False, "cudnn"),
    ("gpu", "auto", jnp.float32, 64, False, None),             # no float32 flash kernel
    ("gpu", "auto", jnp.bfloat16, 12, False, None),            # head size not a multiple of 8
    ("gpu", "auto", jnp.bfloat16, 256, False, None),
    ("gpu", "auto", jnp.bfloat16, 64, True, None),
    ("gpu", "cudnn", jnp.float32, 64, False, "compute dtype float32"),
    ("gpu", "cudnn", jnp.bfloat16, 12, False, "head size 12"),
]


@pytest.mark.parametrize("backend,impl,dtype,head_dim,dropout,expected", CHOICES)
def test_choose_kernel(monkeypatch, backend, impl, dtype, head_dim, dropout, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    if expected in (None, "xla", "cudnn"):
        assert ak.choose_kernel(impl, dtype, head_dim, dropout_active=dropout) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            ak.choose_kernel(impl, dtype, head_dim, dropout_active=dropout)


def test_auto_falls_back_when_cudnn_refuses_at_trace_time(monkeypatch):
    """On a GPU backend "auto" picks cuDNN; if cuDNN turns the call down while tracing (old cuDNN,
    unsupported shape), the explicit path runs instead; a forced "cudnn" raises."""
    cfg = BartConfig(**{**TINY, "d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                        "encoder_layers": 1, "decoder_layers": 1})
    explicit = MODEL_CLASSES["qa"](cfg, seed=0, dtype=jnp.bfloat16, attention_impl="explicit")
    ids, kw = _inputs("qa")
    want = explicit(ids, **kw)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    refused = []

    def refuse(*args, **kwargs):
        refused.append(kwargs["implementation"])
        raise NotImplementedError("cuDNN refuses (test)")

    monkeypatch.setattr(jax.nn, "dot_product_attention", refuse)
    auto = MODEL_CLASSES["qa"](cfg, seed=0, dtype=jnp.bfloat16, _do_init=False, attention_impl="auto")
    got = auto(ids, **kw, params=explicit.params)
    assert refused and set(refused) == {"cudnn"}
    _close(want, got, jnp.float32)
    forced = MODEL_CLASSES["qa"](cfg, seed=0, dtype=jnp.bfloat16, _do_init=False, attention_impl="cudnn")
    with pytest.raises(NotImplementedError, match="cuDNN refuses"):
        forced(ids, **kw, params=explicit.params)


def test_from_pretrained_passes_attention_impl(tmp_path):
    model = MODEL_CLASSES["lm"](CFG, seed=0)
    model.save_pretrained(tmp_path)
    loaded = MODEL_CLASSES["lm"].from_pretrained(tmp_path, attention_impl="xla", scan_layers=False,
                                                 tune_allocator=False)
    assert loaded.attention_impl == "xla" and loaded.scan_layers is False
    assert loaded.module.attention_impl == "xla"
    with pytest.raises(ValueError, match="attention_impl='nope'"):
        MODEL_CLASSES["lm"].from_pretrained(tmp_path, attention_impl="nope", tune_allocator=False)
