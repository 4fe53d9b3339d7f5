"""Early stopping: the saved adapter is the best evaluation's, not the last step's, and the run says why it
stopped; with no length set, training is capped at earlyStopping.maxEpochs and evaluates along the way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from kubetune_api.job import parse_job
from kubetune_api.status import StopReason
from kubetune_trainer.runner import run_job

from .conftest import manifest, sku_rows, tiny_spec, write_jsonl


def _run(tmp_path: Path, tiny_model: Path, name: str, training: dict, **overrides):
    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / "out"), **overrides)
    spec["training"] = {"batchSize": 2, "seed": 3, "warmupRatio": 0.0, "scheduler": "constant", **training}
    job = parse_job(manifest(spec, name=name))
    code, result = run_job(job, work_dir=str(tmp_path))
    assert result.ok, result.message
    root = Path(job.artifact_root())
    log = [json.loads(line) for line in (root / "train-log.jsonl").read_text().splitlines()]
    return result, root, log


def _adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "adapter" / "adapter_model.safetensors")


def _checkpoint(root: Path, step: int) -> dict:
    return torch.load(root / "checkpoints" / f"step-{step}" / "adapter.pt")


def _same(saved: dict, trainable: dict) -> bool:
    # PEFT saves `base_model.model.x.lora_A.weight` for the parameter `base_model.model.x.lora_A.default.weight`
    named = {k.replace(".default.", "."): v for k, v in trainable.items()}
    return saved.keys() == named.keys() and all(torch.equal(saved[k], named[k]) for k in saved)


def test_early_stopping_saves_the_best_steps_adapter_and_says_why_it_stopped(tmp_path, tiny_model):
    # A learning rate this high overfits 9 examples within a few steps: the held-out loss falls, then rises.
    result, root, log = _run(
        tmp_path, tiny_model, "early", {"maxSteps": 60, "learningRate": 0.05,
                                        "earlyStopping": {"evalSteps": 1, "patience": 2, "minDelta": 0.0}},
        checkpoint={"everySteps": 1, "keep": 100}, evaluation={"compareBase": False, "maxSamples": 2})
    evals = [e for e in log if e["event"] == "eval" and "subset" in e]
    best = min(evals, key=lambda e: e["evalLoss"])
    last = evals[-1]["step"]
    assert result.stop_reason == StopReason.EARLY_STOPPED and last < 60, "stopped before maxSteps"
    assert [e["step"] for e in evals] == list(range(1, last + 1)), "evaluated every step"
    assert evals[-1]["sinceImprovement"] == 2 and all(e["evalLoss"] >= best["evalLoss"] for e in evals[-2:])
    assert result.best_step == best["step"] < last
    stop = next(e for e in log if e["event"] == "stop")
    assert stop == {**stop, "reason": "EarlyStopped", "step": last, "bestStep": best["step"]}
    saved = _adapter(root)
    assert _same(saved, _checkpoint(root, best["step"])), "the saved adapter is the best step's"
    assert not _same(saved, _checkpoint(root, last)), "... not the last step's"
    metrics = json.loads((root / "metrics.json").read_text())
    training = metrics["training"]
    assert training["stopReason"] == "EarlyStopped" and training["bestStep"] == best["step"] and training["steps"] == last
    assert metrics["tuned"]["evalLoss"] == round(best["evalLoss"], 4), "the reported held-out loss is the kept adapter's"
    assert f"adapter of step {best['step']} kept" in (root / "report.md").read_text()
    assert "EarlyStopped" in result.message


def test_without_a_length_training_evaluates_as_it_goes_and_stops_at_max_epochs(tmp_path, tiny_model):
    # Nothing says how long: early stopping is on, capped at maxEpochs (never triggered: patience too long).
    result, root, log = _run(
        tmp_path, tiny_model, "capped", {"learningRate": 0.01, "earlyStopping": {
            "maxEpochs": 2, "patience": 1000, "minDelta": 0.0}},
        evaluation={"compareBase": False, "maxSamples": 2, "metrics": ["evalLoss", "exactMatch"],
                    "gate": {"metric": "evalLoss", "max": 100.0}})
    per_epoch = math.ceil(9 / 2)  # 12 rows, a quarter held out, 2 per step
    evals = [e["step"] for e in log if e["event"] == "eval" and "subset" in e]
    assert result.stop_reason == StopReason.MAX_EPOCHS and result.step == result.total_steps == 2 * per_epoch
    assert evals == list(range(1, 2 * per_epoch + 1)), "a quarter of a 5-step epoch rounds to every step"
    gate = json.loads((root / "metrics.json").read_text())["gateFirstReached"]
    assert gate["step"] == 1 and "first met the gate at step 1" in (root / "report.md").read_text()


def test_an_explicit_length_is_honoured_without_evaluations_in_between(tmp_path, tiny_model):
    result, _, log = _run(tmp_path, tiny_model, "explicit", {"epochs": 1},
                          evaluation={"compareBase": False, "maxSamples": 2})
    assert result.stop_reason == StopReason.MAX_EPOCHS and result.step == math.ceil(9 / 2)
    assert not [e for e in log if e["event"] == "eval" and "subset" in e]


def test_a_resumed_attempt_keeps_the_patience_count_and_the_best_adapter(tmp_path):
    from kubetune_api.spec import EarlyStoppingSpec, S3Spec
    from kubetune_trainer.checkpoints import Checkpoints
    from kubetune_trainer.early_stopping import EarlyStopping
    from kubetune_trainer.storage import ArtifactStore, Storage

    spec = EarlyStoppingSpec(evalSteps=1, patience=3, minDelta=0.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = Checkpoints(ArtifactStore(f"{tmp_path}/root/", Storage(S3Spec())), 1, 1, tmp_path / "scratch")
    first = EarlyStopping(spec, steps_per_epoch=4, eval_encoded=[])
    for step, loss in ((1, 2.0), (2, 1.0), (3, 1.5)):
        first.record(step, loss, lambda step=step: {"w": torch.full((2,), float(step))})
    checkpoints.save(3, {"w": torch.full((2,), 3.0)}, optimizer.state_dict(), scheduler,
                     {"earlyStopping": first.state()}, best=first.best_state)

    _, _, state = checkpoints.load(3, scheduler)
    resumed = EarlyStopping(spec, steps_per_epoch=4, eval_encoded=[])
    resumed.restore(state["earlyStopping"], state.get("bestAdapter"))
    assert (resumed.best_step, resumed.bad) == (2, 1) and torch.equal(resumed.best_state["w"], torch.full((2,), 2.0))
    resumed.record(4, 1.2, dict)
    assert not resumed.stop
    resumed.record(5, 1.1, dict)
    assert resumed.stop, "stops where an uninterrupted run would: the third evaluation without improvement"
    assert torch.equal(resumed.best_state["w"], torch.full((2,), 2.0)), "the kept adapter is still step 2's"


def test_a_loss_within_min_delta_of_zero_stops_at_once_as_nothing_can_improve_on_it():
    # The SKU job's held-out losses (bench/time_to_quality.py): from step 36 no evaluation can beat the best by
    # more than minDelta 0.01; before this rule the run waited out its patience (two more evaluations).
    from kubetune_api.spec import EarlyStoppingSpec
    from kubetune_trainer.early_stopping import EarlyStopping

    def stops_after(losses: list[float], **spec) -> int | None:
        watch = EarlyStopping(EarlyStoppingSpec(evalSteps=9, **spec), 34, [object()] * 30)
        for n, loss in enumerate(losses, 1):
            watch.record(9 * n, loss, dict)
            if watch.stop:
                return 9 * n
        return None

    sku = [1.306, 0.2476, 0.01506, 0.0065, 0.0033]
    assert stops_after(sku) == 36, "the best is within minDelta 0.01 of zero"
    assert stops_after(sku, minDelta=0.001) is None, "a smaller minDelta still counts these as improvements"
    assert stops_after(sku + [0.0031, 0.0030], minDelta=0.001) == 63, "... until the patience runs out"
    assert stops_after(sku, minDelta=0.0) is None, "minDelta 0 counts any decrease: no stop while it falls"
    assert stops_after([1.5, 0.76, 0.54, 0.46, 0.38]) is None, "a loss far from zero is unaffected"


def test_a_run_stopped_near_zero_loss_says_so(tmp_path, tiny_model):
    result, root, log = _run(tmp_path, tiny_model, "floor", {"earlyStopping": {"evalSteps": 1, "minDelta": 1000}},
                             evaluation={"compareBase": False, "maxSamples": 2})
    assert result.stop_reason == StopReason.EARLY_STOPPED and result.step == 1, "the first evaluation is the last"
    assert "within minDelta 1000 of zero" in result.message
    assert "within minDelta 1000 of zero" in (root / "report.md").read_text()
