"""Helpers shared by the operator's unit tests: FineTuneJob objects and trainer pods in given states.

(A plain module, not a package: a tests/operator/__init__.py would make a package named `operator`,
shadowing the standard library's.)"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from kubetune_api import parse_job
from kubetune_operator.builders import build_trainer_pod
from kubetune_operator.settings import Settings

UID = "8f14e45f-ceea-467f-a0e6-1b2c3d4e5f60"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SETTINGS = Settings(
    trainer_image="registry.example/kubetune/trainer:test",
    progress_url="http://kubetune-operator.kubetune-system.svc:8080",
    progress_key=b"test-key",
)
MINIMAL_SPEC = {
    "model": {"uri": "s3://models/base/"},
    "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
    "output": {"uri": "s3://out/"},
}


def stamp(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def job_body(spec: dict | None = None, *, name: str = "demo", namespace: str = "team-a", generation: int = 1,
             labels: dict | None = None, status: dict | None = None) -> dict[str, Any]:
    """A FineTuneJob as the API server returns it."""
    body: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name, "namespace": namespace, "uid": UID, "generation": generation,
            "resourceVersion": "100", "creationTimestamp": stamp(0), "labels": labels or {},
        },
        "spec": copy.deepcopy(spec if spec is not None else MINIMAL_SPEC),
    }
    if status is not None:
        body["status"] = status
    return body


def parsed(body: dict[str, Any]):
    meta = {k: body["metadata"][k] for k in ("name", "namespace", "uid", "labels")}
    return parse_job({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": meta, "spec": body["spec"]})


def pod(body: dict[str, Any], attempt: int, phase: str = "Pending", *, node: str | None = "node-1",
        created: float = 1, container: dict | None = None, reason: str | None = None, message: str | None = None,
        conditions: list | None = None, deleting: bool = False) -> dict[str, Any]:
    """The trainer pod the operator would build for `attempt`, in the given observed state."""
    obj = build_trainer_pod(parsed(body), attempt, SETTINGS)
    obj["metadata"]["creationTimestamp"] = stamp(created)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = stamp(created + 1)
    if node:
        obj["spec"]["nodeName"] = node
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if conditions:
        status["conditions"] = conditions
    if container is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": container}]
    obj["status"] = status
    return obj


def running(body, attempt, **kw):
    return pod(body, attempt, "Running", container={"running": {"startedAt": stamp(2)}}, **kw)


def terminated(body, attempt, exit_code: int, reason: str = "Error", message: str = "", finished: float = 30, **kw):
    phase = "Succeeded" if exit_code == 0 else "Failed"
    state = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                            "finishedAt": stamp(finished)}}
    return pod(body, attempt, phase, container=state, **kw)


def result_message(**fields) -> str:
    data = {"ok": True, "reason": "Completed", "message": "trained", **fields}
    return json.dumps(data)
