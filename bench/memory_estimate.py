"""The memory estimate (kubetune_api.memory) against peaks measured here, on CPU, and against published figures.

    .venv/bin/python bench/memory_estimate.py [--only NAME ...] [--json out.json]

Each shape is measured in a fresh process: a random-init Llama of that shape in fp32 (the trainer's CPU
precision), the trainer's own `attach_adapter` (PEFT LoRA, or bitsandbytes 4-bit + PEFT for QLoRA, with
gradient checkpointing when asked), AdamW over the adapter, and two optimizer steps of the trainer's loss
(`answer_loss`: logits only at answer positions) on one pass of `batch x seq` random tokens, every token an
answer (answer_fraction 1.0, the worst case the estimate assumes). Measured: the kernel's high-water mark
of the process's resident memory (VmHWM, restarted with /proc/self/clear_refs once the model is loaded and
adapted, so the load's transients do not count) minus its resident memory just before the model was built:
the weights that stay resident plus the peak of the training steps, the CPU's counterpart of
torch.cuda.max_memory_allocated. glibc's mmap threshold is fixed at 64 KiB so that freed tensors leave
resident memory at once. The estimate is the `allocated` figure (no CUDA context on CPU) of the same shape
and settings with precision fp32.

The published figures are torchtune's README table for Llama 3.1 8B on one RTX 4090 (batch 2, packed to
2048 tokens, activation checkpointing, torch.compile): LoRA 16.2 GiB, QLoRA 7.4 GiB peak per GPU; they are
compared with the estimate of the same settings under `TORCHTUNE`, the estimate's model of that stack
(no dropout, rank 8, bf16 base for QLoRA's unquantized weights, logits on every token as bf16 chunks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, replace

from kubetune_api.memory import BLOCK_LINEARS, GIB, ModelShape, Stack, Workload, estimate

# torchtune's single-device recipes as the estimate sees them: LoRA dropout 0, rank 8, the whole batch in
# one pass, logits for every token (bf16 chunks kept, one fp32 chunk at a time: ~3 bytes per entry).
TORCHTUNE = Stack(upcast_unquantized=False, logit_bytes=3.0, logits_on_answers_only=False)
LLAMA_31_8B = ModelShape(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256)
_TT = dict(rank=8, dropout=False, batch_size=2, seq_len=2048, gradient_checkpointing=True, pass_fraction=None,
           sharding="ddp")
PUBLISHED = {  # name: (workload, published peak GiB)
    "llama3.1-8b-lora": (Workload(method="lora", targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                           "down_proj"), **_TT), 16.2),
    "llama3.1-8b-qlora": (Workload(method="qlora", targets=BLOCK_LINEARS, **_TT), 7.4),
}
# Peaks measured on an NVIDIA H200 by bench/gpu_lora.py (2026-11-30, torch.cuda.max_memory_allocated, GiB;
# docs/performance.md): Llama-2-7B's shape in bf16, LoRA r 16 on every linear layer, no dropout. fullseq: one
# 2048-token sequence, every token an answer; sft: 8 examples of up to 2048 tokens, 30% answers, in the
# trainer's passes of at most half the micro-batch (one pass: Levers.pass_tokens None).
LLAMA_2_7B = ModelShape(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000)
_H200 = dict(rank=16, dropout=False, seq_len=2048, precision="bf16", sharding="ddp")
_SFT = dict(batch_size=8, answer_fraction=0.3)
H200_MEASURED = {  # name: (workload, measured peak GiB)
    "lora-fullseq": (Workload(method="lora", batch_size=1, **_H200), 25.82),
    "lora-sft": (Workload(method="lora", **_SFT, **_H200), 64.46),
    "lora-sft-one-pass": (Workload(method="lora", pass_fraction=None, **_SFT, **_H200), 115.68),
    "qlora-fullseq": (Workload(method="qlora", batch_size=1, **_H200), 21.02),
    "qlora-sft": (Workload(method="qlora", **_SFT, **_H200), 69.98),
}


@dataclass(frozen=True)
class Case:
    name: str
    shape: ModelShape
    work: Workload


def _cpu(**kw) -> Workload:
    return Workload(precision="fp32", accelerator=False, pass_fraction=None, sharding="ddp", **kw)


CASES = [
    Case("tiny-256", ModelShape(layers=4, hidden=256, intermediate=688, heads=4, kv_heads=2, vocab=8000),
         _cpu(batch_size=4, seq_len=256, rank=8)),
    Case("tiny-512", ModelShape(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4, vocab=16000),
         _cpu(batch_size=4, seq_len=512, rank=16)),
    Case("tiny-512-ckpt", ModelShape(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4, vocab=16000),
         _cpu(batch_size=4, seq_len=512, rank=16, gradient_checkpointing=True)),
    Case("tiny-1024-qv", ModelShape(layers=6, hidden=1024, intermediate=2752, heads=16, kv_heads=4, vocab=32000),
         _cpu(batch_size=2, seq_len=512, rank=16, targets=("q_proj", "v_proj"))),
    Case("tiny-512-qlora", ModelShape(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4, vocab=16000),
         _cpu(method="qlora", batch_size=4, seq_len=256, rank=16)),
    Case("smollm2-135m", ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152,
                                    tied_embeddings=True), _cpu(batch_size=4, seq_len=512, rank=16)),
]


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak() -> None:
    """Start the kernel's high-water mark of resident memory (VmHWM) again from the current resident size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def measure_here(shape: ModelShape, work: Workload, steps: int = 2) -> int:
    """Peak bytes the model and `steps` training steps add to this process (see the module docstring)."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kubetune_api.spec import MethodSpec
    from kubetune_trainer.loss import answer_loss
    from kubetune_trainer.models import attach_adapter, load_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied_embeddings,
                         max_position_embeddings=max(2048, work.seq_len))
    method = MethodSpec.model_validate({"type": work.method, "lora": {
        "r": work.rank, "alpha": 2 * work.rank, "dropout": 0.05 if work.dropout else 0.0,
        "targetModules": ["all-linear"] if tuple(work.targets) == BLOCK_LINEARS else list(work.targets)}})
    ids = torch.randint(0, shape.vocab, (work.batch_size, work.seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "targets": torch.cat([ids[:, 1:], torch.full((work.batch_size, 1), 5)], dim=1)}
    with tempfile.TemporaryDirectory() as folder:
        if work.method == "qlora":  # the trainer's QLoRA load (models.load_model) of a saved random model
            LlamaForCausalLM(config).save_pretrained(folder)
        base = _rss_now()
        if work.method == "qlora":
            model = load_model(folder, method, "cpu", torch.float32)
        else:
            model = LlamaForCausalLM(config)
    model = attach_adapter(model, method, work.gradient_checkpointing)
    model.train()
    _reset_peak()  # from here: training; what loading left resident (the weights) is counted, its transients not
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(steps):
        loss, tokens = answer_loss(model, batch)
        (loss / tokens).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return _peak() - base


def measure(case: Case) -> int:
    """`measure_here` in a fresh process, so earlier cases leave no high-water mark behind."""
    code = ("import json, sys; sys.path.insert(0, 'bench'); from memory_estimate import *; "
            "print(measure_here(ModelShape(**json.loads(sys.argv[1])), Workload(**json.loads(sys.argv[2]))))")
    # glibc keeps freed blocks below its (self-raising) mmap threshold in its heap, so resident memory would
    # hold on to every transient; a fixed 64 KiB threshold returns freed tensors to the system at once.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, "-c", code, case.shape.model_dump_json(),
                          json.dumps({**asdict(case.work), "targets": list(case.work.targets)})],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print(f"{'case':<22}{'estimate GiB':>14}{'measured GiB':>14}{'ratio':>8}")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        est = estimate(case.shape, case.work).allocated
        got = measure(case)
        rows.append({"case": case.name, "estimate": est, "measured": got, "ratio": est / got})
        print(f"{case.name:<22}{est / GIB:>14.3f}{got / GIB:>14.3f}{est / got:>8.2f}", flush=True)
    for name, (work, published) in PUBLISHED.items():
        est = estimate(LLAMA_31_8B, work, TORCHTUNE).allocated / GIB
        rows.append({"case": name, "estimate": est * GIB, "measured": published * GIB, "ratio": est / published})
        print(f"{name:<22}{est:>14.3f}{published:>14.3f}{est / published:>8.2f}  (published, torchtune)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()


__all__ = ["CASES", "PUBLISHED", "TORCHTUNE", "LLAMA_31_8B", "Case", "ModelShape", "Workload", "measure",
           "measure_here", "replace"]
