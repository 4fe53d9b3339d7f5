"""Driving one run: the _SUCCESS short-circuit, the recipe's steps, and every failure turned into a typed
TrainerResult and exit code for the operator."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from kubetune_api.job import FineTuneJob
from kubetune_api.results import ExitCode, TrainerResult
from kubetune_api.status import Reason

from .artifacts import SUCCESS, artifact_uris, read_completed
from .distributed import ProcessGroup
from .errors import TrainerError, classify
from .handoff import serving_fields
from .progress import ProgressReporter
from .stopping import GracefulStop
from .storage import ArtifactStore, Storage
from .tracking import tracker_for


def run_job(job: FineTuneJob, *, manifest_dir: Path | None = None, reporter: ProgressReporter | None = None,
            work_dir: str | None = None, stop: GracefulStop | None = None,
            dist: ProcessGroup | None = None) -> tuple[ExitCode, TrainerResult]:
    """Run the job to completion; never raises for a failure the operator should see."""
    reporter = reporter or ProgressReporter()
    tracker = tracker_for(job) if dist is None or dist.is_writer else None
    if tracker is not None:
        reporter.sinks.append(tracker)
    code = ExitCode.OK
    try:
        result = _run(job, manifest_dir, reporter, work_dir, stop, dist)
    except Exception as err:  # noqa: BLE001 - every failure must end as a typed result, bugs included
        typed = classify(err)
        if typed is None:
            traceback.print_exc(file=sys.stderr)
            typed = TrainerError(f"internal error: {type(err).__name__}: {err}")
        code = typed.code
        print(f"kubetune: {code.reason}: {typed.message}", file=sys.stderr)
        result = TrainerResult(ok=False, reason=code.reason, message=typed.message, spec_hash=job.spec_hash)
    finally:
        reporter.close("done" if code == ExitCode.OK else "failed")  # also flushes the tracker's steps
    if tracker is not None:
        result = tracker.finish(result, _stored_lineage(job, manifest_dir) if result.ok else None)
    return code, result


def _stored_lineage(job: FineTuneJob, manifest_dir: Path | None) -> dict | None:
    try:
        store = ArtifactStore(job.artifact_root(), Storage(job.spec.storage.s3, manifest_dir))
        return json.loads(store.read_text("lineage.json"))
    except (OSError, ValueError, TrainerError):  # runs stored before lineage.json existed
        return None


def _run(job: FineTuneJob, manifest_dir: Path | None, reporter: ProgressReporter,
         work_dir: str | None, stop: GracefulStop | None, dist: ProcessGroup | None) -> TrainerResult:
    from .recipe import LoRARecipe

    store = ArtifactStore(job.artifact_root(), Storage(job.spec.storage.s3, manifest_dir))
    if store.exists(SUCCESS):
        return already_complete(job, store)
    recipe = LoRARecipe(job, manifest_dir=manifest_dir, reporter=reporter, work_dir=work_dir, stop=stop, dist=dist)
    try:
        recipe.setup()
        recipe.train()
        recipe.evaluate()
        return recipe.save()
    finally:
        recipe.cleanup()


def already_complete(job: FineTuneJob, store: ArtifactStore) -> TrainerResult:
    try:
        stored = read_completed(store)
    except TrainerError:
        stored = {}
    print(f"kubetune: {store.uri(SUCCESS)} exists: this spec hash is already trained; not retraining",
          file=sys.stderr)
    return TrainerResult(
        ok=True, reason=Reason.ALREADY_COMPLETE, spec_hash=job.spec_hash,
        message=f"already complete: artefacts for spec hash {job.spec_hash} exist at {store.uri()}",
        metrics=stored.get("tuned", {}), base_metrics=stored.get("base", {}),
        gate_passed=stored.get("gatePassed"), gate_message=stored.get("gateMessage"),
        artifacts=artifact_uris(store, job.spec.output.merge_adapter),
        stop_reason=stored.get("training", {}).get("stopReason"), best_step=stored.get("training", {}).get("bestStep"),
        **serving_fields(stored.get("serving")),
    )



def write_termination(path: str | None, result: TrainerResult) -> None:
    if not path:
        return
    try:
        Path(path).write_text(result.to_termination_message())
    except OSError as err:
        print(f"kubetune: cannot write the termination message to {path}: {err}", file=sys.stderr)
