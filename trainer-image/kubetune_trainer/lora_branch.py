"""A LoRA linear layer's adapter branch as one autograd function, for training on CPU.

PEFT computes the branch as `lora_B(lora_A(dropout(x.to(fp32)))) * scaling` and adds it to the base
layer's output. Under bf16 autocast that is two casts of the layer input (to fp32 for the adapter's
weights, back to bf16 for the multiply), two weight casts, the scaling as a pass over the output, and as
many operations again in the backward: on CPU about 20 operations per adapted layer and pass, most of them
passes over the activations, for two thin matrix multiplies. Here the same arithmetic runs as one function:
the scaling folded into B's cast, the dropout applied to the bf16 input with a 0/1 mask kept for the
backward (drawn as the layer's dropout module draws it: dropout.keep_mask for CheapMaskDropout, else
torch's bernoulli_), the gradients of A and B returned in their own dtype. With a power-of-two
scaling (alpha = 2r, the default) the loss and gradients are bit for bit PEFT's for the same dropout mask;
otherwise they differ by the compute dtype's rounding of B x scaling. Only where PEFT's plain path would
run: one active adapter, not merged, no DoRA or other variant, no bias on B, in training mode.
"""

from __future__ import annotations

import types

import torch

from . import dropout


class _Branch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_weight, b_weight, scaling: float, p: float, cheap_mask: bool, dtype):
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            a, b = a_weight.to(dtype), (b_weight * scaling).to(dtype)
            keep, scale = None, 1.0
            if p > 0:  # a mask of 0 and 1 in the compute dtype: two multiplies, each faster than a select
                keep = _keep(flat.shape, p, cheap_mask, a_weight.dtype, dtype)
                scale = dropout.scale(p).item()  # fp32's, as torch's dropout of PEFT's fp32 input
                flat = (flat * scale).mul_(keep)
            h = flat @ a.t()
            out = h @ b.t()
        ctx.save_for_backward(flat, h, a, b, keep)
        ctx.scaling, ctx.scale, ctx.x_shape, ctx.x_dtype = scaling, scale, x.shape, x.dtype
        ctx.weight_dtypes = a_weight.dtype, b_weight.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, h, a, b, keep = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1]).to(a.dtype)
        grad_h = grad @ b
        grad_a = (grad_h.t() @ flat).to(ctx.weight_dtypes[0])
        grad_b = (grad.t() @ h).to(ctx.weight_dtypes[1]).mul_(ctx.scaling)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_h @ a
            if keep is not None:
                grad_x = (grad_x * ctx.scale).mul_(keep)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, grad_a, grad_b, None, None, None, None


def _keep(shape: torch.Size, p: float, cheap: bool, draw_dtype, dtype) -> torch.Tensor:
    """The dropout mask, 0 and 1 in `dtype`, as the layer's dropout would draw it: CheapMaskDropout's, or
    torch's bernoulli_ over the adapter-dtype input PEFT gives it (the same draws from the same generator)."""
    if cheap:
        return dropout.keep_mask(shape, p, dtype)
    return torch.empty(shape, dtype=draw_dtype).bernoulli_(1 - p).to(dtype)


def _forward(self, x, *args, **kwargs):
    """lora.Linear.forward with the adapter branch as _Branch where PEFT's plain path would run."""
    name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    if (not self.training or args or kwargs or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or self.lora_B[name].bias is not None):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    a, b, drop = self.lora_A[name].weight, self.lora_B[name].weight, self.lora_dropout[name]
    device = x.device.type
    # PEFT casts the input to the adapter's dtype; autocast then casts both to its own for the multiply
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else a.dtype
    p = drop.p if isinstance(drop, torch.nn.Dropout) else 0.0
    cheap = isinstance(drop, dropout.CheapMaskDropout)
    return (result + _Branch.apply(x, a, b, self.scaling[name], p, cheap, dtype)).to(result.dtype)


def fuse_branches(model) -> int:
    """Run the adapter branch of each of `model`'s PEFT LoRA linear layers as _Branch; returns how many."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if type(m) is Linear]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return len(layers)
