"""QLoRA on CPU: 4-bit base, LoRA gradients that are nonzero and equal to the dequantized reference."""

from __future__ import annotations

import pytest

from kubetune_api.spec import MethodSpec


def lora_grads(model) -> dict:
    return {n.replace(".default", ""): p.grad.detach().clone()
            for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}


def forward_backward(model, ids):
    import torch

    model.eval()  # an eval-mode forward first: this is what repacks 4-bit weights on AVX512-BF16 CPUs
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()


def test_qlora_trains_with_nonzero_correct_lora_gradients(tiny_model):
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.models import attach_adapter, load_model

    method = MethodSpec.model_validate({"type": "qlora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                                        "quantization": {"computeDtype": "float32"}})
    torch.manual_seed(0)
    model = attach_adapter(load_model(tiny_model, method, "cpu", torch.float32), method, False)
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert quantized, "the base should be 4-bit"
    assert all(m.support_avx512bf16_for_cpu is False for m in quantized.values())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)  # B starts at zero; make A's gradient nonzero as well
    lora_state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    ids = torch.randint(0, 300, (2, 12))
    forward_backward(model, ids)
    grads = lora_grads(model)
    assert grads and all(g.abs().sum() > 0 for g in grads.values())

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for name, module in quantized.items():
            target = reference.get_submodule(name.removeprefix("base_model.model.").replace(".base_layer", ""))
            target.weight.copy_(dequantize_4bit(module.weight.data, module.weight.quant_state).float())
    reference = get_peft_model(reference, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        params = dict(reference.named_parameters())
        for name, value in lora_state.items():
            params[name].copy_(value)
    forward_backward(reference, ids)
    expected = lora_grads(reference)
    assert expected.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, expected[name], rtol=1e-3, atol=1e-6), f"{name}: wrong QLoRA gradient"
    pytest.importorskip("bitsandbytes")


def test_the_cli_runs_a_qlora_job_with_a_4bit_base(tmp_path, tiny_model, sku_file):
    """`kubetune` marks bitsandbytes absent for LoRA jobs (start-up); a QLoRA job must still get it."""
    import json

    from kubetune_api.job import load_manifest

    from .conftest import manifest, run_cli, tiny_spec, write_manifest

    spec = tiny_spec(str(tiny_model), str(sku_file), str(tmp_path / "out"),
                     method={"type": "qlora", "quantization": {"computeDtype": "float32"}})
    path = write_manifest(tmp_path / "job.yaml", manifest(spec, name="q"))
    proc = run_cli(["run", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "default" / "q" / load_manifest(path).spec_hash
    assert (root / "_SUCCESS").exists() and (root / "adapter" / "adapter_config.json").exists()
    method = json.loads((root / "config.json").read_text())["spec"]["method"]
    assert method["type"] == "qlora" and method["quantization"]["quantType"] == "nf4"
