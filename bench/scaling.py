"""Data-parallel scaling (issue 13): tokens/s of `kubetune train` on 1, 2 and 4 processes (torchrun, gloo on
CPU) with the same global batch, the same steps and the same data, and what share of a step the adapter's
gradient all-reduce takes.

    .venv/bin/python bench/scaling.py                    # 1, 2, 4 processes, 12 steps of 8 examples
    .venv/bin/python bench/scaling.py --procs 1,2 --steps 20 --json out.json

Every arm runs the real trainer CLI (`kubetune train`, under `torchrun --standalone --nproc-per-node=N -m
kubetune_trainer train` for N > 1) on a random-init Llama of 4 layers, hidden 256 (tests/fixtures/tiny_model.py,
7.9 M parameters), LoRA r 16 on all linear layers, on bench/data/nordvik-support (400 training examples),
global batch 8 (batchSize 8 / N per process, as Hugging Face's per_device_train_batch_size), AdamW lr 1e-3.
The baseline is the one-process arm of the same run. Reported per arm:

* tokens/s: non-padding tokens trained on per wall-clock second, from the train log's step times (steps 3
  to the last; the first two warm up), and the speed-up and scaling efficiency (speed-up / N) against 1;
* the final loss and the largest difference of the adapter from the one-process adapter (same global
  batch, so both should agree to float rounding);
* all-reduce: the time to all-reduce one float32 buffer of the adapter's size among the N processes
  (the volume DDP sends per step; mean of 30 after 5 warm-ups), and that time as a share of a step.

Each process runs one torch thread (it stands for one device), so N processes use N cores: on a machine
with fewer idle cores than processes the speed-up is capped by the cores, and CPU scaling measures the
overheads (sharding, padding per rank, the all-reduce, an idle rank's zero-weight pass), not a GPU's
speed-up. Multi-GPU numbers are not measured here.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "nordvik-support" / "train.jsonl"
GLOBAL_BATCH = 8


def manifest(model: Path, out: Path, procs: int, steps: int) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": f"scale-{procs}", "namespace": "bench"},
            "spec": {"model": {"uri": str(model)},
                     "dataset": {"train": {"uri": str(DATA)}, "evalSplit": 0.05, "maxSeqLength": 512},
                     "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
                     "training": {"maxSteps": steps, "batchSize": GLOBAL_BATCH // procs, "learningRate": 1e-3,
                                  "seed": 7, "precision": "fp32"},
                     "evaluation": {"maxSamples": 1, "compareBase": False, "generation": {"maxNewTokens": 1}},
                     "checkpoint": {"everySteps": 10_000, "keep": 1},
                     "output": {"uri": str(out)}, "resources": {"gpus": 0}}}


def run_arm(model: Path, work: Path, procs: int, steps: int) -> dict:
    from kubetune_api.job import parse_job

    doc = manifest(model, work / "out", procs, steps)
    config = work / f"scale-{procs}.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO), "KUBETUNE_CONFIG": str(config), "KUBETUNE_WORK_DIR": str(work),
           "KUBETUNE_TERMINATION_LOG": str(work / f"term-{procs}"),
           "OMP_NUM_THREADS": "1"}  # one thread per process: each process stands for one device
    argv = [sys.executable, "-m", "kubetune_trainer", "train"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
        "-m", "kubetune_trainer", "train"]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
    root = parse_job(doc).artifact_root()
    with open(f"{root}train-log.jsonl") as f:
        log = [e for e in map(json.loads, f) if e["event"] == "step"]
    timed = log[2:]
    seconds = timed[-1]["time"] - log[1]["time"]
    return {"procs": procs, "tokensPerSecond": sum(e["tokens"] for e in timed) / seconds,
            "stepSeconds": seconds / len(timed), "finalLoss": log[-1]["loss"], "root": root}


def allreduce_seconds(procs: int, numel: int) -> float:
    if procs == 1:
        return 0.0
    out = tempfile.mktemp(suffix=".json")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
            __file__, "--allreduce-worker", str(numel), "--out", out]
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(Path(out).read_text())["seconds"]


def _allreduce_worker(numel: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    buffer = torch.ones(numel)
    for _ in range(5):
        dist.all_reduce(buffer)
    dist.barrier()
    began = time.perf_counter()
    for _ in range(30):
        dist.all_reduce(buffer)
    seconds = (time.perf_counter() - began) / 30
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"seconds": seconds}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", default=None)
    parser.add_argument("--allreduce-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker is not None:
        return _allreduce_worker(args.allreduce_worker, args.out)
    sys.path.insert(0, str(REPO / "tests"))
    from safetensors.torch import load_file

    from fixtures.tiny_model import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="kubetune-scaling-"))
    model = make_tiny_model(work / "model", layers=4, hidden=256)
    arms = [run_arm(model, work, int(n), args.steps) for n in args.procs.split(",")]
    base = arms[0]
    reference = load_file(f"{base['root']}adapter/adapter_model.safetensors")
    numel = sum(t.numel() for t in reference.values())
    print(f"global batch {GLOBAL_BATCH}, {args.steps} steps, adapter {numel:,} parameters, "
          f"{os.cpu_count()} CPUs; baseline: {base['procs']} process in the same run")
    print(f"{'procs':>5} {'tokens/s':>9} {'speed-up':>9} {'efficiency':>10} {'final loss':>11} "
          f"{'adapter diff':>12} {'all-reduce ms':>13} {'of a step':>9}")
    for arm in arms:
        adapter = load_file(f"{arm['root']}adapter/adapter_model.safetensors")
        arm["adapterMaxDiff"] = max(float((adapter[k] - reference[k]).abs().max()) for k in reference)
        arm["speedup"] = arm["tokensPerSecond"] / base["tokensPerSecond"]
        arm["efficiency"] = arm["speedup"] / arm["procs"] * base["procs"]
        arm["allreduceSeconds"] = allreduce_seconds(arm["procs"], numel)
        arm["allreduceShare"] = arm["allreduceSeconds"] / arm["stepSeconds"]
        print(f"{arm['procs']:>5} {arm['tokensPerSecond']:>9.0f} {arm['speedup']:>8.2f}x {arm['efficiency']:>9.0%} "
              f"{arm['finalLoss']:>11.6f} {arm['adapterMaxDiff']:>12.1e} {arm['allreduceSeconds'] * 1e3:>13.2f} "
              f"{arm['allreduceShare']:>9.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(arms, indent=2))


if __name__ == "__main__":
    main()
