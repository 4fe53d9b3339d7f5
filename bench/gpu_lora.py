"""GPU (issue 18): the trainer's own step, LoRA bf16 and QLoRA nf4, on a random-init 7B-shaped Llama, against
Hugging Face Trainer + PEFT and TRL's SFTTrainer on the same shape and data.

    python bench/gpu_lora.py --json gpu.json              # on a CUDA machine: every arm below (~5 minutes)
    .venv/bin/python bench/gpu_lora.py --shape tiny --seq 256 --matmul 512   # anywhere: checks the script

Each arm runs in a fresh process (so peak memory is per arm), builds the model once and runs two workloads
on it, each as `--warmup` untimed optimizer steps on examples of their own, then one epoch of `--steps`
timed steps on the workload's timed examples: the same examples for every arm, each arm in its own order
(timing the steps after a warm-up within one epoch would time a different subset per arm, and with it a
different amount of padding):

* fullseq: one sequence of `--seq` random tokens per step, every position an answer (the shape the
  issue names; no padding, so dynamic padding and answer-only logits cannot help: the plain step);
* sft: 8 examples per step, lengths uniform in [seq/8, seq], the last 30% of each an answer (prompt
  tokens masked), as instruction data is: padding, answer-only logits and the trainer's pass budget matter.

Arms:
* ours-lora: the trainer's `attach_adapter` (the job defaults: r 16, alpha 32, all linear layers, no
  dropout) on a bf16 base, and its own `trainstep.train_step` (random-order `Schedule`, passes cut by length
  within half the micro-batch's padded tokens, answer-only chunked loss where its start-up check passes, bf16
  autocast, clipping, AdamW) through a minimal recipe object;
* hf-lora: transformers.Trainer + peft.get_peft_model, same LoRA config, bf16=True, DataCollatorForSeq2Seq
  (padding to the longest example, labels -100) and group_by_length: what the transformers/PEFT docs give;
* trl-lora: TRL's SFTTrainer on the same PEFT model, completion-only loss and padding_free, bf16=True
  (bench/gpu_baselines.py has both baselines' loops);
* ours-qlora / hf-qlora: the same with a 4-bit base (nf4, double quantization, bf16 compute), loaded by the
  trainer's `load_model` / by `from_pretrained(quantization_config=...)` + `prepare_model_for_kbit_training`
  (gradient checkpointing off in both, as in ours by default) from the same safetensors;
* qlora-grads: bench/gpu_qlora_grads.py, QLoRA adapter gradients against a LoRA reference on the
  dequantized weights, on a small shape.

Per workload: real (non-padding) tokens/s, MFU against the measured bf16 matmul peak, peak memory
(torch.cuda.max_memory_allocated since the workload began), and for ours the memory estimate
(kubetune_api.memory, the preflight's) of the same settings. MFU counts the FLOPs the step must do, the
same for every arm: the frozen linear layers forward and input-gradient (4 per weight and token; the output
layer only where an answer is predicted), causal attention (2 x S x d per token and layer forward, twice
that backward) and 6 per adapter weight and token. The 6N column is the full-training convention.

On a freshly started H200 machine every arm ran 20-25% slower for the first two to three minutes
(docs/performance.md, seventh session): compare arms run after that, or repeat the first arm at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    # Llama-2-7B
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000},
    # a few MB: for checking the script on any machine
    "tiny": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 1000},
}
ARMS = ("ours-lora", "hf-lora", "trl-lora", "qlora-grads", "ours-qlora", "hf-qlora")
# Also runnable, ours with a lever off by a suffix (ours-lora-whole-nochunk, ...): -whole, Levers.pass_tokens
# None (each micro-batch in one forward pass, as HF runs it; the default splits it at half its padded tokens
# to bound memory); -nochunk, Levers.chunked_head False; -packed, training.packing; -grouped, length-grouped
# micro-batches with passes as few as fit (the default until the eighth session: grouped steps cost held-out
# loss, docs/performance.md, seventh session).
LORA = {"r": 16, "alpha": 32}  # the job's defaults (dropout 0, all linear layers)
SFT_BATCH, SFT_ANSWER = 8, 0.3


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_peak(n: int, repeats: int = 20) -> float:
    """Best bf16 matmul rate on this device, TFLOP/s."""
    import torch

    a = torch.randn(n, n, device=device(), dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device(), dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


# ---- workloads ----------------------------------------------------------------------------------------
def workload(name: str, seq: int, vocab: int, steps: int, seed: int = 0) -> tuple[int, list]:
    """(micro-batch size, examples as the trainer's Encoded) for `steps` optimizer steps; a seed of its own
    for the warm-up examples."""
    from kubetune_trainer.prompting import Encoded

    rng = random.Random(seed)
    if name == "fullseq":
        batch, lengths, answer = 1, [seq] * steps, 1.0
    else:
        batch, answer = SFT_BATCH, SFT_ANSWER
        lengths = [rng.randint(seq // 8, seq) for _ in range(steps * batch)]
    examples = []
    for length in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length - max(2, int(answer * length)) if answer < 1 else 0
        examples.append(Encoded(input_ids=ids, labels=[-100] * prompt + ids[prompt:], truncated=False, length=length))
    return batch, examples


def step_flops(shape: dict, lengths: list[int], answers: list[int], adapter: int) -> tuple[float, float]:
    """(FLOPs a LoRA step must do, the full-training 6N convention) for sequences of these lengths."""
    d, i, layers, vocab = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    body = layers * (2 * d * d + 2 * d * d * kv // heads + 3 * d * i)
    lora = full = 0.0
    for length, answered in zip(lengths, answers, strict=True):
        attention = 2 * length * d * layers * length  # causal QK^T and AV, forward, whole sequence
        lora += 4 * body * length + 4 * vocab * d * answered + 3 * attention + 6 * adapter * length
        full += 6 * (body + vocab * d) * length + 3 * attention
    return lora, full


def measured(shape: dict, name: str, timed: list[tuple[int, int]], seconds: float, adapter: int, peak: float) -> dict:
    """A workload's figures from the (length, answer positions) of each example the timed steps trained on."""
    lengths, answers = [t[0] for t in timed], [t[1] for t in timed]
    lora, full = step_flops(shape, lengths, answers, adapter)
    return {"workload": name, "tokens": sum(lengths), "answer_tokens": sum(answers), "seconds": seconds,
            "tokens_per_s": sum(lengths) / seconds, "tflops": lora / seconds / 1e12,
            "tflops_6n": full / seconds / 1e12, "peak_allocated_gb": peak}


# ---- models -------------------------------------------------------------------------------------------
def method(kind: str):
    from kubetune_api.spec import MethodSpec

    quant = {"quantization": {"computeDtype": "bfloat16"}} if kind == "qlora" else {}
    return MethodSpec.model_validate({"type": kind, "lora": LORA, **quant})


def random_base(shape: dict, path: Path | None = None):
    """The random-init bf16 base on the device (seeded: every arm gets the same weights); saved as
    safetensors to `path` when given, for the 4-bit arms."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, max_position_embeddings=4096),
                                                 dtype=torch.bfloat16)
    if path is not None and not (path / "config.json").exists():
        model.save_pretrained(path)
    return model


def quantized_base(path: Path, ours: bool):
    import torch

    if ours:
        from kubetune_trainer.models import load_model

        return load_model(path, method("qlora"), device(), torch.bfloat16)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.bfloat16,
                                                 device_map={"": device()})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def adapted(model, ours: bool, kind: str):
    if ours:
        from kubetune_trainer.models import attach_adapter

        return attach_adapter(model, method(kind), gradient_checkpointing=False)
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


# ---- the two training loops ---------------------------------------------------------------------------
def levers(arm: str):
    """The trainer's levers for an ours arm: the defaults, changed by its name's suffixes."""
    from kubetune_trainer.recipe import Levers

    change = {"whole": {"pass_tokens": None}, "nochunk": {"chunked_head": False}, "packed": {},
              "grouped": {"group_by_length": True, "pass_overhead": None}}
    return Levers(**{k: v for suffix in arm.split("-")[2:] for k, v in change[suffix].items()})


def packed(arm: str) -> bool:
    """Whether an ours arm packs its passes (training.packing: rows of whole examples with per-example
    position ids), by its -packed suffix."""
    return "packed" in arm.split("-")[2:]


def run_ours(model, batch: int, examples: list, args) -> tuple[float, list, dict]:
    """(seconds, (length, answers) of each example, the loss options the start-up checks chose) of one epoch
    of `examples` through trainstep.train_step on a minimal recipe."""
    from types import SimpleNamespace

    import torch

    from kubetune_trainer import trainstep
    from kubetune_trainer.batching import Schedule
    from kubetune_trainer.distributed import ProcessGroup
    from kubetune_trainer.preflight import answer_tokens

    dtype = torch.bfloat16
    recipe = SimpleNamespace(
        model=model, train_model=model, train_encoded=examples, dist=ProcessGroup(),
        levers=levers(args.worker),
        device=device(), dtype=dtype, sharding="ddp", tokenizer=SimpleNamespace(pad_token_id=0),
        spec=SimpleNamespace(training=SimpleNamespace(max_grad_norm=1.0, packing=packed(args.worker),
                                                      gradient_checkpointing=False),
                             dataset=SimpleNamespace(max_seq_length=args.seq)),
        stop=SimpleNamespace(requested=False), train_tokens=0, last_step_tokens=0, last_grad_norm=0.0,
        scaler=torch.amp.GradScaler(device(), enabled=False), scheduler=SimpleNamespace(step=lambda: None))
    recipe.filler = trainstep.filler(examples)
    recipe.share_prefix = trainstep.shares_prefix(recipe)
    recipe.chunked_head = trainstep.chunks_head(recipe)
    recipe.loss_options = {"share_prefix": recipe.share_prefix, "chunked_head": recipe.chunked_head}
    recipe.pass_budget = trainstep.pass_budget(recipe.levers.pass_tokens, batch, args.seq)
    recipe.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    schedule = Schedule(len(examples), batch, 1, 0, max_steps=len(examples) // batch,
                        lengths=[len(e.input_ids) for e in examples], group_by_length=recipe.levers.group_by_length)
    synchronize()
    start, timed = time.perf_counter(), []
    for step in schedule.steps():
        trainstep.train_step(recipe, step.micro_batches)
        timed += [(len(examples[i].input_ids), answer_tokens(examples[i])) for mb in step.micro_batches for i in mb]
    synchronize()
    return time.perf_counter() - start, timed, recipe.loss_options


def loop(arm: str):
    """The training loop an arm runs: ours, or a baseline's (bench/gpu_baselines.py)."""
    import gpu_baselines

    return {"ours": run_ours, "hf": gpu_baselines.run_hf, "trl": gpu_baselines.run_trl}[arm.split("-")[0]]


def memory_estimate(kind: str, name: str, args) -> float:
    """The preflight's estimate (kubetune_api.memory) of torch's allocated peak, GiB, for this arm and workload."""
    from kubetune_api.memory import GIB, ModelShape, Workload, estimate

    shape = ModelShape.from_config(SHAPES[args.shape])
    batch, answer = (1, 1.0) if name == "fullseq" else (SFT_BATCH, SFT_ANSWER)
    work = Workload(method=kind, rank=LORA["r"], dropout=False, batch_size=batch, seq_len=args.seq,
                    precision="bf16", answer_fraction=answer, accelerator=device() == "cuda", sharding="ddp",
                    pass_fraction=levers(args.worker).pass_tokens)
    return estimate(shape, work).allocated / GIB


def run_arm(args) -> dict:
    import torch

    ours, kind = args.worker.startswith("ours"), args.worker.split("-")[1]
    cfg = SHAPES[args.shape]
    base = Path(args.work) / "base"
    load_start = time.perf_counter()
    if kind == "qlora" and not (base / "config.json").exists():
        random_base(cfg, base)  # run alone: no save-base process wrote it
    model = random_base(cfg) if kind == "lora" else quantized_base(base, ours)
    model = adapted(model, ours, kind)
    model.train()
    result = {"arm": args.worker, "load_seconds": time.perf_counter() - load_start,
              "adapter_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "device": device(), "workloads": []}
    for name in args.workloads.split(","):
        batch, examples = workload(name, args.seq, cfg["vocab_size"], args.steps)
        reset_peak()
        try:
            if args.warmup:
                loop(args.worker)(model, batch, workload(name, args.seq, cfg["vocab_size"], args.warmup, 1)[1], args)
            seconds, timed, options = loop(args.worker)(model, batch, examples, args)
        except torch.OutOfMemoryError as err:  # a result too: this arm cannot train this workload here
            result["workloads"].append({"workload": name, "error": f"out of memory: {str(err)[:200]}",
                                        "peak_allocated_gb": peak_gb()})
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        row = measured(cfg, name, timed, seconds, result["adapter_parameters"], peak_gb())
        if ours:
            row.update(loss_options=options, pass_tokens=levers(args.worker).pass_tokens,
                       estimate_gb=memory_estimate(kind, name, args))
        result["workloads"].append(row)
    if device() == "cuda":
        result["device"] = torch.cuda.get_device_name()
    return result


# ---- driver -------------------------------------------------------------------------------------------
def spawn(args, arm: str, work: Path) -> dict:
    script = REPO / "bench" / ("gpu_qlora_grads.py" if arm == "qlora-grads" else "gpu_lora.py")
    cmd = [sys.executable, str(script), "--worker", arm, "--shape", args.shape, "--seq", str(args.seq),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--work", str(work),
           "--workloads", args.workloads]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "api"), str(REPO / "trainer-image"),
                                                         os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.arm_timeout)
    except subprocess.TimeoutExpired as err:
        return {"arm": arm, "error": f"timed out after {args.arm_timeout} s\n{(err.stderr or b'')[-2000:]}"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"arm": arm, "error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(line.removeprefix("RESULT "))


def report(r: dict, peak: float) -> None:
    if "error" in r:
        print(f"{r['arm']}: FAILED\n{r['error']}", flush=True)
        return
    if "checks" in r:
        for c in r["checks"]:
            print(f"{r['arm']}: {c}", flush=True)
        return
    print(f"{r['arm']} ({r['device']}, adapter {r['adapter_parameters'] / 1e6:.1f} M, built in "
          f"{r['load_seconds']:.0f} s):", flush=True)
    for w in r["workloads"]:
        if "error" in w:
            print(f"  {w['workload']}: FAILED at {w['peak_allocated_gb']:.1f} GiB: {w['error']}", flush=True)
            continue
        extra = (f", estimate {w['estimate_gb']:.1f} GiB, passes {w['pass_tokens']}, loss {w['loss_options']}"
                 if "estimate_gb" in w else "")
        print(f"  {w['workload']}: {w['tokens_per_s']:.0f} tokens/s, {w['tflops']:.1f} TFLOP/s = MFU "
              f"{w['tflops'] / peak:.1%} (6N {w['tflops_6n'] / peak:.1%}), peak allocated "
              f"{w['peak_allocated_gb']:.2f} GiB{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="7b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--workloads", default="fullseq,sft")
    parser.add_argument("--matmul", type=int, default=8192, help="matmul size for the bf16 peak")
    parser.add_argument("--arm-timeout", type=int, default=300)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        if args.worker == "save-base":  # the 4-bit arms' safetensors, written before any arm is timed
            random_base(SHAPES[args.shape], Path(args.work) / "base")
            print("RESULT " + json.dumps({"arm": "save-base"}), flush=True)
            return
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return
    peak = matmul_peak(args.matmul)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; device {device()}; bf16 matmul peak {peak:.1f} TFLOP/s "
          f"({args.matmul}^3); shape {args.shape}, sequence {args.seq}, {args.steps} timed steps after "
          f"{args.warmup} on other examples", flush=True)
    arms = args.arms.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        # The 4-bit arms load the base from safetensors, written by a process of its own first: in all three
        # H200 runs the arm that had just written the 13.5 GB was the slowest on the 8-example workload
        # (docs/performance.md), so no arm's timing may include the write.
        if any(a.split("-")[1:2] == ["qlora"] for a in arms):
            saved = spawn(args, "save-base", Path(work))
            if "error" in saved:
                report(saved, peak)
        for arm in arms:
            results.append(spawn(args, arm, Path(work)))
            report(results[-1], peak)
            if args.json:  # after every arm: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({"args": vars(args), "matmul_peak_tflops": peak,
                                                       "results": results}, indent=2))


if __name__ == "__main__":
    main()
