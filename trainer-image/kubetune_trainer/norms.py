"""A frozen RMSNorm as one autograd function, for training on CPU.

transformers' Llama-family RMSNorm is `weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)`.
Autograd records seven operations for it, and its backward is about as many more, each a pass over the
activations, and keeps the fp32 copies for them. Here the forward runs the same operations (the same output,
bit for bit) and the backward is the closed form of the input's gradient, in fp32 as autograd computes it:
`rstd * (g - x_hat * mean(g * x_hat))` with `g` the gradient of the normalised input, from the input and the
per-row `rstd` alone. Only for a frozen weight (a LoRA adapter does not train the norms), in training, and
only for norm classes whose forward a start-up check finds to be this formula (Gemma's `1 + weight`, for
one, is not).
"""

from __future__ import annotations

import copy
import types

import torch


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        # transformers' LlamaRMSNorm.forward, operation for operation
        xf = x.to(torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        normed = (grad * weight).to(x.dtype).to(torch.float32)  # as autograd: through the cast to x's dtype
        x_hat = x.to(torch.float32) * rstd
        grad_x = (normed - x_hat * (normed * x_hat).mean(-1, keepdim=True)).mul_(rstd)
        return grad_x.to(x.dtype), None, None


def _epsilon(norm) -> float | None:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return eps if isinstance(eps, float) else None


def _fused(norm, x):
    return _RMSNorm.apply(x, norm.weight, _epsilon(norm))


def _forward(self, x):
    if self.training and torch.is_grad_enabled() and not self.weight.requires_grad:
        return _fused(self, x)
    return type(self).forward(self, x)


def _same_formula(norm) -> bool:
    """Whether `norm`'s own forward gives _RMSNorm's output bit for bit, and its input gradient to fp32
    rounding, on random rows in the weight's dtype (0.5 + noise: a weight of ones would hide its use)."""
    generator = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(norm)  # a copy, so that the model's own weight is never touched
    weight = probe.weight
    with torch.no_grad():
        weight.copy_(0.5 + torch.rand(weight.shape, generator=generator))
    x = torch.randn(3, 5, weight.shape[-1], generator=generator).to(weight.device, weight.dtype)
    grad = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    outputs = []
    try:
        for forward in (type(probe).forward, _fused):
            inp = x.clone().requires_grad_()
            out = forward(probe, inp)
            out.backward(grad)
            outputs.append((out.detach(), inp.grad))
    except (TypeError, ValueError, RuntimeError):  # a norm whose forward takes or does something else
        return False
    (out, grad_x), (fused_out, fused_grad_x) = outputs
    return torch.equal(out, fused_out) and torch.allclose(grad_x.float(), fused_grad_x.float(), rtol=1e-2,
                                                          atol=1e-2 * grad_x.float().abs().max().item())


def fuse_norms(model) -> int:
    """Run each of `model`'s RMSNorm layers as _RMSNorm where its class passes _same_formula (checked on the
    class's first layer); returns how many."""
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")
             and isinstance(getattr(m, "weight", None), torch.Tensor) and _epsilon(m) is not None]
    verdicts: dict[type, bool] = {}
    fused = 0
    for norm in norms:
        if type(norm) not in verdicts:
            verdicts[type(norm)] = _same_formula(norm)
        if verdicts[type(norm)]:
            norm.forward = types.MethodType(_forward, norm)
            fused += 1
    return fused
