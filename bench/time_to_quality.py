"""Time to quality (issue 15, item 4): wall time from start to a saved adapter at the plateau metric, ours
with a minimal manifest against the plain Hugging Face Trainer script a user would write, in the same run.

    .venv/bin/python bench/time_to_quality.py                      # both tasks, both arms
    .venv/bin/python bench/time_to_quality.py --tasks sku --json ttq.json
    .venv/bin/python bench/time_to_quality.py --tasks sku --no-hf --ours-set training.packing=false   # one field set

Tasks (SmolLM2-135M-Instruct, bundled://smollm2-135m-instruct; ours at `precision: auto`, which is bf16 on a CPU
with AVX512-BF16 or AMX and fp32 elsewhere; the HF script in fp32, TrainingArguments' default, or bf16 with
--baseline-precision bf16):

* sku: examples/data/nordvik-sku (304 training, 40 held-out requests -> a short product code), exact match.
* support: bench/data/nordvik-support (400 training, 48 held-out; answers up to ~400 tokens: packing lists,
  policies), ROUGE-L.

Arms, each in its own process, one after the other:

* ours: `kubetune run` of a minimal manifest: the model, the training file, how to read it (schema, system
  prompt) and the output; every training and evaluation knob at its default (early stopping on a held-out
  tenth of the training file, base and tuned evaluation, report). Wall time is the whole command, spawn to
  exit, evaluation and artefacts included: what a user waits for.
* hf-script: transformers.Trainer + PEFT as the transformers/PEFT docs write it: LoRA r 8 (alpha 16,
  dropout 0.05) on q/k/v/o_proj, AdamW lr 1e-3, linear decay, 1 epoch, batch 8, DataCollatorForSeq2Seq
  (dynamic padding), then save_pretrained. Wall time spawn to exit (no evaluation of its own). It trains
  on the same token ids as ours (the trainer's reader and prompt formatter).

Each saved adapter is then scored by the same separate process (plain PEFT: base + adapter, batched greedy
generation, the trainer's metric functions) on the task's held-out file, which neither arm trained or
early-stopped on. The ratio ours/hf-script wall time counts only when ours scores at least as well.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
MODEL = "bundled://smollm2-135m-instruct"
TASKS = {
    "sku": {"data": REPO / "examples" / "data" / "nordvik-sku", "metric": "exactMatch", "maxSeqLength": 128,
            "system": "You are the order assistant of Nordvik Outfitters. Reply with the SKU only."},
    "support": {"data": REPO / "bench" / "data" / "nordvik-support", "metric": "rougeL", "maxSeqLength": 512,
                "system": "You are the support assistant of Nordvik Outfitters."},
}


def minimal_manifest(task: dict, out: Path, overrides: dict | None = None) -> dict:
    """The manifest a new user writes; `overrides` ({"training.packing": False}) sets fields on top of it."""
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ttq"},
            "spec": {"model": {"uri": MODEL},
                     "dataset": {"train": {"uri": str(task["data"] / "train.jsonl")}, "schema": "alpaca",
                                 "systemPrompt": task["system"], "maxSeqLength": task["maxSeqLength"]},
                     "output": {"uri": str(out)}}}
    for path, value in (overrides or {}).items():
        parent = manifest["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            parent = parent.setdefault(key, {})
        parent[leaf] = value
    return manifest


# ---- the baseline script, in its own process -------------------------------------------------------------
def hf_script(task_name: str, out: Path, epochs: float, precision: str = "fp32") -> None:
    """The script; with several epochs it also saves the adapter at the end of each epoch and the seconds
    since this process started (epochs.json), as a user evaluating every epoch would see them. `precision`
    bf16: the base loaded in bf16 and `bf16=True`, as the transformers docs advise on a CPU with AVX512-BF16
    or AMX (TrainingArguments' default is fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from kubetune_api.job import parse_job
    from kubetune_trainer.models import fetch_model, load_tokenizer
    from kubetune_trainer.prompting import PromptFormatter
    from kubetune_trainer.recipe import LoRARecipe

    task = TASKS[task_name]
    out.mkdir(parents=True, exist_ok=True)  # the recipe's scratch folder goes below it
    recipe = LoRARecipe(parse_job(minimal_manifest(task, out / "unused")), work_dir=str(out))
    recipe.check_data()
    path = fetch_model(recipe.spec.model, recipe.storage)
    tokenizer = load_tokenizer(path, False)
    formatter = PromptFormatter(tokenizer, recipe.spec.dataset)
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in map(formatter.encode, recipe.train_set + recipe.eval_set)]  # the whole training file
    bf16 = precision == "bf16"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    args = TrainingArguments(output_dir=str(out / "hf"), per_device_train_batch_size=8, num_train_epochs=epochs,
                             learning_rate=1e-3, save_strategy="no", report_to="none", use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True, logging_steps=10, seed=42, bf16=bf16)
    ends: list[dict] = []

    class EveryEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) < epochs:  # the last epoch's adapter is the script's own save below
                model.save_pretrained(out / f"adapter-epoch{round(state.epoch)}")
                ends.append({"epoch": round(state.epoch), "seconds": time.monotonic() - STARTED})

    Trainer(model=model, args=args, train_dataset=rows, callbacks=[EveryEpoch()],
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)).train()
    model.save_pretrained(out / "adapter")
    (out / "epochs.json").write_text(json.dumps(ends))


