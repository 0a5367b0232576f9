"""parity.reference_linear: the half-precision CPU route for the input gradient keeps autograd's numbers."""

import pytest
import torch
import torch.nn.functional as F

from parity.reference_linear import HalfCpuLinear, Linear, linear


def _grads(fn, x, w, b):
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    b = None if b is None else b.detach().requires_grad_(True)
    y = fn(x, w, b)
    torch.manual_seed(1)
    y.backward(torch.randn(y.shape).to(y.dtype))
    return y, x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_half_gradients_match_autograd(dtype, with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48).to(dtype)
    w = (0.1 * torch.randn(96, 48)).to(dtype)
    b = torch.randn(96).to(dtype) if with_bias else None
    y0, dx0, dw0, db0 = _grads(F.linear, x, w, b)
    y1, dx1, dw1, db1 = _grads(linear, x, w, b)
    assert y1.grad_fn is not None and "HalfCpuLinear" in type(y1.grad_fn).__name__
    assert torch.equal(y0, y1)             # forward: F.linear itself
    assert torch.equal(dw0, dw1)           # weight gradient: autograd's product, bit for bit
    if with_bias:
        assert torch.equal(db0, db1)
    # input gradient: the same half-precision product through another kernel: at most one rounding apart
    # (plus what float32 accumulation in another order can move: 1e-5 of the sum of the terms' sizes)
    torch.manual_seed(1)
    g = torch.randn(y0.shape).to(dtype).double().reshape(-1, 96)
    terms = (g.abs() @ w.double().abs()).reshape(dx0.shape)
    one_rounding = torch.finfo(dtype).eps * torch.maximum(dx0.double().abs(), dx1.double().abs())
    assert ((dx1.double() - dx0.double()).abs() <= one_rounding + 1e-5 * terms).all()
    assert not torch.equal(dx0, torch.zeros_like(dx0))
    assert dx1.shape == x.shape and dx1.dtype == dtype


def test_float32_and_no_grad_take_plain_linear():
    torch.manual_seed(0)
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    assert "HalfCpuLinear" not in type(linear(x, w).grad_fn).__name__
    with torch.no_grad():
        h = linear(x.half(), w.half())
    assert h.grad_fn is None and torch.equal(h, F.linear(x.half(), w.half()))


def test_function_in_float32_equals_autograd():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 6, 8), torch.randn(5, 8), torch.randn(5)
    ref = _grads(F.linear, x, w, b)
    got = _grads(lambda *a: HalfCpuLinear.apply(*a), x, w, b)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def test_module_is_an_nn_linear_with_the_same_parameters():
    layer = Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}
    x = torch.randn(2, 8)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
