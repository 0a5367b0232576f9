"""`precision="highest"` on CPU: float32 contractions summed in blocks (flax_bart.chunked_dot)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flax_bart import chunked_dot
from tests.bart_helpers import batch, flax_from_torch, torch_model

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the blocked sum is a CPU path")


def _rel_err(x, gold):
    return float(np.abs(np.asarray(x, np.float64) - gold).max() / np.sqrt(np.mean(gold ** 2)))


@pytest.mark.parametrize("k,expected", [(16, 1), (256, 1), (257, 1), (512, 2), (768, 3), (1000, 4), (1024, 4),
                                        (3072, 8), (4096, 8), (997, 1), (640, 4)])
def test_chunks(k, expected):
    assert chunked_dot.chunks(k) == expected
    assert k % chunked_dot.chunks(k) == 0


@pytest.mark.parametrize("precision,expected", [
    (None, False), ("highest", True), ("float32", True), (jax.lax.Precision.HIGHEST, True),
    (("highest", "highest"), True), (("highest", "default"), False), ("default", False), ("high", False),
    ("HIGHEST", False), (3, False),
])
def test_is_highest(precision, expected):
    assert chunked_dot.is_highest(precision) is expected


def test_applies_only_to_float32_highest():
    assert chunked_dot.applies(jnp.float32, 768, "highest")
    assert not chunked_dot.applies(jnp.float32, 768, None)
    assert not chunked_dot.applies(jnp.bfloat16, 768, "highest")
    assert not chunked_dot.applies(jnp.float32, 256, "highest")


@pytest.mark.parametrize("k,n", [(768, 512), (3072, 256)])
def test_blocked_sum_is_closer_to_float64(k, n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    gold = x.astype(np.float64) @ w.astype(np.float64)
    plain = np.asarray(jax.jit(lambda a, b: chunked_dot.matmul(a, b))(x, w))
    blocked = np.asarray(jax.jit(lambda a, b: chunked_dot.matmul(a, b, precision="highest"))(x, w))
    table = np.asarray(jax.jit(lambda a, b: chunked_dot.matmul_table(a, b, precision="highest"))(x, w.T.copy()))
    torch_err = _rel_err((torch.from_numpy(x) @ torch.from_numpy(w)).numpy(), gold)
    assert not np.array_equal(blocked, plain)          # the blocked path ran
    np.testing.assert_array_equal(table, blocked)      # the (V, K) table form sums the same blocks
    # 256 x 768 @ 768 x 512 on a 2-core AMD EPYC (AVX2): plain 5.1e-6, blocked 2.6e-6, PyTorch 1.8e-6;
    # 3072: 7.4e-6, 2.3e-6, 1.5e-6. A blocked sum is within ~2x of PyTorch's on any CPU.
    assert _rel_err(blocked, gold) <= max(2.5 * torch_err, 2e-6)


def test_blocked_gradients_match_plain():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((8, 768)).astype(np.float32))
    w = jnp.asarray((rng.standard_normal((768, 64)) / 28).astype(np.float32))

    def loss(a, b, p):
        return jnp.sum(jnp.tanh(chunked_dot.matmul(a, b, precision=p)))

    g_plain = jax.grad(loss, argnums=(0, 1))(x, w, None)
    g_blocked = jax.grad(loss, argnums=(0, 1))(x, w, "highest")
    for a, b in zip(g_plain, g_blocked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)


def test_model_with_highest_precision_is_closer_to_float64():
    """A tied LM model with d_model 768 and ffn 3072 (blocked products), against PyTorch in float64."""
    tm = torch_model("lm", d_model=768, encoder_ffn_dim=3072, decoder_ffn_dim=3072, encoder_layers=1,
                     decoder_layers=1, vocab_size=512, encoder_attention_heads=12, decoder_attention_heads=12)
    ids, mask = batch(b=2, t=24, vocab=512)
    with torch.no_grad():
        gold = tm.double()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                           use_cache=False).logits.numpy()
    tm = tm.float()
    errs = {}
    for precision in (None, "highest"):
        model, params = flax_from_torch(tm, "lm")
        model = type(model)(model.config, _do_init=False, precision=precision)
        errs[precision] = _rel_err(model(ids, attention_mask=mask, params=params).logits, gold)
    assert errs["highest"] < errs[None], errs


@pytest.mark.parametrize("shape", [(1, 1, 768), (2, 1, 768), (4, 2, 768), (3, 5, 768)])
def test_table_product_for_a_decoding_step_and_for_many_rows(shape):
    """matmul_table: 1 row the plain matrix-vector product, 2-8 rows a multiply-reduce, more rows blocks;
    each at PyTorch's distance from float64 or closer (2.5x with a floor), in the input's shape."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    table = (rng.standard_normal((4096, 768)) * 0.02).astype(np.float32)
    gold = x.astype(np.float64) @ table.astype(np.float64).T
    out = np.asarray(jax.jit(lambda a, b: chunked_dot.matmul_table(a, b, precision="highest"))(x, table))
    assert out.shape == shape[:-1] + (4096,)
    torch_err = _rel_err((torch.from_numpy(x) @ torch.from_numpy(table).T).numpy(), gold)
    assert _rel_err(out, gold) <= max(2.5 * torch_err, 2e-6)
