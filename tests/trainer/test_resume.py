"""A run killed mid-way continues from its newest checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from fixtures.adapters import assert_same_adapter
from kubetune_api.job import parse_job

from .conftest import REPO, manifest, run_cli, sku_rows, tiny_spec, write_jsonl, write_manifest


def spec(tiny_model, train, out):
    return tiny_spec(str(tiny_model), str(train), str(out), training={"maxSteps": 150, "batchSize": 2},
                     checkpoint={"everySteps": 5, "keep": 2}, evaluation={"compareBase": False, "maxSamples": 2})


def adapter_weights(root):
    from safetensors.torch import load_file

    return load_file(f"{root}adapter/adapter_model.safetensors")


def train_log(root) -> list[dict]:
    with open(f"{root}train-log.jsonl") as f:
        return [json.loads(line) for line in f]


def test_killed_run_resumes_from_its_checkpoint_at_the_right_step(tmp_path, tiny_model):
    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    doc = manifest(spec(tiny_model, train, tmp_path / "out"), name="resumed")
    config = write_manifest(tmp_path / "resumed.yaml", doc)
    root = parse_job(doc).artifact_root()
    env = {**os.environ, "PYTHONPATH": str(REPO), "KUBETUNE_CONFIG": str(config),
           "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term"), "KUBETUNE_WORK_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "train"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "out" / "default" / "resumed" / parse_job(doc).spec_hash / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("step-*/COMPLETE")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.parent.name.removeprefix("step-")) for p in checkpoints.glob("step-*/COMPLETE"))
    assert saved, "the first attempt wrote no checkpoint before it was killed"
    assert not (checkpoints.parent / "_SUCCESS").exists()

    second = run_cli(["train"], env={"KUBETUNE_CONFIG": str(config), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "t")})
    assert second.returncode == 0, second.stderr[-3000:]
    log = train_log(root)
    resumes = [e for e in log if e["event"] == "resume"]
    assert [e["step"] for e in resumes] == [saved[-1]]
    assert [e["step"] for e in log if e["event"] == "start"] == [0, saved[-1]], "one start per attempt"
    first_new = json.loads(next(line for line in second.stdout.splitlines() if '"stage":"training"' in line))
    assert first_new["step"] == saved[-1]
    steps = [e["step"] for e in log if e["event"] == "step"]
    assert steps == list(range(1, 151)), "every step is logged exactly once across the two attempts"
    assert len(list(checkpoints.glob("step-*"))) <= 2, "only the last `keep` checkpoints are kept"

    doc_ref = manifest(spec(tiny_model, train, tmp_path / "out"), name="straight")
    reference = run_cli(["train"], env={"KUBETUNE_CONFIG": str(write_manifest(tmp_path / "straight.yaml", doc_ref)),
                                        "KUBETUNE_TERMINATION_LOG": str(tmp_path / "t2")})
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert_same_adapter(adapter_weights(root), adapter_weights(parse_job(doc_ref).artifact_root()))
    resumed_losses = [e["loss"] for e in log if e["event"] == "step"]
    straight_losses = [e["loss"] for e in train_log(parse_job(doc_ref).artifact_root()) if e["event"] == "step"]
    assert resumed_losses == straight_losses or max(abs(a - b) for a, b in zip(resumed_losses, straight_losses, strict=True)) < 1e-4


def test_sigterm_saves_the_current_step_and_the_next_attempt_resumes_there(tmp_path, tiny_model):
    """A pod deleted mid-training (preemption, suspend, node drain) gets SIGTERM: the trainer finishes its
    step, checkpoints it although no checkpoint is due, and exits retryable; nothing trained is lost."""
    from kubetune_api.results import ExitCode, TrainerResult

    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    job_spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / "out"), training={"maxSteps": 300, "batchSize": 2},
                         checkpoint={"everySteps": 10_000, "keep": 2}, evaluation={"compareBase": False, "maxSamples": 2})
    doc = manifest(job_spec, name="stopped")
    config = write_manifest(tmp_path / "stopped.yaml", doc)
    root = parse_job(doc).artifact_root()
    env = {**os.environ, "PYTHONPATH": str(REPO), "KUBETUNE_CONFIG": str(config),
           "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term"), "KUBETUNE_WORK_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "train"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"stage":"training"' in line:  # the training loop has begun
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TRANSIENT and ExitCode.TRANSIENT.retryable
    result = TrainerResult.from_termination_message((tmp_path / "term").read_text())
    assert not result.ok and "stopped by SIGTERM after step" in result.message, result.message
    stopped_at = int(result.message.split("after step ")[1].split()[0])
    checkpoints = tmp_path / "out" / "default" / "stopped" / parse_job(doc).spec_hash / "checkpoints"
    assert [p.parent.name for p in checkpoints.glob("step-*/COMPLETE")] == [f"step-{stopped_at}"]
    assert 1 <= stopped_at < 300 and not (checkpoints.parent / "_SUCCESS").exists()

    second = run_cli(["train"], env={"KUBETUNE_CONFIG": str(config), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "t")})
    assert second.returncode == 0, second.stderr[-3000:]
    log = train_log(root)
    assert [e["step"] for e in log if e["event"] == "resume"] == [stopped_at]
    assert [e["step"] for e in log if e["event"] == "step"] == list(range(1, 301)), "no step lost or repeated"
