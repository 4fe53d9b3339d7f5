"""Helpers for the operator's integration tests: FineTuneJob manifests, waiting as a user would, and node
agent scripts for trainer pods."""

from __future__ import annotations

import json
import time
from typing import Any

JOBS = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"

def job_spec(max_retries: int = 2, **extra: Any) -> dict[str, Any]:
    """A small valid spec for the cluster tests (the node agent never runs a real trainer)."""
    return {
        "model": {"uri": "s3://models/base/"},
        "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
        "output": {"uri": "s3://out/"},
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "failurePolicy": {"maxRetries": max_retries, "backoffSeconds": 1},
        **extra,
    }


def finetunejob(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def get_job(cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get(f"{JOBS.format(ns=ns)}/{name}")


def condition(job: dict | None, ctype: str) -> dict | None:
    return next((c for c in ((job or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)


def wait_condition(cluster, ns: str, name: str, ctype: str, status: str = "True", timeout: float = 60) -> dict:
    """Wait until the job's condition `ctype` has `status` (failing at once if the job fails instead), then
    confirm with `kubectl wait --for=condition=...` as a user would; returns the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(cluster, ns, name)
        got, failed = condition(job, ctype), condition(job, "Failed")
        generation = (job or {}).get("metadata", {}).get("generation")
        if got and got["status"] == status and got.get("observedGeneration") == generation:
            break  # a verdict on the spec as it is now, not on an earlier version of it
        current = failed and failed.get("observedGeneration") == generation
        if ctype != "Failed" and current and failed["status"] == "True":
            raise AssertionError(f"{ns}/{name} failed while waiting for {ctype}={status}: "
                                 f"{failed['reason']}: {failed['message']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}/{name}: no {ctype}={status} after {timeout}s; status: {job.get('status')}")
        time.sleep(0.25)
    cluster.kubectl("wait", "-n", ns, f"--for=condition={ctype}={status}", "--timeout=10s", f"finetunejob/{name}")
    return get_job(cluster, ns, name)


def pod_names(cluster, ns: str) -> list[str]:
    pods = cluster.get(f"/api/v1/namespaces/{ns}/pods") or {}
    return sorted(p["metadata"]["name"] for p in pods.get("items") or [])


def events(cluster, ns: str, name: str | None = None) -> list[dict]:
    items = (cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items") or []
    return [e for e in items if name is None or (e["involvedObject"].get("kind") == "FineTuneJob"
                                                 and e["involvedObject"].get("name") == name)]


def terminate(exit_code: int, reason: str = "Error", message: str | dict = "") -> dict:
    if isinstance(message, dict):
        message = json.dumps(message)
    return {"terminate": {"exitCode": exit_code, "reason": reason, "message": message}}


def succeed(seconds: float = 1, **result: Any) -> list[dict]:
    """A pod that trains for `seconds`, then writes a successful TrainerResult."""
    data = {"ok": True, "reason": "Completed", "message": "trained", **result}
    return [{"phase": "Running", "seconds": seconds}, terminate(0, "Completed", data)]
