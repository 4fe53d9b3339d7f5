"""The cheaper dropout mask on CPU: dropout's distribution and arithmetic, and a job that trains the same."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune_trainer import dropout
from kubetune_trainer.dropout import CheapMaskDropout, keep_mask, swap_dropouts
from kubetune_trainer.recipe import Levers

from .test_lora_branch import adapted as lora_model
from .test_training_step import run_steps

N = 1 << 20


def within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_each_element_is_kept_with_probability_1_minus_p_independently(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([N]), p)
    dropped = ~keep
    assert keep.dtype == torch.bool and keep.shape == (N,)
    assert within(dropped.float().mean().item(), p, N)
    for lane in range(dropout.LANES):  # every 16-bit lane of a random word, not only some
        assert within(dropped[lane::dropout.LANES].float().mean().item(), p, N // dropout.LANES), lane
    both = (dropped[:-1] & dropped[1:]).float().mean().item()  # neighbours, within a word and across words
    assert within(both, p * p, N - 1)
    assert within((dropped & keep_mask(torch.Size([N]), p).logical_not()).float().mean().item(), p * p, N)


def test_masks_follow_torchs_seed_and_differ_from_call_to_call():
    torch.manual_seed(3)
    first, second = keep_mask(torch.Size([4, 1000]), 0.1), keep_mask(torch.Size([4, 1000]), 0.1)
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([4, 1000]), 0.1), first)
    assert not torch.equal(first, second)
    torch.manual_seed(3)  # the same mask as 0 and 1 in another dtype
    assert torch.equal(keep_mask(torch.Size([4, 1000]), 0.1, torch.bfloat16), first.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_output_and_gradient_are_torchs_dropout_arithmetic_for_the_same_mask(monkeypatch, dtype):
    p = 0.3
    mask = torch.rand(6, 7, 9) >= p
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, q, dtype=torch.bool: mask.to(dtype) if q == p else None)
    x = torch.randn(6, 7, 9, dtype=dtype, requires_grad=True)
    upstream = torch.randn(6, 7, 9, dtype=dtype)
    out = CheapMaskDropout(p).train()(x)
    out.backward(upstream)
    noise = torch.empty_like(x).copy_(mask).div_(1 - p)  # what torch's CPU dropout multiplies by
    assert out.dtype == dtype and torch.equal(out, x.detach() * noise)
    assert torch.equal(x.grad, upstream * noise)


def test_outside_training_or_at_p_0_the_input_passes_unchanged():
    x = torch.randn(3, 5)
    assert torch.equal(CheapMaskDropout(0.2).eval()(x), x)
    assert torch.equal(CheapMaskDropout(0.0).train()(x), x)


def test_every_adapter_dropout_of_a_peft_model_is_swapped(tiny_model):
    model = lora_model(tiny_model, torch.float32, 0.1)
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    assert swap_dropouts(model) == len(layers) > 0
    assert all(isinstance(m.lora_dropout["default"], CheapMaskDropout) and m.lora_dropout["default"].p == 0.1
               for m in layers)
    assert swap_dropouts(lora_model(tiny_model, torch.float32, 0.0)) == 0  # PEFT's Identity: no mask to draw


def test_a_job_with_dropout_trains_the_same_as_with_torchs_dropout_given_its_masks(tiny_model, tmp_path, monkeypatch):
    # Masks drawn the way torch's CPU dropout draws them, from the same generator: the jobs see the same masks
    monkeypatch.setattr(dropout, "keep_mask",
                        lambda shape, p, dtype=torch.bool: torch.empty(shape).bernoulli_(1 - p).to(dtype))
    method = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.05}}
    cheap = run_steps(tiny_model, tmp_path, "cheap", Levers(fused_branch=False), method=method)
    torchs = run_steps(tiny_model, tmp_path, "torch", Levers(fused_branch=False, cheap_dropout=False), method=method)
    assert len(cheap) == 4 and cheap[-1] < cheap[0]
    assert cheap == pytest.approx(torchs, rel=1e-6)
    monkeypatch.undo()
    other = run_steps(tiny_model, tmp_path, "masks", Levers(fused_branch=False), method=method)  # its own masks
    assert other != pytest.approx(cheap, rel=1e-6)
