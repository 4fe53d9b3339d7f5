"""Trainer throughput (issues 6 and 15): our trainer versus what a user would run instead.

    .venv/bin/python bench/trainer_throughput.py                 # the two baselines, ours, the naive loop
    .venv/bin/python bench/trainer_throughput.py --preset levers   # each lever on its own (4 steps)
    .venv/bin/python bench/trainer_throughput.py --preset levers2  # the default, packing, bf16, checkpointing
    .venv/bin/python bench/trainer_throughput.py --arms hf-naive,grouped --steps 4 --json out.json

Every arm trains SmolLM2-135M-Instruct (bundled://smollm2-135m-instruct, fp32 safetensors) with the same LoRA
adapter (r 16, alpha 32, dropout 0.05 or --lora-dropout, all linear layers), the same optimizer settings
(AdamW, lr 1e-3, cosine, 10% warm-up, clip 1.0), the same number of optimizer steps and 8 examples per step
(micro-batches of 4, accumulation 2) on bench/data/nordvik-support (400 training examples of 45 to 494 tokens,
median 89; made by bench/data/make_trainer_dataset.py), tokenized by the trainer's PromptFormatter so every
arm sees the same token ids. Each arm runs in its own process, started one after another by this one, so peak
RSS (ru_maxrss, read when training ends) is per arm.

* hf-dynamic: transformers.Trainer + peft.get_peft_model with DataCollatorForSeq2Seq (each micro-batch
  padded to its longest example, labels with -100) and train_sampling_strategy "group_by_length" (the
  transformers 5 name of group_by_length): what the transformers and PEFT docs lead a user to.
* hf-random: the same in random order (train_sampling_strategy "random", the Trainer's default): more
  padding per micro-batch, but it ends an epoch at about ours' and TRL's held-out loss, where length
  grouping leaves hf-dynamic's 0.3 higher on this data.
* trl-sft: TRL's SFTTrainer on the same token ids as a prompt-completion dataset (input_ids and
  completion_mask), completion_only_loss and padding_free (each micro-batch flattened into one row with
  per-example position ids, no padding): TRL's documented fast settings that keep the examples per step.
  TRL's packing would put more examples into each step, so the number of examples per update would differ.
  In the run's precision like every other arm (SFTConfig's own default is bf16 autocast, which
  --precision bf16 keeps, and gradient checkpointing, turned off here; trl-sft-padded is the same with
  padding_free off).
* --precision bf16 (default fp32): every arm in bf16, as on a CPU with AVX512-BF16 or AMX, where ours'
  `precision: auto` trains in bf16: the baselines load the base in bf16 and set `bf16=True`; ours sets
  `precision: bf16` (in fp32 runs, `precision: fp32`, so that auto's choice does not differ between arms).
* --malloc default (default fixed): glibc's own mmap threshold, as a job's pod runs; read speed this way.
  fixed sets it to 128 KiB in every arm, so that peak RSS is the same run to run (read memory this way).
* hf-naive (a labelled extra row, not a baseline): transformers.Trainer + PEFT, every example padded to
  maxSeqLength (512), random order, full-vocabulary logits: what a first script does.
* the others: the trainer's LoRARecipe (setup, then train: the product's batching and loss code) with one
  or more levers on; `ours` is what a job gets by default.

Tokens/s counts non-padding tokens only, over the training loop (first step to last; model loading and
evaluation excluded), per wall-clock second and per CPU second of the arm's process. With one torch thread
(the default here) the CPU-time rate is what an idle core gives, whatever else the machine runs; the
wall-clock rate is what this run got. After training, every arm computes the held-out loss on bench/data/nordvik-support
eval.jsonl (48 examples) with the same function, so "unchanged within noise" can be checked against the
spread between `ours` and `ours-seed43` (same everything, another data order and adapter init).
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

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "nordvik-support"
MODEL = "bundled://smollm2-135m-instruct"
SYSTEM = "You are the support assistant of Nordvik Outfitters."

# arm: (what it is, Levers fields, training overrides); each lever on its own, then together
NAIVE = {"group_by_length": False, "answer_logits_only": False, "pass_tokens": None, "shared_prefix": False,
         "chunked_head": False}
ARMS: dict[str, tuple[str, dict, dict]] = {
    "hf-dynamic": ("HF Trainer + PEFT, DataCollatorForSeq2Seq, group_by_length (baseline)", {}, {}),
    "hf-random": ("HF Trainer + PEFT, DataCollatorForSeq2Seq, random order (the Trainer's default; baseline)",
                  {}, {}),
    "trl-sft": ("TRL SFTTrainer, completion-only loss, padding_free (baseline)", {}, {}),
    "trl-sft-padded": ("TRL SFTTrainer, completion-only loss, padded batches (baseline)", {}, {}),
    "hf-naive": ("extra: HF Trainer + PEFT, pad to 512, random order, full logits", {}, {}),
    "ours-pad-max": ("our loop in the naive layout (pad to 512, full logits)", {**NAIVE, "pad_to_max_length": True}, {}),
    "dynamic": ("pad to the longest of each micro-batch, random order", NAIVE, {}),
    "grouped": ("dynamic + length-grouped micro-batches", {**NAIVE, "group_by_length": True}, {}),
    "packed": ("packing (position ids, block-diagonal mask), random order", NAIVE, {"packing": True}),
    "answer-logits": ("dynamic + answer-only logits", {**NAIVE, "answer_logits_only": True}, {}),
    "grouped+answer": ("grouped + answer-only logits", {"group_by_length": True, "pass_tokens": None,
                                                        "shared_prefix": False, "chunked_head": False}, {}),
    "ours": ("random order + answer-only logits + passes <= 1/2 batch x 512 tokens, cut by length + shared "
             "prefix once + chunked output layer and loss (default)", {}, {}),
    "ours-no-chunk": ("the default without the chunked output layer and loss", {"chunked_head": False}, {}),
    "ours-no-prefix": ("the default without running the shared prompt prefix once per pass",
                       {"shared_prefix": False}, {}),
    "packed+answer": ("packing + answer-only logits + pass budget", {}, {"packing": True}),
    "ours+bf16": ("default + precision bf16 (bf16 weights, autocast)", {}, {"precision": "bf16"}),
    "ours+gc": ("default + gradient checkpointing", {}, {"gradientCheckpointing": True}),
    "ours-bf16-attention": ("the default with attention in bf16 under --precision bf16 (not in fp32)",
                            {"fp32_attention": False}, {}),
    "ours-pass-128": ("the default with a pass costed at 128 tokens (Levers.pass_overhead; on CPU 32)",
                      {"pass_overhead": 128}, {}),
    "ours-pass-32": ("the default with a pass costed at 32 tokens (Levers.pass_overhead; on CPU 32)",
                     {"pass_overhead": 32}, {}),
    "ours-pass-64": ("the default with a pass costed at 64 tokens (Levers.pass_overhead; on CPU 32)",
                     {"pass_overhead": 64}, {}),
    "ours-torch-dropout": ("the default with torch's dropout mask (bernoulli_) on the adapter input, not "
                           "Levers.cheap_dropout's", {"cheap_dropout": False}, {}),
    "ours-peft-branch": ("the default with PEFT's own adapter branch, not Levers.fused_branch's",
                         {"fused_branch": False}, {}),
    "ours-fused-norm": ("the default with the frozen RMSNorm as one autograd function (Levers.fused_norm)",
                        {"fused_norm": True}, {}),
    "ours-seed43": ("default, seed 43 (spread of the eval loss)", {}, {"seed": 43}),
    "ours-grouped": ("length-grouped, passes as few as fit (the default until the eighth session)",
                     {"group_by_length": True, "pass_overhead": None}, {}),
    "ours-greedy": ("the default with passes as few as fit (not cut by length)", {"pass_overhead": None}, {}),
}
BASELINES = ("hf-dynamic", "hf-random", "trl-sft", "trl-sft-padded")  # what a user would pick instead; ratios are against the faster one
# glibc raises its mmap threshold as large blocks are freed and then keeps freed memory in the heap: peak RSS
# then varies by up to 2 GB between identical runs (address-space layout decides how much). A fixed threshold
# gives every large tensor its own mapping, returned when freed, so peak RSS is the live peak, the same on
# every run. It costs speed (page faults), and unevenly: in bf16 on a Zen 5 core hf-dynamic runs at half its
# speed under it, ours at two thirds (docs/performance.md, eleventh session). --malloc default measures speed
# as a job's pod runs, with glibc's own threshold; the speed target is read that way.
MMAP_THRESHOLD = 128 * 1024
PRESETS = {
    "main": ["hf-dynamic", "hf-random", "trl-sft", "trl-sft-padded", "ours", "ours-no-prefix", "ours-no-chunk",
             "hf-naive"],
    "levers": ["hf-naive", "dynamic", "grouped", "packed", "answer-logits", "grouped+answer"],
    "levers2": ["hf-naive", "ours", "packed+answer", "ours+bf16", "ours+gc"],
    "layout": ["ours", "packed+answer"],  # grouping or packing, over half an epoch (--steps 25)
    # held-out loss after a whole epoch (--steps 50): length-grouped steps cost 0.08-0.10 on this data
    "order": ["trl-sft", "ours", "ours-seed43", "ours-grouped", "ours-greedy", "packed+answer"],
}


def job_spec(args, training: dict, output: str) -> dict:
    return {
        "model": {"uri": MODEL},
        "dataset": {"train": {"uri": str(DATA / "train.jsonl")}, "eval": {"uri": str(DATA / "eval.jsonl")},
                    "schema": "alpaca", "systemPrompt": SYSTEM, "maxSeqLength": args.max_len},
        "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": args.lora_dropout,
                                            "targetModules": ["all-linear"]}},
        "training": {"maxSteps": args.steps, "batchSize": args.batch_size, "gradientAccumulation": args.accumulation,
                     "learningRate": 1e-3, "warmupRatio": 0.1, "scheduler": "cosine", "seed": 42, **training},
        "evaluation": {"compareBase": False},
        "output": {"uri": output},
        "checkpoint": {"everySteps": 1_000_000},
        "resources": {"gpus": 0},
    }


def make_job(spec: dict):
    from kubetune_api.job import parse_job

    return parse_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                      "metadata": {"name": "bench", "namespace": "bench"}, "spec": spec})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- the arms, each in its own process ------------------------------------------------------------------
def run_ours(args, name: str, out: str) -> dict:
    from kubetune_trainer.evaluation import mean_loss
    from kubetune_trainer.recipe import Levers, LoRARecipe

    _, levers, training = ARMS[name]
    training = {"precision": args.precision, **training}  # never auto: bf16 on some CPUs, fp32 on others
    recipe = LoRARecipe(make_job(job_spec(args, training, out)), levers=Levers(**levers), work_dir=out)
    recipe.setup()
    ready_rss = rss_mb()
    cpu = time.process_time()
    recipe.train()
    cpu = time.process_time() - cpu
    peak = peak_rss_mb()
    steps = [e for e in recipe.log if e["event"] == "step"]
    loss = mean_loss(recipe.model, recipe.eval_encoded, recipe.tokenizer.pad_token_id, 8, recipe.device)
    options = recipe.loss_options  # which of the checked levers the start-up checks let run
    recipe.cleanup()
    return {"seconds": recipe.train_seconds, "cpu_seconds": cpu, "tokens": recipe.train_tokens, "steps": len(steps),
            "examples": args.steps * args.batch_size * args.accumulation, "peak_rss_mb": peak,
            "ready_rss_mb": ready_rss, "eval_loss": loss, "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
            "loss_options": options}


def run_hf(args, name: str, out: str) -> dict:
    """A baseline as a user would write it from the transformers, PEFT and TRL docs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.evaluation import mean_loss
    from kubetune_trainer.models import fetch_model, load_tokenizer
    from kubetune_trainer.prompting import PromptFormatter
    from kubetune_trainer.recipe import LoRARecipe

    # Data and tokens from the trainer's own reader and formatter, so every arm trains on identical ids.
    recipe = LoRARecipe(make_job(job_spec(args, {}, out)), work_dir=out)
    recipe.check_data()
    path = fetch_model(recipe.spec.model, recipe.storage)
    tokenizer = load_tokenizer(path, False)
    formatter = PromptFormatter(tokenizer, recipe.spec.dataset)
    train = [formatter.encode(e) for e in recipe.train_set]
    held_out = [formatter.encode(e) for e in recipe.eval_set]
    # --precision bf16: the base loaded in bf16 and bf16 autocast, as TRL's SFTConfig does by default and as
    # the transformers CPU docs advise where the CPU multiplies bf16 natively (AVX512-BF16, AMX); PEFT keeps
    # the adapter in fp32 either way.
    bf16 = args.precision == "bf16"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=args.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    common = dict(output_dir=out, per_device_train_batch_size=args.batch_size,
                  gradient_accumulation_steps=args.accumulation, max_steps=args.steps, learning_rate=1e-3,
                  lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0, max_grad_norm=1.0,
                  optim="adamw_torch", seed=42, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                  dataloader_num_workers=0, disable_tqdm=True, bf16=bf16)
    ready_rss = rss_mb()
    trainer, clock, counter = hf_trainer(name, model, tokenizer, train, args, common)
    trainer.train()
    peak = peak_rss_mb()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    loss = mean_loss(model, held_out, tokenizer.pad_token_id, 8, "cpu")
    return {"seconds": clock["end"] - clock["begin"], "cpu_seconds": clock["cpu_end"] - clock["cpu_begin"],
            "tokens": counter["tokens"], "steps": trainer.state.global_step,
            "examples": args.steps * args.batch_size * args.accumulation, "peak_rss_mb": peak,
            "ready_rss_mb": ready_rss, "eval_loss": loss, "first_loss": losses[0], "last_loss": losses[-1]}


