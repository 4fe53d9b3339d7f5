"""The trainer on several processes (torchrun, gloo on CPU): the same adapter, losses, gradient norms and
evaluation as one process with the same global batch; one writer; typed exit codes through the pod's
agent; SIGTERM reaching every rank; and checkpoints that resume with a different number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.adapters import assert_same_adapter, assert_trained
from kubetune_api.job import parse_job

from .conftest import REPO, manifest, sku_rows, tiny_spec, write_jsonl, write_manifest

ONE_PROCESS = [sys.executable, "-m", "kubetune_trainer", "train"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "kubetune_trainer", "train"]  # exactly what the `torchrun` command runs
KUBETUNE = str(Path(sys.executable).parent / "kubetune")  # the console script, the pod's command
AGENT_ENV = {"PET_NPROC_PER_NODE": "2", "PET_STANDALONE": "1"}  # what the operator sets on a gpus: 2 pod


def job(tmp_path: Path, tiny_model, name: str, batch: int, method: dict | None = None, **training):
    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / "out"),
                     training={"batchSize": batch, "maxSteps": 6, **training},
                     evaluation={"maxSamples": 3, "generation": {"maxNewTokens": 4}})
    if method:
        spec["method"] = method
    doc = manifest(spec, name=name)
    return write_manifest(tmp_path / f"{name}.yaml", doc), parse_job(doc).artifact_root()


def env_for(tmp_path: Path, config: Path, extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "KUBETUNE_CONFIG": str(config),
            "KUBETUNE_TERMINATION_LOG": str(tmp_path / f"{config.stem}.term"), "KUBETUNE_WORK_DIR": str(tmp_path),
            **(extra or {})}


def run(argv: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def adapter(root: str) -> dict:
    from safetensors.torch import load_file

    return load_file(f"{root}adapter/adapter_model.safetensors")


def steps(root: str) -> list[dict]:
    with open(f"{root}train-log.jsonl") as f:
        return [e for e in map(json.loads, f) if e["event"] == "step"]


def test_two_processes_train_the_adapter_one_process_trains(tmp_path, tiny_model):
    """batchSize is per device: 2 processes x 2 equals 1 process x 4, step for step. 9 training examples
    make every third step a single example, so one rank has nothing of its own in those steps."""
    one_cfg, one_root = job(tmp_path, tiny_model, "one", batch=4)
    two_cfg, two_root = job(tmp_path, tiny_model, "two", batch=2)
    one = run(ONE_PROCESS, env_for(tmp_path, one_cfg))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(TORCHRUN, env_for(tmp_path, two_cfg))
    assert two.returncode == 0, two.stderr[-3000:]

    one_steps, two_steps = steps(one_root), steps(two_root)
    assert [e["step"] for e in two_steps] == list(range(1, 7))
    for a, b in zip(one_steps, two_steps, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["tokens"] == b["tokens"], (a, b)
        # Adam's update hardly changes when every gradient is doubled, so gradients summed over the ranks
        # instead of averaged would leave the adapter almost equal: the norm is what shows it.
        assert abs(a["gradNorm"] - b["gradNorm"]) <= 1e-4 * a["gradNorm"], (a, b)
    assert_same_adapter(adapter(one_root), adapter(two_root))
    assert_trained(adapter(two_root))

    metrics = [json.loads(Path(f"{root}metrics.json").read_text()) for root in (one_root, two_root)]
    for side in ("tuned", "base"):
        assert abs(metrics[0][side]["evalLoss"] - metrics[1][side]["evalLoss"]) < 1e-4
    predictions = [Path(f"{root}predictions.jsonl").read_text() for root in (one_root, two_root)]
    assert predictions[0] == predictions[1], "generation sharded over ranks returns the one-process answers"

    with open(f"{two_root}train-log.jsonl") as f:
        assert next(json.loads(line) for line in f)["worldSize"] == 2
    done = [line for line in two.stdout.splitlines() if '"stage":"done"' in line]
    assert len(done) == 1, "progress comes from rank 0 only"
    result = json.loads((tmp_path / "two.term").read_text())
    assert result["ok"] and result["artifacts"]["adapter"].endswith("adapter/")


def test_the_pods_agent_keeps_the_workers_typed_exit_code(tmp_path, tiny_model):
    """`kubetune train` with torchrun's PET_* variables runs the workers itself; an invalid record fails the
    pod with DataInvalid (exit 11, not retried), not torchrun's generic exit code 1."""
    config, _ = job(tmp_path, tiny_model, "bad", batch=2)
    write_jsonl(tmp_path / "train.jsonl", [*sku_rows(), '{"instruction": "a row cut short'])
    result = run([KUBETUNE, "train"], env_for(tmp_path, config, AGENT_ENV))
    assert result.returncode == 11, result.stderr[-3000:]
    message = json.loads((tmp_path / "bad.term").read_text())
    assert message["reason"] == "DataInvalid" and "train.jsonl" in message["message"]


