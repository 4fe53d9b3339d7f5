"""bench/gpu_lora.py runs only where a GPU is lent, a few minutes per task: it must not rot in between. Here it
runs end to end on CPU at a tiny shape, each arm in its own process, as on the GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow  # ~2 minutes: six processes each import torch, transformers and peft
def test_the_gpu_benchmark_trains_ours_and_both_baselines_on_the_same_tokens_and_checks_qlora(tmp_path):
    out = tmp_path / "gpu.json"
    arms = ("ours-lora", "hf-lora", "trl-lora", "ours-lora-packed", "ours-lora-grouped")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_lora.py"), "--shape", "tiny", "--seq", "64", "--steps", "2",
         "--warmup", "1", "--matmul", "256", "--workloads", "fullseq,sft", "--arms", ",".join((*arms, "qlora-grads")),
         "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["arm"]: r for r in json.loads(out.read_text())["results"]}
    assert not [r["error"] for r in results.values() if "error" in r]
    fullseq, sft = ([results[arm]["workloads"][i] for arm in arms] for i in (0, 1))
    # two timed steps of one 64-token sequence each, every token but the first an answer, in every loop
    assert {(w["tokens"], w["answer_tokens"]) for w in fullseq} == {(128, 126)}
    # instruction data: each loop orders the examples its own way, but every loop times the same examples
    assert len({(w["tokens"], w["answer_tokens"]) for w in sft}) == 1 and sft[0]["tokens"] > sft[0]["answer_tokens"]
    assert min(w["tokens_per_s"] for w in fullseq + sft) > 0
    assert fullseq[0]["loss_options"]["chunked_head"] is True and fullseq[0]["estimate_gb"] > 0
    checks = results["qlora-grads"]["checks"]
    assert [c["compute"] for c in checks] == ["float32", "bfloat16"] and all(c["passed"] for c in checks), checks
