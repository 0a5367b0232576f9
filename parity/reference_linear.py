"""The reference's linear layers: `F.linear`, with a fast route for the input gradient of half precision on CPU.

Forward is always `F.linear`. Under autograd, in float16/bfloat16 on a CPU, the backward pass of
`F.linear` forms the input gradient as `grad @ weight` with `weight` (out, in) stored row-major. On a CPU
without native half-precision matrix units (AVX2 only) PyTorch sends that layout to a slow fallback:
measured on a 2-core AMD EPYC (AVX2), torch 2.13, 64 rows x 3072 -> 768 in bfloat16, 410 ms, against
14 ms for the same product with the weight's transposed copy read as a transposed view (the layout
PyTorch's own forward uses), and 3 ms to make the copy. BART-base's float16/bfloat16 gradient at 2 x 32
tokens took 15-16 s, nearly all of it in that product.

`HalfCpuLinear` keeps autograd's arithmetic everywhere else: its forward is `F.linear`, the weight
gradient is `grad^T @ input` and the bias gradient `grad.sum(0)`, as PyTorch's addmm backward forms them
(bit for bit); the input gradient is the same half-precision product with float32 accumulation, through
the other kernel, so a few elements differ by one rounding of the half-precision result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.float16, torch.bfloat16)


class HalfCpuLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (grad_2d @ weight.t().contiguous().t()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            dw = grad_2d.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad_2d.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; through `HalfCpuLinear` when a half-precision CPU gradient is wanted."""
    if (weight.dtype in HALF and weight.device.type == "cpu" and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))):
        return HalfCpuLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, names and init) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