def _wait_for_checkpoint(proc: subprocess.Popen, root: str) -> None:
    deadline = time.monotonic() + 300
    while not list(Path(root, "checkpoints").glob("step-*/COMPLETE")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.01)


def test_sigterm_stops_every_rank_after_one_step_and_one_process_resumes(tmp_path, tiny_model):
    """The kubelet signals the pod's first process only: the agent passes SIGTERM to both ranks, which
    agree on the step to stop after; rank 0 checkpoints it and the pod exits retryable. The next attempt,
    on one process, continues with the same global batch and ends where an uninterrupted run ends."""
    long = {"maxSteps": 40}
    config, root = job(tmp_path, tiny_model, "stopped", batch=2, **long)
    ref_cfg, ref_root = job(tmp_path, tiny_model, "straight", batch=4, **long)
    first = subprocess.Popen([KUBETUNE, "train"], env=env_for(tmp_path, config, AGENT_ENV), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(first, root)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 15, stderr[-3000:]
    result = json.loads((tmp_path / "stopped.term").read_text())
    assert not result["ok"] and "stopped by SIGTERM after step" in result["message"]
    stopped_at = int(result["message"].split("after step ")[1].split()[0])
    saved = sorted(int(p.parent.name.removeprefix("step-")) for p in Path(root, "checkpoints").glob("step-*/COMPLETE"))
    assert saved[-1] == stopped_at and stopped_at < 40

    second = run(ONE_PROCESS, env_for(tmp_path, config))
    assert second.returncode == 0, second.stderr[-3000:]
    reference = run(ONE_PROCESS, env_for(tmp_path, ref_cfg))
    assert reference.returncode == 0, reference.stderr[-3000:]
    log = steps(root)
    assert [e["step"] for e in log] == list(range(1, 41)), "every step once across the two attempts"
    assert_same_adapter(adapter(root), adapter(ref_root))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(log, steps(ref_root), strict=True)) < 1e-4


def test_a_killed_one_process_run_resumes_on_two(tmp_path, tiny_model):
    long = {"maxSteps": 30}
    config, root = job(tmp_path, tiny_model, "killed", batch=2, **long)
    first = subprocess.Popen(ONE_PROCESS, env=env_for(tmp_path, config), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(first, root)
    first.kill()
    first.wait()
    assert not Path(root, "_SUCCESS").exists()
    second = run(TORCHRUN, env_for(tmp_path, config))
    assert second.returncode == 0, second.stderr[-3000:]
    # The reference is the uninterrupted job itself (same spec, one process): the global batch stays 2.
    ref_cfg, ref_root = job(tmp_path / "ref", tiny_model, "killed", batch=2, **long)
    reference = run(ONE_PROCESS, env_for(tmp_path / "ref", ref_cfg))
    assert reference.returncode == 0, reference.stderr[-3000:]
    with open(f"{root}train-log.jsonl") as f:
        events = [json.loads(line) for line in f]
    assert [e["worldSize"] for e in events if e["event"] == "start"] == [1, 2]
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 31))
    assert_same_adapter(adapter(root), adapter(ref_root))


