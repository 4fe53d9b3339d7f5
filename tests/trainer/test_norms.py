"""The fused RMSNorm: transformers' output bit for bit, its input gradient to rounding, a job that trains the
same, and norms that compute something else left as they are."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from kubetune_trainer.norms import fuse_norms
from kubetune_trainer.recipe import Levers

from .test_lora_branch import adapted, loss_and_grads
from .test_training_step import run_steps


def frozen_norm(dtype, cls=LlamaRMSNorm, size: int = 96):
    torch.manual_seed(0)
    norm = cls(size, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(0.5 + torch.rand(size))
    norm.weight.requires_grad_(False)
    return norm.train()


def output_and_input_grad(norm, x, grad):
    x = x.clone().requires_grad_()
    out = norm(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_norm_gives_transformers_output_and_input_gradient(dtype):
    torch.manual_seed(1)
    x, grad = torch.randn(4, 33, 96).to(dtype) * 3, torch.randn(4, 33, 96).to(dtype)
    plain = output_and_input_grad(frozen_norm(dtype), x, grad)
    norm = frozen_norm(dtype)
    assert fuse_norms(norm) == 1
    assert norm(x.clone().requires_grad_()).grad_fn.name() == "_RMSNormBackward"
    fused = output_and_input_grad(norm, x, grad)
    assert torch.equal(fused[0], plain[0])
    if dtype == torch.float32:
        torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-6)
    else:  # the same fp32 arithmetic in another order, then rounded to bf16: at most one rounding apart
        torch.testing.assert_close(fused[1], plain[1], rtol=2 ** -7, atol=1e-3)
        assert (fused[1] == plain[1]).float().mean() > 0.95


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_lora_model_s_loss_is_unchanged_and_its_gradients_only_rounded(tiny_model, precision):
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = adapted(tiny_model, dtype, fused=True)
    layers = len(model.base_model.model.model.layers)
    assert fuse_norms(model) == 2 * layers + 1  # two per decoder layer and the final one
    fused = loss_and_grads(model, autocast=precision == "bf16")
    plain = loss_and_grads(adapted(tiny_model, dtype, fused=True), autocast=precision == "bf16")
    assert fused[0] == plain[0]
    for name, grad in plain[1].items():
        cosine = torch.nn.functional.cosine_similarity(fused[1][name].flatten(), grad.flatten(), 0)
        assert cosine > (0.999999 if precision == "fp32" else 0.999), name


class OnePlusWeightRMSNorm(LlamaRMSNorm):
    """Gemma's formula: (1 + weight) scales the normalised input."""

    def forward(self, hidden_states):
        x = hidden_states.float()
        return ((1.0 + self.weight.float()) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
                ).to(hidden_states.dtype)


def test_a_norm_with_another_formula_keeps_its_own_forward():
    norm = frozen_norm(torch.float32, OnePlusWeightRMSNorm)
    x, grad = torch.randn(2, 5, 96), torch.randn(2, 5, 96)
    expected = output_and_input_grad(norm, x, grad)
    assert fuse_norms(torch.nn.Sequential(norm)) == 0
    assert "forward" not in vars(norm)
    assert torch.equal(output_and_input_grad(norm, x, grad)[1], expected[1])


def test_a_trained_norm_weight_and_evaluation_take_transformers_path():
    norm = frozen_norm(torch.float32)
    fuse_norms(norm)
    norm.weight.requires_grad_(True)  # a norm that trains (not LoRA's): its weight gets its gradient
    norm(torch.randn(2, 5, 96)).sum().backward()
    assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    norm.weight.requires_grad_(False)
    norm.eval()
    x = torch.randn(2, 5, 96, requires_grad=True)
    assert norm(x).grad_fn.name() != "_RMSNormBackward"  # autograd's own graph outside training


def test_a_job_with_fused_norms_trains_the_same(tiny_model, tmp_path):
    fused = run_steps(tiny_model, tmp_path, "fused", Levers(fused_norm=True))
    plain = run_steps(tiny_model, tmp_path, "plain", Levers())
    assert len(fused) == 4 and fused[-1] < fused[0]
    assert fused == pytest.approx(plain, rel=1e-5)
