"""SmolLM2-135M-Instruct learns multi-turn tool calling through `kubetune run examples/smollm2-tools.yaml`:
OpenAI-style tool conversations, every assistant turn trained, tools and calls in the documented text form
(SmolLM2's chat template has no tool support); the held-out loss falls and the final answers improve."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import REPO, run_cli, write_manifest

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "smollm2-tools.yaml"


@pytest.mark.timeout(1800)  # about 2 minutes on two idle cores; far more on a busy machine
def test_held_out_loss_of_multi_turn_tool_calling_falls(tmp_path, cache_dir):
    doc = yaml.safe_load(EXAMPLE.read_text())
    dataset = doc["spec"]["dataset"]
    for role in ("train", "eval"):
        dataset[role]["uri"] = str((EXAMPLE.parent / dataset[role]["uri"]).resolve())
    doc["spec"]["output"]["uri"] = str(tmp_path / "runs")
    proc = run_cli(["run", str(write_manifest(tmp_path / "job.yaml", doc))], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = (tmp_path / "runs" / "default" / "nordvik-tools").iterdir()
    metrics = json.loads((root / "metrics.json").read_text())
    base, tuned = metrics["base"], metrics["tuned"]
    assert metrics["data"]["tokens"]["truncated"] == 0 and metrics["data"]["schema"] == "messages"
    assert tuned["evalLoss"] < 0.5 * base["evalLoss"], (base, tuned)
    assert tuned["exactMatch"] > base["exactMatch"], (base, tuned)
    assert not metrics["data"]["warnings"], "the eval conversations are new ones"
    config = json.loads((root / "config.json").read_text())
    assert config["resolved"]["template"] == "chat"