def test_fsdp_on_two_processes_trains_what_one_process_trains_and_its_checkpoint_resumes_on_one(tmp_path, tiny_model):
    """training.sharding fsdp (FSDP2: base and adapter split across the ranks): the same adapter, losses,
    gradient norms (the check that catches gloo reducing FSDP2 gradients by sum instead of average) and
    evaluation as one process with the same global batch. Its step-3 checkpoint holds whole tensors: one
    process resumes from it and ends with the same adapter."""
    one_cfg, one_root = job(tmp_path, tiny_model, "one", batch=4)
    two_cfg, two_root = job(tmp_path, tiny_model, "sharded", batch=2, sharding="fsdp")
    one = run(ONE_PROCESS, env_for(tmp_path, one_cfg))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(TORCHRUN, env_for(tmp_path, two_cfg))
    assert two.returncode == 0, two.stderr[-3000:]
    for a, b in zip(steps(one_root), steps(two_root), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["gradNorm"] - b["gradNorm"]) <= 1e-4 * a["gradNorm"], (a, b)
    assert_same_adapter(adapter(one_root), adapter(two_root))
    predictions = [Path(f"{root}predictions.jsonl").read_text() for root in (one_root, two_root)]
    assert predictions[0] == predictions[1]

    import torch

    saved = torch.load(f"{two_root}checkpoints/step-3/adapter.pt")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in adapter_params(tiny_model).items()}
    for name in ("_SUCCESS", "adapter/adapter_model.safetensors"):
        Path(f"{two_root}{name}").unlink()
    again = run(ONE_PROCESS, env_for(tmp_path, two_cfg))
    assert again.returncode == 0, again.stderr[-3000:]
    with open(f"{two_root}train-log.jsonl") as f:
        assert [e["step"] for e in map(json.loads, f) if e["event"] == "resume"] == [3]
    assert_same_adapter(adapter(one_root), adapter(two_root))


def adapter_params(tiny_model) -> dict:
    """The trainable parameters of the tests' LoRA shape on the tiny model, as one process names them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_packing_and_gradient_accumulation_per_rank_keep_the_one_process_result(tmp_path, tiny_model):
    """training.packing and gradientAccumulation work per rank: 2 processes x batchSize 1 x 2 micro-batches,
    packed, train what 1 process x batchSize 2 x 2 trains."""
    packed = {"packing": True, "gradientAccumulation": 2, "maxSteps": 4}
    one_cfg, one_root = job(tmp_path, tiny_model, "packed-one", batch=2, **packed)
    two_cfg, two_root = job(tmp_path, tiny_model, "packed-two", batch=1, **packed)
    for argv, config in ((ONE_PROCESS, one_cfg), (TORCHRUN, two_cfg)):
        done = run(argv, env_for(tmp_path, config))
        assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(steps(one_root), steps(two_root), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["gradNorm"] - b["gradNorm"]) <= 1e-4 * a["gradNorm"], (a, b)
    assert_same_adapter(adapter(one_root), adapter(two_root))


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_qlora_on_two_processes_trains_what_one_process_trains(tmp_path, tiny_model, sharding):
    """A 4-bit base (bitsandbytes on CPU): under ddp every rank holds all of it and DDP all-reduces the
    adapter's gradients; under fsdp (FSDP2) the 4-bit weights, stored in the compute dtype, are split across
    the ranks with the adapter. Both train what one process trains with the same global batch."""
    qlora = {"type": "qlora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "quantization": {"computeDtype": "float32"}}
    configs = [job(tmp_path, tiny_model, name, batch=batch, method=qlora, maxSteps=4, sharding=sharding)
               for name, batch in (("q-one", 4), ("q-two", 2))]
    for argv, (config, _) in zip((ONE_PROCESS, TORCHRUN), configs, strict=True):
        done = run(argv, env_for(tmp_path, config))
        assert done.returncode == 0, done.stderr[-3000:]
    (_, one_root), (_, two_root) = configs
    with open(f"{two_root}train-log.jsonl") as f:
        assert next(json.loads(line) for line in f)["sharding"] == sharding
    for a, b in zip(steps(one_root), steps(two_root), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and abs(a["gradNorm"] - b["gradNorm"]) <= 1e-3 * a["gradNorm"], (a, b)
    assert_same_adapter(adapter(one_root), adapter(two_root), tolerance=1e-4)
    assert_trained(adapter(two_root))


def test_auto_sharding_picks_fsdp_only_for_a_base_that_does_not_fit_one_gpu():
    from kubetune_trainer.distributed import choose_sharding

    gib = 1 << 30
    assert choose_sharding("auto", "lora", "cuda", 16 * gib, 80 * gib) == "ddp"  # 8B bf16 on an 80 GB GPU
    assert choose_sharding("auto", "lora", "cuda", 140 * gib, 80 * gib) == "fsdp"  # 70B bf16
    assert choose_sharding("auto", "qlora", "cuda", 140 * gib, 80 * gib) == "ddp"  # 70B in 4 bits: ~35 GB
    assert choose_sharding("auto", "qlora", "cuda", 140 * gib, 40 * gib) == "fsdp"  # ... not on a 40 GB GPU
    assert choose_sharding("auto", "lora", "cpu", 140 * gib, 0) == "ddp"
    assert choose_sharding("fsdp", "qlora", "cpu", 1, 0) == "fsdp"  # an explicit choice is kept
