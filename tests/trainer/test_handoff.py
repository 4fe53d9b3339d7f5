"""Hand-off: the adapter names its base as the user did, carries a real model card and lineage.json, and the
serving check reports what vLLM/SGLang would refuse, without changing what was trained."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from kubetune_api import __version__
from kubetune_api.job import load_manifest
from kubetune_trainer.handoff import check_serving

from .conftest import manifest, run_cli, tiny_spec, write_manifest

CONFIG = {"r": 8, "lora_alpha": 16, "bias": "none", "use_dora": False, "use_rslora": False,
          "modules_to_save": None, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}


def adapter(tmp_path, modules=("q_proj", "v_proj"), **config):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({**CONFIG, **config}))
    tensors = {}
    for module in modules:
        prefix = f"base_model.model.model.layers.0.{'self_attn' if module != 'embed_tokens' else ''}.{module}"
        kind = "lora_embedding" if module == "embed_tokens" else "lora"
        tensors[f"{prefix}.{kind}_A.weight"] = torch.zeros(2, 2)
        tensors[f"{prefix}.{kind}_B.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(("config", "modules", "reason", "says"), [
    ({}, ("q_proj", "v_proj"), "Servable", "serve this adapter as trained"),
    ({"r": 64}, ("q_proj",), "RankAboveServingLimit", "--max-lora-rank 64"),
    ({"r": 20}, ("q_proj",), "RankAboveServingLimit", "--max-lora-rank 32"),
    ({"use_dora": True}, ("q_proj",), "UnsupportedAdapterFeature", "DoRA"),
    ({"bias": "lora_only"}, ("q_proj",), "UnsupportedAdapterFeature", "bias 'lora_only'"),
    ({"modules_to_save": ["lm_head"]}, ("q_proj",), "UnsupportedAdapterFeature", "modules_to_save"),
    ({}, ("q_proj", "embed_tokens"), "UnsupportedTargetModules", "['embed_tokens']"),
    ({}, ("q_proj", "input_layernorm"), "UnsupportedTargetModules", "input_layernorm"),
])
def test_the_serving_check_names_what_an_engine_refuses_and_what_to_do(tmp_path, config, modules, reason, says):
    verdict = check_serving(adapter(tmp_path, modules, **config), max_lora_rank=16)
    assert verdict.reason == reason
    assert verdict.compatible is (reason == "Servable")
    assert says in verdict.message


def test_rslora_is_servable_with_a_note_on_its_scaling(tmp_path):
    verdict = check_serving(adapter(tmp_path, use_rslora=True), max_lora_rank=16)
    assert verdict.compatible and "sqrt" in verdict.message


def test_a_run_hands_off_a_named_adapter_a_model_card_and_lineage(tmp_path, tiny_model, sku_file):
    spec = tiny_spec(f"file://{tiny_model}", str(sku_file), str(tmp_path / "out"),
                     method={"type": "lora", "lora": {"r": 32, "alpha": 32, "dropout": 0.0}})
    path = write_manifest(tmp_path / "job.yaml", manifest(spec, name="handoff"))
    proc = run_cli(["run", str(path)], env={"KUBETUNE_IMAGE": "ghcr.io/kubetune/trainer:test",
                                             "KUBETUNE_IMAGE_ID": "sha256:" + "b" * 64, "KUBETUNE_ATTEMPT": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = load_manifest(path)
    root = tmp_path / "out" / "default" / "handoff" / job.spec_hash

    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == f"file://{tiny_model}", "named as the user named it"
    assert config["r"] == 32, "the serving check never changes what was trained"

    metrics = json.loads((root / "metrics.json").read_text())
    serving = metrics["serving"]
    assert serving["compatible"] is False and serving["reason"] == "RankAboveServingLimit"
    assert "--max-lora-rank 32" in serving["message"]

    card = (root / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in card
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == f"file://{tiny_model}" and front["library_name"] == "peft"
    assert front["datasets"] == [str(sku_file)]
    scores = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert scores["evalLoss (tuned)"] == metrics["tuned"]["evalLoss"]
    assert scores["evalLoss (base)"] == metrics["base"]["evalLoss"]
    assert "PeftModel.from_pretrained" in card and "--enable-lora" in card

    lineage = json.loads((root / "lineage.json").read_text())
    assert lineage["specHash"] == job.spec_hash
    assert lineage["spec"]["training"]["scheduler"] == "cosine", "the resolved spec, defaults filled"
    train = lineage["inputs"]["train"][0]
    assert train["sha256"] == hashlib.sha256(sku_file.read_bytes()).hexdigest() and train["rows"] == 12
    weights = lineage["baseModel"]["weights"]
    [safetensors] = list(tiny_model.glob("*.safetensors"))
    assert weights["files"][0]["sha256"] == hashlib.sha256(safetensors.read_bytes()).hexdigest()
    assert lineage["baseModel"]["uri"] == f"file://{tiny_model}"
    assert lineage["trainer"]["version"] == __version__ and lineage["trainer"]["libraries"]["peft"]
    assert lineage["image"] == {"reference": "ghcr.io/kubetune/trainer:test", "id": "sha256:" + "b" * 64}
    assert lineage["attempt"] == 2

    again = run_cli(["run", str(path)])  # already complete: the stored serving verdict comes back
    assert again.returncode == 0, again.stderr[-2000:]