# ---- the scorer, in its own process ----------------------------------------------------------------------
def score(task_name: str, adapter: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune_api.job import parse_job
    from kubetune_api.spec import GenerationSpec
    from kubetune_trainer.evaluation import generate
    from kubetune_trainer.metrics import generation_scores
    from kubetune_trainer.models import fetch_model, load_tokenizer
    from kubetune_trainer.prompting import PromptFormatter
    from kubetune_trainer.recipe import LoRARecipe

    task = TASKS[task_name]
    with tempfile.TemporaryDirectory() as tmp:
        spec = minimal_manifest(task, Path(tmp) / "unused")
        spec["spec"]["dataset"]["eval"] = {"uri": str(task["data"] / "eval.jsonl")}
        recipe = LoRARecipe(parse_job(spec), work_dir=tmp)
        recipe.check_data()
        path = fetch_model(recipe.spec.model, recipe.storage)
        tokenizer = load_tokenizer(path, False)
        formatter = PromptFormatter(tokenizer, recipe.spec.dataset)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), adapter)
        out = generate(model, formatter, recipe.eval_set, GenerationSpec(), 16, "cpu")
        refs = [formatter.reference(e) for e in recipe.eval_set]
        return generation_scores(out, refs, [task["metric"]])


# ---- the driver --------------------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run `cmd`; (wall seconds, CPU seconds, stdout). The CPU seconds are user + system, the command's own
    children included: on a shared machine the steadier measure."""
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.monotonic() - started, cpu, proc.stdout


def run_task(name: str, work: Path, baseline_epochs: list[float], with_ours: bool = True,
             overrides: dict | None = None, baseline_precision: str = "fp32") -> list[dict]:
    task, rows = TASKS[name], []
    for epochs in baseline_epochs:
        rows += hf_rows(name, work, epochs, baseline_precision)
    if with_ours:
        rows.insert(0, ours_row(name, work, overrides))
    for row in rows:
        _, _, stdout = timed([sys.executable, __file__, "--worker", "score", "--tasks", name, "--out", row["adapter"]])
        row["metric"], row["score"] = task["metric"], json.loads(stdout.splitlines()[-1])[task["metric"]]
        print(f"  {name} {row['arm']}: {row['wall_s']:.0f} s, {row['metric']} {row['score']:.4f} "
              f"(load {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
    return rows


def ours_row(name: str, work: Path, overrides: dict | None = None) -> dict:
    """`kubetune run` of the minimal manifest (with `overrides` set), the real command line."""
    task = TASKS[name]
    out = work / name / "ours"
    manifest = work / name / "ttq.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(yaml.safe_dump(minimal_manifest(task, out, overrides)))
    seconds, cpu, _ = timed([sys.executable, "-m", "kubetune_trainer", "run", str(manifest)])
    root = next(out.glob("*/ttq/*/"))
    metrics = json.loads((root / "metrics.json").read_text())
    row = {"task": name, "arm": "ours", "wall_s": seconds, "cpu_s": cpu, "adapter": str(root / "adapter"),
           "train_s": metrics["training"]["seconds"], "steps": metrics["training"]["steps"],
           "stop": metrics["training"]["stopReason"], "best_step": metrics["training"]["bestStep"],
           "lr": metrics["training"].get("learningRate"),
           "set": ", ".join(f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items())}
    print(f"  {name} ours: {seconds:.0f} s wall, {row['steps']} steps, stopped: {row['stop']}", flush=True)
    return row


def hf_rows(name: str, work: Path, epochs: float, precision: str = "fp32") -> list[dict]:
    """The HF script for `epochs`: one row per epoch end (wall time from its start to that epoch's end)."""
    base = work / name / f"hf-{epochs:g}"
    seconds, cpu, _ = timed([sys.executable, __file__, "--worker", "hf-script", "--tasks", name, "--out", str(base),
                        "--epochs", str(epochs), "--baseline-precision", precision])
    print(f"  {name} hf-script {epochs:g} ep: {seconds:.0f} s wall", flush=True)
    ends = json.loads((base / "epochs.json").read_text())
    rows = [{"task": name, "arm": f"hf-script {epochs:g} ep, after epoch {e['epoch']}", "wall_s": e["seconds"],
             "cpu_s": None, "adapter": str(base / f"adapter-epoch{e['epoch']}"), "epochs": e["epoch"]} for e in ends]
    return rows + [{"task": name, "arm": f"hf-script {epochs:g} ep", "wall_s": seconds, "cpu_s": cpu,
                    "adapter": str(base / "adapter"), "epochs": epochs}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sku,support", help="comma-separated: " + ", ".join(TASKS))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--baseline-epochs", default="1,3",
                        help="epochs of the HF script, one arm each (1: the issue's script; 3: TrainingArguments' default)")
    parser.add_argument("--baseline-precision", choices=["fp32", "bf16"], default="fp32",
                        help="the HF script's precision (fp32: TrainingArguments' default; bf16: bf16 base and "
                        "autocast, for a CPU with AVX512-BF16 or AMX)")
    parser.add_argument("--no-ours", action="store_true", help="run only the HF script's arms")
    parser.add_argument("--no-hf", action="store_true", help="run only ours")
    parser.add_argument("--ours-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="set a spec field of ours' manifest (camelCase path below spec, YAML value); repeatable")
    parser.add_argument("--epochs", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker == "hf-script":
        return hf_script(args.tasks, Path(args.out), args.epochs, args.baseline_precision)
    if args.worker == "score":
        print(json.dumps(score(args.tasks, Path(args.out))))
        return None
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs; load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    overrides = {key: yaml.safe_load(value) for key, _, value in (s.partition("=") for s in args.ours_set)}
    baseline_epochs = [] if args.no_hf else [float(e) for e in args.baseline_epochs.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="ttq-") as work:
        for name in args.tasks.split(","):
            results += run_task(name, Path(work), baseline_epochs, not args.no_ours, overrides,
                                args.baseline_precision)
    print("\n| task | arm | wall s | CPU s | metric | score | ours / this (wall) | ours / this (CPU) | notes |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ours = next((o for o in results if o["task"] == r["task"] and o["arm"] == "ours"), None)
        if r["arm"] == "ours":
            notes = (f"{r['steps']} steps, {r['stop']}, best step {r['best_step']}, training {r['train_s']} s, "
                     f"lr {r['lr']:.2e}{'; ' + r['set'] if r['set'] else ''}")
        else:
            notes = f"{r['epochs']:g} epoch(s), lr 1e-3, r 8 q/k/v/o, {args.baseline_precision}"
        print(f"| {r['task']} | {r['arm']} | {r['wall_s']:.0f} | {_num(r['cpu_s'], '.0f')} | {r['metric']} "
              f"| {r['score']:.4f} | {_num(ours and ours['wall_s'] / r['wall_s'], '.2f')} "
              f"| {_num(ours and r['cpu_s'] and ours['cpu_s'] / r['cpu_s'], '.2f')} | {notes} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return None


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
