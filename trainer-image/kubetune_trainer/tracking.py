"""Experiment tracking (spec.tracking.mlflow), through MLflow's own client.

The tracker is a progress sink: training steps reach it as they happen and a background thread sends them
in batches, so the loss curve shows live in MLflow. At the end it logs the parameters, base and tuned
metrics, the artefact URIs and the lineage as tags. Any failure to reach the tracker is logged once and
turns tracking off for the rest of the run: it never fails or slows the training. The result says what
happened (the operator shows it as the Tracked condition).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from kubetune_api.results import ProgressEvent, TrainerResult
from kubetune_api.status import Reason

FLUSH_SECONDS = 10.0
# MLflow's client retries a failing request 7 times with exponential backoff (minutes); a tracker that is
# down must cost the run seconds. Users can still set these themselves.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
MAX_TAG = 5000  # MLflow keeps tag values up to 8000 characters; params up to 6000


def tracker_for(job) -> MlflowTracker | None:
    spec = job.spec.tracking.mlflow
    return MlflowTracker(job, spec.tracking_uri, spec.experiment) if spec is not None else None


class MlflowTracker:
    def __init__(self, job, tracking_uri: str, experiment: str):
        self.job, self.uri, self.experiment = job, tracking_uri, experiment
        self.run_id: str | None = None
        self.error: str | None = None
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the progress sink --------------------------------------------------------------------------
    def emit(self, event: ProgressEvent, forced: bool) -> None:
        if event.stage != "training" or event.loss is None or self.error:
            return
        now = int(time.time() * 1000)
        with self._lock:
            self._pending.append(("train.loss", event.loss, now, event.step))
            if event.learning_rate is not None:
                self._pending.append(("train.learningRate", event.learning_rate, now, event.step))
        if self._thread is None:
            self._thread = threading.Thread(target=self._flush_loop, name="mlflow", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            from mlflow.entities import Metric

            self._call(lambda c: c.log_batch(self._run(c), metrics=[Metric(*m) for m in pending]))

    # ---- the end of the run -------------------------------------------------------------------------
    def finish(self, result: TrainerResult, lineage: dict | None) -> TrainerResult:
        """Log what the run produced, close the MLflow run and say in the result how tracking went."""
        if result.reason == Reason.ALREADY_COMPLETE and self.run_id is None:
            return result.model_copy(update={"tracked": None, "tracking_message":
                                             "already complete: no new MLflow run"})
        self._call(lambda c: self._log_outcome(c, result, lineage))
        self._call(lambda c: c.set_terminated(self._run(c), "FINISHED" if result.ok else "FAILED"))
        if self.error:
            return result.model_copy(update={"tracked": False, "tracking_message": self.error})
        return result.model_copy(update={"tracked": True, "tracking_message":
                                         f"MLflow run {self.run_id} in experiment {self.experiment!r} at {self.uri}"})

    def _log_outcome(self, client, result: TrainerResult, lineage: dict | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run = self._run(client)
        now = int(time.time() * 1000)
        metrics = [Metric(f"tuned.{k}", v, now, 0) for k, v in result.metrics.items()]
        metrics += [Metric(f"base.{k}", v, now, 0) for k, v in result.base_metrics.items()]
        tags = {"kubetune.reason": result.reason, "kubetune.message": result.message[:MAX_TAG]}
        tags |= {f"kubetune.artifact.{k}": v for k, v in result.artifacts.items()}
        if result.artifacts.get("root"):  # {specHash}-data-{version}/ when the data changed (dataversion.py)
            tags["kubetune.artifactRoot"] = result.artifacts["root"]
        if result.data_version:
            tags["kubetune.dataVersion"] = result.data_version
        if result.gate_passed is not None:
            tags["kubetune.gatePassed"] = str(result.gate_passed).lower()
        if lineage:
            base = lineage["baseModel"]
            tags |= {"kubetune.lineage.baseModel": base["uri"], "kubetune.lineage.baseRevision": str(base["revision"]),
                     "kubetune.lineage.baseWeightsSha256": base["weights"]["sha256"],
                     "kubetune.lineage.trainerVersion": lineage["trainer"]["version"],
                     "kubetune.lineage.image": str(lineage["image"]["reference"]),
                     "kubetune.lineage.imageID": str(lineage["image"]["id"]),
                     "kubetune.lineage.inputs": json.dumps(_inputs(lineage), separators=(",", ":"))[:MAX_TAG]}
        params = [Param(k, v[:6000]) for k, v in _flatten(self.job.spec.model_dump(mode="json", by_alias=True))]
        for i in range(0, max(len(params), 1), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run, metrics=metrics if i == 0 else [], params=params[i:i + 100],
                             tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])

    # ---- the client ---------------------------------------------------------------------------------
    def _run(self, client) -> str:
        if self.run_id is None:
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
            job = self.job
            run = client.create_run(experiment_id, run_name=f"{job.metadata.namespace}/{job.metadata.name}", tags={
                "kubetune.namespace": job.metadata.namespace, "kubetune.name": job.metadata.name,
                "kubetune.specHash": job.spec_hash, "kubetune.artifactRoot": job.artifact_root(),
                "kubetune.attempt": os.environ.get("KUBETUNE_ATTEMPT", "1")})
            self.run_id = run.info.run_id
        return self.run_id

    def _call(self, fn) -> None:
        if self.error:
            return
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        try:
            from mlflow.tracking import MlflowClient

            fn(MlflowClient(tracking_uri=self.uri))
        except Exception as err:  # noqa: BLE001 - the tracker must never fail the training, whatever it raises
            self.error = (f"MLflow at {self.uri} failed, tracking is off for this run "
                          f"(training goes on): {type(err).__name__}: {str(err)[:500]}")
            print(f"kubetune: {self.error}", file=sys.stderr)


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}{k}.")]
    return [] if value is None else [(prefix.rstrip("."), json.dumps(value) if isinstance(value, list) else str(value))]


def _inputs(lineage: dict) -> list[dict]:
    return [{"role": role, "uri": f["uri"], "sha256": f.get("sha256"), "etag": f.get("etag"), "rows": f.get("rows")}
            for role, files in lineage["inputs"].items() for f in files]
