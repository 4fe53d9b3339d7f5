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
    assert json.loads((root / "config.json").read_text())["resolved"]["dtype"] == "bfloat16"
    assert bf16[-1] < bf16[0] - 0.1, bf16
    # bf16 rounds the base's activations to 8 bits of mantissa: the same curve, not the same digits
    assert bf16 == pytest.approx(fp32, rel=0.02) and bf16 != fp32, (bf16, fp32)
    adapter = load_file(root / "adapter" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}, "the adapter trains in fp32"
