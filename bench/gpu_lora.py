"""GPU (issue 6, item 4): LoRA in bf16 and QLoRA in 4-bit on a random-init 7B-shaped Llama at sequence 2048.

    .venv/bin/python bench/gpu_lora.py                       # on a CUDA machine: 7B shape, LoRA then QLoRA
    .venv/bin/python bench/gpu_lora.py --shape tiny --seq 256 --matmul 512   # anywhere: checks the script

What it measures, each arm in a fresh process (so peak memory is per arm):

* the bf16 matrix-multiply peak of this device: the best of several 8192 x 8192 x 8192 bf16 matmuls
  (TFLOP/s), the denominator of MFU;
* lora: a Llama with Llama-2-7B's shape (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000;
  6.7 B parameters), random init, bf16 weights, the trainer's own adapter (`models.attach_adapter`: r 16,
  alpha 32, all linear layers) and loss (`loss.answer_loss`, every position an answer token), AdamW on the
  adapter; `--steps` timed optimizer steps of `--batch` sequences of `--seq` tokens after `--warmup`
  untimed ones. Tokens/s, MFU, peak memory (torch.cuda.max_memory_allocated, and the device's own
  reading of memory in use);
* qlora: the same shape saved once as safetensors and loaded by the trainer's `models.load_model` with
  the job's QLoRA settings (nf4, double quantization, bf16 compute), then the same steps.

MFU counts the FLOPs the step must do, not what a full fine-tune would: the base weights are frozen, so the
backward pass computes gradients for activations but not for the 6.7 B base weights. Per token: forward
2N + backward 2N over the N weights in linear layers (lm_head included, embeddings excluded), attention
(causal) 2 * S * d per layer forward and twice that backward, and 6 per adapter weight. The "6N" column is
the convention for full training (6N + 12 * L * d * S / 2), for comparison with published MFU figures.
"""

from __future__ import annotations

import argparse
import json
import os
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


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


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


def flops_per_token(model, cfg: dict, seq: int) -> tuple[float, float]:
    """(LoRA step FLOPs per token, the full-training 6N convention) for this model."""
    import torch

    linear = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            linear += module.in_features * module.out_features
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    attention = 2 * seq * d * layers  # causal QK^T and AV, forward
    lora = 4 * linear + 3 * attention + 6 * adapter
    full = 6 * linear + 12 * layers * d * seq / 2
    return lora, full


def build(cfg: dict, method: str, work: Path):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kubetune_api.spec import MethodSpec
    from kubetune_trainer.models import attach_adapter, load_model

    config = LlamaConfig(**cfg, max_position_embeddings=4096)
    spec = MethodSpec.model_validate({"type": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                                      **({"quantization": {"computeDtype": "bfloat16"}} if method == "qlora" else {})})
    if method == "lora":
        with torch.device(device()):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    else:  # 4-bit weights come from from_pretrained with a quantization config, as in a job
        path = work / "base"
        if not (path / "config.json").exists():
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
        model = load_model(path, spec, device(), torch.bfloat16)
    return attach_adapter(model, spec, gradient_checkpointing=False)


def run_arm(args) -> dict:
    import torch

    from kubetune_trainer.loss import answer_loss

    cfg = SHAPES[args.shape]
    model = build(cfg, args.worker, Path(args.work))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq + 1), generator=generator).to(device())
    batch = {"input_ids": ids[:, :-1], "attention_mask": torch.ones_like(ids[:, :-1]), "targets": ids[:, 1:]}

    def step() -> float:
        loss, count = answer_loss(model, batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item() / count

    for _ in range(args.warmup):
        step()
    synchronize()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * args.seq
    lora_flops, full_flops = flops_per_token(model, cfg, args.seq)
    result = {"arm": args.worker, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
              "tflops": lora_flops * tokens / seconds / 1e12, "tflops_6n": full_flops * tokens / seconds / 1e12,
              "losses": losses, "parameters": sum(p.numel() for p in model.parameters()),
              "adapter_parameters": sum(p.numel() for p in params)}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        result.update(peak_allocated_gb=torch.cuda.max_memory_allocated() / 2**30,
                      device_used_gb=(total - free) / 2**30, device=torch.cuda.get_device_name())
    else:
        import resource

        result.update(peak_allocated_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, device="cpu")
    return result


def spawn(args, arm: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", arm, "--shape", args.shape, "--seq", str(args.seq),
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--work", str(work)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "api"), str(REPO / "trainer-image"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"arm": arm, "error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="7b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arms", default="lora,qlora")
    parser.add_argument("--matmul", type=int, default=8192, help="matmul size for the bf16 peak")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        print("RESULT " + json.dumps(run_arm(args)), flush=True)
        return
    peak = matmul_peak(args.matmul)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; device {device()}; bf16 matmul peak {peak:.1f} TFLOP/s "
          f"({args.matmul}^3); shape {args.shape}, sequence {args.seq}, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        for arm in args.arms.split(","):
            r = spawn(args, arm, Path(work))
            results.append(r)
            if "error" in r:
                print(f"  {arm}: FAILED\n{r['error']}", flush=True)
                continue
            print(f"  {arm}: {r['tokens_per_s']:.0f} tokens/s, {r['tflops']:.1f} TFLOP/s = MFU {r['tflops'] / peak:.1%} "
                  f"(6N convention {r['tflops_6n'] / peak:.1%}), peak allocated {r['peak_allocated_gb']:.1f} GB, "
                  f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "matmul_peak_tflops": peak, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
