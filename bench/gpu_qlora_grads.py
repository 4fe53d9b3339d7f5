"""QLoRA's adapter gradients on this device against a LoRA reference on the dequantized weights (issue 18).

    python bench/gpu_qlora_grads.py            # prints CHECK lines and a RESULT line (bench/gpu_lora.py runs it)

A small random Llama (hidden 512, 2 layers) is saved once; the trainer's `load_model` + `attach_adapter`
quantize it (nf4, double quantization) and adapt it (LoRA r 16 on every linear layer, B drawn at random so
that A's gradient is not zero). The reference is the same base in fp32 with every quantized weight
replaced by its dequantized value and the same adapter weights: QLoRA computes exactly that model, so the
gradients must agree up to the compute precision. Checked with fp32 compute (to 1e-3 relative, as the CPU
test does) and with bf16 compute under autocast (the job's default on a GPU), where a bf16 LoRA on the same
dequantized weights gives the noise floor: QLoRA's error against the fp32 reference must be within 1.5x of
that floor. The relative error is |g - g_ref| / |g_ref| over all adapter gradients together.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gpu_lora import device  # this script's folder, bench/, is on sys.path when it runs

SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 2, "num_attention_heads": 8,
         "num_key_value_heads": 8, "vocab_size": 2000}


def gradients(model, ids, dtype) -> dict:
    import torch

    model.zero_grad(set_to_none=True)
    with torch.autocast(device(), dtype=dtype, enabled=dtype != torch.float32):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n.replace(".default", ""): p.grad.detach().float().clone()
            for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}


def relative_error(grads: dict, reference: dict) -> float:
    import torch

    assert grads.keys() == reference.keys(), "different adapter parameters"
    diff = torch.cat([(grads[n] - reference[n]).flatten() for n in reference])
    ref = torch.cat([reference[n].flatten() for n in reference])
    return float(diff.norm() / ref.norm())


def qlora(path: Path, compute: str):
    """(model, adapter state) through the trainer's own loading and adapter code."""
    import torch

    from kubetune_api.spec import MethodSpec
    from kubetune_trainer.models import attach_adapter, load_model

    spec = MethodSpec.model_validate({"type": "qlora", "lora": {"r": 16, "alpha": 32},
                                      "quantization": {"computeDtype": compute}})
    model = attach_adapter(load_model(path, spec, device(), getattr(torch, compute)), spec, False)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    return model, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def reference(path: Path, quantized, state: dict, dtype):
    """The base in `dtype` with the 4-bit weights dequantized, and the same adapter."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, Linear4bit):
                target = model.get_submodule(name.removeprefix("base_model.model.").replace(".base_layer", ""))
                target.weight.copy_(dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
    return model


def check(work: Path) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = work / "small"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), dtype=torch.float32).save_pretrained(path)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 128), generator=torch.Generator().manual_seed(0)).to(device())
    checks = []
    for compute in ("float32", "bfloat16"):
        dtype = getattr(torch, compute)
        model, state = qlora(path, compute)
        model.train()
        got = gradients(model, ids, dtype)
        exact = gradients(reference(path, model, state, torch.float32).train(), ids, torch.float32)
        error = relative_error(got, exact)
        row = {"compute": compute, "device": device(), "tensors": len(got), "relative_error": error}
        if compute == "float32":
            row["passed"] = error < 1e-3
        else:
            floor = relative_error(gradients(reference(path, model, state, dtype).train(), ids, dtype), exact)
            row.update(bf16_lora_error=floor, passed=error <= 1.5 * floor + 1e-6)
        row["nonzero"] = all(float(g.abs().sum()) > 0 for g in got.values())
        row["passed"] = row["passed"] and row["nonzero"]
        checks.append(row)
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None)
    parser.add_argument("--worker", default="qlora-grads")
    args, _ = parser.parse_known_args()  # bench/gpu_lora.py passes its own arguments too
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="qlora-grads-", dir=args.work) as work:
        checks = check(Path(work))
    for row in checks:
        print("CHECK " + json.dumps(row), flush=True)
    print("RESULT " + json.dumps({"arm": args.worker, "checks": checks}), flush=True)


if __name__ == "__main__":
    main()
