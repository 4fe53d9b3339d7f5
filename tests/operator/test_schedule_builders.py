"""The schedule's builders against golden manifests and the Kubernetes schema: the probe pod holds no GPU
and no API credentials and gets S3 keys by reference; the job is the template, named after the time."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import kubernetes_validate
from opkit import SETTINGS
from test_op_builders import FULL_SPEC, K8S_VERSION, check_golden

from kubetune_operator.schedule_builders import build_job, build_probe_pod

WHEN = datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)


def schedule(spec=None) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule",
            "metadata": {"name": "support-nightly", "namespace": "team-a", "uid": "u-1"},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {
                "metadata": {"labels": {"team": "support"}, "annotations": {"owner": "ml"}},
                "spec": {**(spec or FULL_SPEC), "runtimeRef": "llama-8b"}}}}


def test_probe_pod_matches_golden_needs_no_gpu_and_reads_s3_keys_by_reference():
    pod = build_probe_pod(schedule(), WHEN, SETTINGS)
    check_golden("schedule-probe-pod.yaml", pod)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    container = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"] and pod["spec"].get("nodeSelector") is None
    assert pod["spec"]["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": "pass"}
    manifest = json.loads(env["KUBETUNE_MANIFEST"]["value"])
    assert "runtimeRef" not in manifest["spec"] and manifest["spec"]["dataset"] == FULL_SPEC["dataset"]


def test_job_is_the_template_named_after_the_scheduled_time():
    job = build_job(schedule(), WHEN, "0123456789abcdef")
    check_golden("schedule-job.yaml", job)
    assert job["metadata"]["name"] == "support-nightly-1772334000"
    assert job["spec"]["runtimeRef"] == "llama-8b", "copied as written: the runtime merges when the job runs"
