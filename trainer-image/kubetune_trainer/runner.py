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
from .dataversion import choose_root
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
        result = tracker.finish(result, _stored_lineage(job, manifest_dir, result) if result.ok else None)
    return code, result


def _stored_lineage(job: FineTuneJob, manifest_dir: Path | None, result: TrainerResult) -> dict | None:
    try:
        root = result.artifacts.get("root") or job.artifact_root()
        store = ArtifactStore(root, Storage(job.spec.storage.s3, manifest_dir))
        return json.loads(store.read_text("lineage.json"))
    except (OSError, ValueError, TrainerError):  # runs stored before lineage.json existed
        return None


def _run(job: FineTuneJob, manifest_dir: Path | None, reporter: ProgressReporter,
         work_dir: str | None, stop: GracefulStop | None, dist: ProcessGroup | None) -> TrainerResult:
    from .recipe import LoRARecipe

    # Listing the data (no download) names its version; a finished run on this data is not trained again.
    root = choose_root(job, Storage(job.spec.storage.s3, manifest_dir))
    if root.complete:
        return already_complete(job, root.store, root.data_version)
    if root.versioned:
        print(f"kubetune: the data changed since the run at {job.artifact_root()}: training data version "
              f"{root.data_version} into {root.store.uri()}", file=sys.stderr)
    recipe = LoRARecipe(job, manifest_dir=manifest_dir, reporter=reporter, work_dir=work_dir, stop=stop, dist=dist,
                        root=root)
    try:
        recipe.setup()
        recipe.train()
        recipe.evaluate()
        return recipe.save()
    finally:
        recipe.cleanup()


def already_complete(job: FineTuneJob, store: ArtifactStore, data_version: str | None = None) -> TrainerResult:
    try:
        stored = read_completed(store)
    except TrainerError:
        stored = {}
    data = f" and data version {data_version}" if data_version else ""
    print(f"kubetune: {store.uri(SUCCESS)} exists: this spec hash{data} is already trained; not retraining",
          file=sys.stderr)
    return TrainerResult(
        ok=True, reason=Reason.ALREADY_COMPLETE, spec_hash=job.spec_hash, data_version=data_version,
        message=f"already complete: artefacts for spec hash {job.spec_hash}{data} exist at {store.uri()}",
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
