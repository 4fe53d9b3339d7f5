"""Training precision on CPU: `auto` trains in bf16 where the CPU multiplies bf16 in hardware (it is several
times faster there, and emulated and slower elsewhere), and a bf16 job trains as an fp32 one does."""

from __future__ import annotations

import json

import pytest

from kubetune_api.job import load_manifest

from .conftest import manifest, run_cli, sku_rows, tiny_spec, write_jsonl, write_manifest

torch = pytest.importorskip("torch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves for the GPU there")
@pytest.mark.parametrize(("capabilities", "expected"), [
    ({"avx2": True, "avx512_bf16": True}, "bfloat16"),  # AMD Zen 4 and later, Intel Cooper Lake
    ({"avx2": True, "amx_bf16": True}, "bfloat16"),  # Intel Sapphire Rapids and later
    ({"avx2": True, "avx512_f": True, "avx512_bf16": False}, "float32"),  # AVX-512 without bf16: emulated
    ({"avx2": True}, "float32"),
])
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, capabilities, expected):
    from kubetune_trainer.models import device_and_dtype

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert device_and_dtype("auto") == ("cpu", getattr(torch, expected))
    assert device_and_dtype("fp32") == ("cpu", torch.float32), "an explicit precision is always honoured"
    assert device_and_dtype("bf16") == ("cpu", torch.bfloat16)


def _run(tmp_path, tiny_model, precision: str) -> tuple:
    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / "out"), training={"precision": precision})
    path = write_manifest(tmp_path / f"{precision}.yaml", manifest(spec, name=precision))
    proc = run_cli(["run", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "out" / "default" / precision / load_manifest(path).spec_hash
    log = [json.loads(line) for line in (root / "train-log.jsonl").read_text().splitlines()]
    return root, [e["loss"] for e in log if e["event"] == "step"]


def test_a_bf16_job_trains_on_cpu_as_an_fp32_job_does_and_keeps_an_fp32_adapter(tmp_path, tiny_model):
    from safetensors.torch import load_file

    root, bf16 = _run(tmp_path, tiny_model, "bf16")
    _, fp32 = _run(tmp_path, tiny_model, "fp32")
    resolved = json.loads((root / "config.json").read_text())["resolved"]
    assert (resolved["dtype"], resolved["attention"]) == ("bfloat16", "kubetune_sdpa_fp32")
    assert bf16[-1] < bf16[0] - 0.1, bf16
    # bf16 rounds the base's activations to 8 bits of mantissa: the same curve, not the same digits
    assert bf16 == pytest.approx(fp32, rel=0.02) and bf16 != fp32, (bf16, fp32)
    adapter = load_file(root / "adapter" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}, "the adapter trains in fp32"


def _loss_and_grads(tiny_model, dtype, fp32_attention: bool) -> tuple:
    """One padded batch's answer loss and the adapter's gradients, the model in `dtype` under autocast."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.loss import answer_loss
    from kubetune_trainer.models import attention_in_fp32

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
    assert not fp32_attention or attention_in_fp32(model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(3, model.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 17:] = mask[2, 9:] = 0  # padded rows: the attention mask reaches the kernel
    targets = torch.where(mask.bool() & (torch.arange(24) >= 4), ids.roll(-1, 1), -100)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        loss, _ = answer_loss(model, {"input_ids": ids, "attention_mask": mask, "targets": targets})
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])


def test_attention_in_fp32_under_bf16_keeps_the_loss_and_gradients_within_bf16s_precision(tiny_model):
    """The bf16 lever on CPU (models.attention_in_fp32) computes attention more precisely than bf16 attention:
    its loss and gradients are as close to an all-fp32 step as bf16's own."""
    loss32, grads32 = _loss_and_grads(tiny_model, torch.float32, False)
    for fp32_attention in (False, True):
        loss, grads = _loss_and_grads(tiny_model, torch.bfloat16, fp32_attention)
        assert loss == pytest.approx(loss32, rel=1e-2), fp32_attention
        cosine = torch.nn.functional.cosine_similarity(grads, grads32, dim=0)
        assert cosine > 0.995 and (grads.norm() / grads32.norm() - 1).abs() < 0.02, (fp32_attention, cosine)


def test_attention_in_fp32_is_sdpa_on_fp32_copies_with_the_gradient_in_the_inputs_dtype():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from kubetune_trainer.models import _sdpa_in_fp32

    class Attention(torch.nn.Module):
        num_key_value_groups, is_causal = 3, True  # grouped-query attention, as SmolLM2's

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 10, 8, generator=g).bfloat16().requires_grad_()
    k, v = (torch.randn(2, 2, 10, 8, generator=g).bfloat16().requires_grad_() for _ in range(2))
    mask = torch.ones(2, 1, 10, 10, dtype=torch.bool).tril()
    mask[1, :, :, 7:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = _sdpa_in_fp32(Attention(), q, k, v, mask, scaling=8 ** -0.5)
    expected, _ = sdpa_attention_forward(Attention(), q.float(), k.float(), v.float(), mask, scaling=8 ** -0.5)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.bfloat16())
    out.float().pow(2).sum().backward()
    assert q.grad.dtype == k.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