def hf_trainer(name: str, model, tokenizer, train: list, args, common: dict):
    """(trainer, clock, token counter) for one of the HF-family arms."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    clock: dict[str, float] = {}
    counter = {"tokens": 0}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["begin"], clock["cpu_begin"] = time.monotonic(), time.process_time()

        def on_train_end(self, *a, **k):
            clock["end"], clock["cpu_end"] = time.monotonic(), time.process_time()

    def counting(cls):
        class Counting(cls):
            def compute_loss(self, model, inputs, *a, **k):  # non-padding tokens of the micro-batch
                mask = inputs.get("attention_mask")
                counter["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
                return super().compute_loss(model, inputs, *a, **k)
        return Counting

    if name.startswith("trl-sft"):
        from trl import SFTConfig, SFTTrainer

        rows = [{"input_ids": e.input_ids, "completion_mask": [int(t != -100) for t in e.labels]} for e in train]
        from datasets import Dataset

        # max_length None: the ids are already truncated to maxSeqLength by the trainer's formatter (TRL
        # refuses max_length with padding_free and no packing, as it would not enforce it).
        # gradient_checkpointing False: SFTConfig turns it on by default (TrainingArguments and ours do not),
        # which trades speed for memory; the other arms have it off.
        # bf16 as --precision says (in `common`): SFTConfig turns bf16 autocast on by default, but on a CPU
        # without AVX512-BF16 / AMX its bf16 matrix multiplies are emulated (this is why TRL did not finish on
        # CPU before), so every arm trains in fp32 unless --precision bf16. trl-sft-padded: padding_free off,
        # so TRL pads each micro-batch to its longest example.
        config = SFTConfig(**common, completion_only_loss=True, padding_free=name == "trl-sft", max_length=None,
                           gradient_checkpointing=False)
        return counting(SFTTrainer)(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                    processing_class=tokenizer, callbacks=[Clock()]), clock, counter
    if name in ("hf-dynamic", "hf-random"):
        rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
                for e in train]
        sampling = "group_by_length" if name == "hf-dynamic" else "random"
        targs = TrainingArguments(**common, remove_unused_columns=False, train_sampling_strategy=sampling)
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        return counting(Trainer)(model=model, args=targs, train_dataset=rows, data_collator=collator,
                                 callbacks=[Clock()]), clock, counter
    width, pad = args.max_len, tokenizer.pad_token_id  # hf-naive: everything padded to maxSeqLength
    rows = [{"input_ids": e.input_ids + [pad] * (width - len(e.input_ids)),
             "attention_mask": [1] * len(e.input_ids) + [0] * (width - len(e.input_ids)),
             "labels": e.labels + [-100] * (width - len(e.labels))} for e in train]
    targs = TrainingArguments(**common, remove_unused_columns=False)
    return counting(Trainer)(model=model, args=targs, train_dataset=rows, callbacks=[Clock()]), clock, counter


def worker(args) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-") as out:
        run = run_hf if args.worker in BASELINES + ("hf-naive",) else run_ours
        result = run(args, args.worker, out)
    print("RESULT " + json.dumps(result), flush=True)


# ---- the driver ---------------------------------------------------------------------------------------
def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spawn(args, arm: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", arm, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--accumulation", str(args.accumulation), "--max-len", str(args.max_len), "--threads", str(args.threads),
           "--precision", args.precision, "--lora-dropout", str(args.lora_dropout)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    before, started = load(), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"arm {arm} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    result.update(arm=arm, wall=time.monotonic() - started, load_before=before, load_after=load())
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
    print(f"  {arm}: {result['tokens_per_s']:.1f} tok/s ({result['tokens_per_cpu_s']:.1f} per CPU s), peak {result['peak_rss_mb']:.0f} MB, eval loss "
          f"{result['eval_loss']:.4f} ({result['wall']:.0f} s, load {before} -> {result['load_after']})", flush=True)
    return result


def table(results: list[dict]) -> str:
    """Ratios against the fastest baseline of the run (the first arm when no baseline ran)."""
    baselines = [r for r in results if r["arm"] in BASELINES] or results[:1]
    base = max(baselines, key=lambda r: r["tokens_per_s"])
    head = ("| arm | what | non-pad tokens | train s (CPU s) | tokens/s | x | tokens/CPU s | x | peak RSS MB | x "
            "| eval loss | load 1m |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        lines.append(
            f"| {r['arm']} | {ARMS[r['arm']][0]} | {r['tokens']} | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) "
            f"| {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} "
            f"| {r['tokens_per_cpu_s']:.1f} | {r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f} "
            f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['eval_loss']:.4f} "
            f"| {r['load_before'].split()[0]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=None, help="comma-separated arms, the first is the baseline: " + ", ".join(ARMS))
    parser.add_argument("--preset", choices=PRESETS, default="main",
                        help="main: baseline and ours; levers, levers2: each lever on its own (default --steps 4)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 6 for main, 4 for the lever presets)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per arm (default 1: on a shared machine a busy neighbour on the other "
                        "core stalls every multi-threaded kernel; use 2 on a quiet 2-core machine)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="every arm's precision (bf16: bf16 base weights and autocast, the adapter in fp32; "
                        "only worth it on a CPU with AVX512-BF16 or AMX)")
    parser.add_argument("--lora-dropout", type=float, default=0.05,
                        help="every arm's LoRA dropout (default 0.05, PEFT's examples; 0 is a job's own default, "
                        "where no arm draws a mask)")
    parser.add_argument("--malloc", choices=["fixed", "default"], default="fixed",
                        help="fixed (default): glibc's mmap threshold fixed at 128 KiB in every arm, for a peak RSS "
                        "that is the same run to run; default: glibc's own, as a job's pod runs (speed only: peak "
                        "RSS then varies by up to 2 GB between identical runs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (6 if args.preset == "main" else 4)
    if args.worker:
        return worker(args)
    arms = args.arms.split(",") if args.arms else PRESETS[args.preset]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs, {args.threads} torch thread(s) per arm; "
          f"load {load()}; {args.steps} steps x "
          f"{args.batch_size * args.accumulation} examples ({args.batch_size} x {args.accumulation}), "
          f"maxSeqLength {args.max_len}, {args.precision}, malloc {args.malloc}, LoRA dropout {args.lora_dropout}",
          flush=True)
    results = [spawn(args, arm) for arm in arms]
    print()
    print(table(results))
    print(f"\nratios against {max([r for r in results if r['arm'] in BASELINES] or results[:1], key=lambda r: r['tokens_per_s'])['arm']} (the fastest baseline of this run)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
