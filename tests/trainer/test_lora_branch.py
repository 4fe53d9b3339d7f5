"""The fused adapter branch gives PEFT's loss and gradients, and steps aside wherever PEFT's plain path
would not run."""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.batching import pad_batch
from kubetune_trainer.dropout import swap_dropouts
from kubetune_trainer.lora_branch import fuse_branches
from kubetune_trainer.loss import answer_loss
from kubetune_trainer.recipe import Levers

from .test_training_step import examples, run_steps


def adapted(tiny_model, dtype, rate: float = 0.0, alpha: int = 8, fused: bool = False, cheap: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    config = LoraConfig(r=4, lora_alpha=alpha, lora_dropout=rate, target_modules="all-linear",
                        task_type="CAUSAL_LM", init_lora_weights=False)  # non-zero B: the adapter counts
    model = get_peft_model(model, config).train()
    if cheap:
        swap_dropouts(model)
    if fused:
        assert fuse_branches(model) == len([m for m in model.modules() if hasattr(m, "lora_A")]) > 0
    return model


def batch() -> dict:
    ids, labels = examples(4)
    return pad_batch(ids, 0, labels)


def loss_and_grads(model, autocast: bool) -> tuple[float, dict]:
    torch.manual_seed(7)  # the same dropout masks for both models
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, count = answer_loss(model, batch())
    (loss / count).backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("rate", "masks"), [(0.0, "none"), (0.05, "torch's"), (0.05, "cheap")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_fused_branch_gives_peft_s_loss_and_gradients(tiny_model, rate, masks, precision):
    """The fused branch draws its masks as the layer's dropout module would: the same masks, so the same
    loss and gradients bit for bit."""
    dtype, cheap = (torch.bfloat16 if precision == "bf16" else torch.float32), masks == "cheap"
    fused = loss_and_grads(adapted(tiny_model, dtype, rate, fused=True, cheap=cheap), autocast=precision == "bf16")
    peft = loss_and_grads(adapted(tiny_model, dtype, rate, cheap=cheap), autocast=precision == "bf16")
    assert fused[0] == peft[0]  # scaling 8 / 4 = 2: bit for bit
    for name, grad in peft[1].items():
        assert grad.dtype == torch.float32 and torch.equal(fused[1][name], grad), name


def test_with_a_scaling_that_is_not_a_power_of_two_it_differs_only_by_bf16_rounding(tiny_model):
    fused = loss_and_grads(adapted(tiny_model, torch.bfloat16, alpha=7, fused=True), autocast=True)
    peft = loss_and_grads(adapted(tiny_model, torch.bfloat16, alpha=7), autocast=True)
    assert fused[0] == pytest.approx(peft[0], rel=1e-2)
    for name, grad in peft[1].items():
        assert torch.nn.functional.cosine_similarity(fused[1][name].flatten(), grad.flatten(), 0) > 0.99, name


def test_outside_training_and_with_the_adapter_off_peft_s_own_path_runs(tiny_model):
    fused, peft = adapted(tiny_model, torch.float32, 0.2, fused=True), adapted(tiny_model, torch.float32, 0.2)
    ids = batch()["input_ids"]
    with torch.no_grad():
        tuned = fused.eval()(input_ids=ids).logits
        assert torch.equal(tuned, peft.eval()(input_ids=ids).logits)
        fused.train(), peft.train()
        with fused.disable_adapter(), peft.disable_adapter():  # the base alone
            base = fused(input_ids=ids).logits
            assert torch.equal(base, peft(input_ids=ids).logits)
        assert not torch.allclose(base, tuned)  # the adapter does change the logits


@pytest.mark.parametrize("cheap", [True, False])
def test_a_job_with_the_fused_branch_trains_the_same(tiny_model, tmp_path, cheap):
    method = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.05}}
    fused = run_steps(tiny_model, tmp_path, "fused", Levers(cheap_dropout=cheap), method=method)
    peft = run_steps(tiny_model, tmp_path, "peft", Levers(fused_branch=False, cheap_dropout=cheap), method=method)
    assert len(fused) == 4 and fused[-1] < fused[0]
    assert fused == peft


def test_with_gradient_checkpointing_the_recomputed_branch_draws_the_same_dropout_masks(tiny_model, tmp_path):
    method = {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.05}}
    checkpointed = run_steps(tiny_model, tmp_path, "gc", Levers(), method=method, gradientCheckpointing=True)
    plain = run_steps(tiny_model, tmp_path, "plain", Levers(), method=method)
    assert checkpointed == pytest.approx(plain, rel=1e-6)
