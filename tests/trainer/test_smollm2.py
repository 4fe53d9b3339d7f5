"""The real thing: SmolLM2-135M-Instruct tuned with the example spec, once, shared by three checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "smollm2-local.yaml"


@pytest.fixture
def tuned(smollm2_example):
    """The example job, trained once for the session (tests/conftest.py)."""
    return smollm2_example


def test_training_changes_the_adapter_and_leaves_the_base_weights_alone(tuned):
    before, after = tuned["before"], tuned["after"]
    lora = [n for n in after if "lora_" in n]
    base = [n for n in after if "lora_" not in n]
    assert lora and base
    assert all(not after[n].equal(before[n]) for n in lora), "every adapter matrix moved"
    assert all(after[n].equal(before[n]) for n in base), "no base weight changed"


def test_held_out_exact_match_rises_from_base_to_tuned(tuned):
    tuned_em = tuned["results"]["tuned"]["exactMatch"]
    base_em = tuned["results"]["base"]["exactMatch"]
    assert base_em <= 0.1 and tuned_em >= 0.8, (base_em, tuned_em)
    assert tuned["results"]["gatePassed"] is True
    stored = json.loads((tuned["root"] / "metrics.json").read_text())
    assert stored["tuned"]["exactMatch"] == tuned_em and (tuned["root"] / "_SUCCESS").exists()


REPLAY = r"""
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base_path, adapter, system, eval_file, batch, max_new = sys.argv[1:7]
tokenizer = AutoTokenizer.from_pretrained(adapter)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
rows = [json.loads(line) for line in open(eval_file)]
prompts = [tokenizer.apply_chat_template([{"role": "system", "content": system},
                                          {"role": "user", "content": r["instruction"]}],
                                         add_generation_prompt=True, tokenize=False) for r in rows]
tokenizer.padding_side = "left"
out = []
for i in range(0, len(prompts), int(batch)):
    enc = tokenizer(prompts[i:i + int(batch)], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=int(max_new), do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    out += [t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
print(json.dumps(out))
"""


def test_saved_adapter_loads_with_plain_peft_in_a_fresh_process(tuned):
    recipe, root = tuned["recipe"], tuned["root"]
    spec = recipe.spec
    args = [str(recipe.model_path), str(root / "adapter"), spec.dataset.system_prompt,
            str(EXAMPLE.parent / spec.dataset.eval.uri), "16", str(spec.evaluation.generation.max_new_tokens)]
    proc = subprocess.run([sys.executable, "-c", REPLAY, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replayed = json.loads(proc.stdout.strip().splitlines()[-1])
    stored = [json.loads(line)["tuned"] for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert replayed == stored
