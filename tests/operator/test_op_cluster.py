"""The operator process against a real kube-apiserver (+ controller manager), with the node agent running
scripted trainer pods: what a user sees through kubectl for each lifecycle scenario of issue 4. The real
trainer runs in test_op_training.py."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest
from clusterkit import (
    condition,
    events,
    finetunejob,
    get_job,
    job_spec,
    pod_names,
    succeed,
    terminate,
    wait_condition,
)

from kubetune_api.results import PROGRESS_PATH

pytestmark = pytest.mark.k8s


def spec(**extra) -> dict:
    return job_spec(max_retries=2, **extra)


def apply(cluster, ns, name, job_spec, labels=None):
    cluster.apply(finetunejob(name, job_spec, labels), namespace=ns)


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def running_pods(cluster, ns):
    """Pods that may still run a trainer (not Succeeded/Failed, not yet gone)."""
    items = (cluster.get(f"/api/v1/namespaces/{ns}/pods") or {}).get("items") or []
    return [p["metadata"]["name"] for p in items if p["status"].get("phase") not in ("Succeeded", "Failed")]


def event_reasons(cluster, ns, name):
    return {e["reason"] for e in events(cluster, ns, name)}


# ------------------------------------------------------------------------------------------ scenarios


def test_success_with_status_metrics_events_and_metrics_endpoint(kube_cluster, kube_namespace, operator_up, scripted):
    ns = kube_namespace
    scripted({"demo-1": succeed(2, metrics={"evalLoss": 1.1, "rougeL": 0.4}, baseMetrics={"rougeL": 0.3},
                                artifacts={"adapter": "s3://out/x/adapter/"})})
    apply(kube_cluster, ns, "demo", spec())
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    st = job["status"]
    assert st["phase"] == "Succeeded" and st["attempts"] == 1 and st["podName"] == "demo-1"
    assert st["metrics"] == {"evalLoss": 1.1, "rougeL": 0.4} and st["artifacts"]["adapter"] == "s3://out/x/adapter/"
    assert st["startTime"] and st["completionTime"] and st["observedGeneration"] == 1
    assert condition(job, "EvaluationPassed")["reason"] == "NoGate"
    got = kube_cluster.kubectl("get", "-n", ns, "finetunejob", "demo").stdout
    assert "Succeeded" in got and "rougeL=0.4" in got
    assert {"Valid", "PodCreated", "PodScheduled", "Training", "Completed"} <= event_reasons(kube_cluster, ns, "demo")
    pod = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-1")
    assert pod["metadata"]["labels"]["kubetune.io/spec-hash"] == st["specHash"]
    assert pod["spec"]["containers"][0]["image"] == "registry.example/kubetune/trainer:test"
    text = operator_up.metrics()
    assert 'kubetune_jobs{phase="Succeeded"}' in text and "kubetune_job_creation_to_pod_seconds_count" in text
    assert "kubetune_reconcile_errors_total" in text


def test_invalid_spec_fails_naming_the_field_without_a_pod(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 2: valid for the CRD schema, invalid for the API model (rules the schema cannot express)."""
    ns = kube_namespace
    apply(kube_cluster, ns, "bad", spec(training={"epochs": 2, "maxSteps": 10},
                                         dataset={"train": {"uri": "./train.jsonl"}}))
    job = wait_condition(kube_cluster, ns, "bad", "Failed")
    failed = condition(job, "Failed")
    assert failed["reason"] == "InvalidSpec" and job["status"]["phase"] == "Failed"
    assert "spec.training" in failed["message"] and "maxSteps" in failed["message"]
    time.sleep(1)
    assert pod_names(kube_cluster, ns) == []
    warnings = [e for e in events(kube_cluster, ns, "bad") if e["reason"] == "InvalidSpec"]
    assert warnings and warnings[0]["type"] == "Warning"
    # Fixing it starts a run.
    scripted({"bad-1": succeed(1)})
    apply(kube_cluster, ns, "bad", spec(dataset={"train": {"uri": "./train.jsonl"}}))
    job = wait_condition(kube_cluster, ns, "bad", "Failed")
    assert condition(job, "Failed")["message"].startswith("spec.dataset.train.uri: './train.jsonl' is relative")
    apply(kube_cluster, ns, "bad", spec())
    wait_condition(kube_cluster, ns, "bad", "Succeeded")


def test_oom_then_retry_succeeds_on_attempt_two(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 3 with a scripted trainer (test_op_training.py runs the real one)."""
    ns = kube_namespace
    scripted({"demo-1": [{"phase": "Running", "seconds": 1}, terminate(137, "OOMKilled")],
              "demo-2": succeed(1)})
    apply(kube_cluster, ns, "demo", spec())
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    assert job["status"]["attempts"] == 2 and job["status"]["retries"] == 1
    assert pod_names(kube_cluster, ns) == ["demo-1", "demo-2"]
    attempt = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-2")["spec"]["containers"][0]["env"]
    assert {"name": "KUBETUNE_ATTEMPT", "value": "2"} in attempt
    warnings = [e for e in events(kube_cluster, ns, "demo") if e["type"] == "Warning"]
    assert any(e["reason"] == "OOMKilled" for e in warnings)


def test_data_invalid_fails_at_once_without_retry(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 4."""
    ns = kube_namespace
    result = {"ok": False, "reason": "DataInvalid", "message": "dataset.train row 3: 'output' is empty"}
    scripted({"demo-1": [{"phase": "Running", "seconds": 1}, terminate(11, "Error", result)]})
    apply(kube_cluster, ns, "demo", spec())
    job = wait_condition(kube_cluster, ns, "demo", "Failed")
    failed = condition(job, "Failed")
    assert failed["reason"] == "DataInvalid" and "row 3" in failed["message"]
    time.sleep(2)
    assert pod_names(kube_cluster, ns) == ["demo-1"] and get_job(kube_cluster, ns, "demo")["status"]["attempts"] == 1


def test_operator_killed_and_restarted_mid_run(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 5: SIGKILL at several points; exactly one pod per attempt and the right final status."""
    ns, op = kube_namespace, operator_up
    scripted({"demo-1": [{"phase": "Running", "seconds": 4}, terminate(137, "OOMKilled")],
              "demo-2": succeed(4, metrics={"evalLoss": 0.9})})
    apply(kube_cluster, ns, "demo", spec(failurePolicy={"maxRetries": 2, "backoffSeconds": 3}))
    wait_for(lambda: "demo-1" in pod_names(kube_cluster, ns), what="pod demo-1")
    op.kill()  # 1: right after creating the first pod (its status may not be written yet)
    op.start()
    wait_for(lambda: (get_job(kube_cluster, ns, "demo").get("status") or {}).get("retries") == 1, 30, "the OOM")
    op.kill()  # 2: during the backoff before the retry
    op.start([sys.executable, "-m", "kopf", "run", "-m", "kubetune_operator", "--standalone", "--all-namespaces", "--verbose"])
    wait_for(lambda: "demo-2" in pod_names(kube_cluster, ns), 30, "pod demo-2")
    op.kill()  # 3: with attempt 2 running; it finishes while no operator is there
    time.sleep(5)
    op.start()
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    assert job["status"]["attempts"] == 2 and job["status"]["metrics"] == {"evalLoss": 0.9}
    assert pod_names(kube_cluster, ns) == ["demo-1", "demo-2"]
    started = [name for name, _ in scripted.seen if name.startswith("demo-")]
    assert sorted(started) == ["demo-1", "demo-2"]  # each attempt's pod was created (and run) once


def test_deleting_a_job_garbage_collects_its_children_not_its_artefacts(
    kube_cluster, kube_namespace, operator_up, scripted, s3_server
):
    """Scenario 6."""
    ns = kube_namespace
    bucket = s3_server.make_bucket("kubetune-e2e")  # the bucket test_op_training.py uses too
    apply(kube_cluster, ns, "demo", spec(output={"uri": "s3://kubetune-e2e/gc-runs/"}))
    job = wait_condition(kube_cluster, ns, "demo", "Running")
    root = f"gc-runs/{ns}/demo/{job['status']['specHash']}/"
    s3_server.client().put_object(Bucket=bucket, Key=root + "checkpoints/step-10/adapter.safetensors", Body=b"w")
    children = [f"/api/v1/namespaces/{ns}/{kind}/{name}" for kind, name in
                (("pods", "demo-1"), ("configmaps", "demo-config"), ("secrets", "demo-progress"))]
    assert all(kube_cluster.get(path) for path in children)
    kube_cluster.kubectl("delete", "-n", ns, "finetunejob", "demo", "--wait=true", "--timeout=60s")
    wait_for(lambda: not any(kube_cluster.get(path) for path in children), 60, "garbage collection")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix=root).get("Contents", [])]
    assert keys == [root + "checkpoints/step-10/adapter.safetensors"]


def test_active_deadline_exceeded(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 7."""
    ns = kube_namespace
    apply(kube_cluster, ns, "demo", spec(activeDeadlineSeconds=3))
    job = wait_condition(kube_cluster, ns, "demo", "Failed", timeout=30)
    assert condition(job, "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not running_pods(kube_cluster, ns), 30, "the pod to be stopped")


def test_unchanged_finished_job_reapplied_never_retrains(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 8: `kubectl apply` of the same manifest (and with a new label) after it finished."""
    ns = kube_namespace
    scripted({"demo-1": succeed(1)})
    apply(kube_cluster, ns, "demo", spec())
    before = wait_condition(kube_cluster, ns, "demo", "Succeeded")["status"]
    apply(kube_cluster, ns, "demo", spec())
    apply(kube_cluster, ns, "demo", spec(resources={"gpus": 1, "cpu": "2", "memory": "1Gi"}), labels={"team": "a"})
    time.sleep(3)
    after = get_job(kube_cluster, ns, "demo")["status"]
    assert pod_names(kube_cluster, ns) == ["demo-1"]
    assert after["phase"] == "Succeeded" and after["attempts"] == 1 and after["completionTime"] == before["completionTime"]


def test_a_canary_secret_never_leaks(kube_cluster, kube_namespace, operator_up, scripted):
    """Scenario 9: the S3 and hub credentials go to the pod by reference; their values appear in no status,
    Event, ConfigMap or operator log line."""
    ns = kube_namespace
    canary = "canary-" + base64.b32encode(os.urandom(10)).decode().lower()
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIA" + canary, "AWS_SECRET_ACCESS_KEY": canary}})
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}, "stringData": {"HF_TOKEN": "hf_" + canary}})
    scripted({"demo-1": [{"phase": "Running", "seconds": 1}, terminate(12, "Error", {
        "ok": False, "reason": "AccessDenied", "message": "s3://data/train.jsonl: access denied"})]})
    apply(kube_cluster, ns, "demo", spec(storage={"s3": {"secretRef": {"name": "s3-credentials"}}},
                                          model={"uri": "hf://org/model", "secretRef": {"name": "hf"}}))
    job = wait_condition(kube_cluster, ns, "demo", "Failed")
    assert condition(job, "Failed")["reason"] == "AccessDenied"
    env = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-1")["spec"]["containers"][0]["env"]
    assert {"name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}}} in env
    seen = {
        "status": json.dumps(job),
        "events": json.dumps(events(kube_cluster, ns)),
        "configmap": json.dumps(kube_cluster.get(f"/api/v1/namespaces/{ns}/configmaps/demo-config")),
        "pod": json.dumps(kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-1")),
        "operator log": operator_up.log(),
    }
    assert all(text for text in seen.values())
    assert [where for where, text in seen.items() if canary in text] == []
    token = base64.b64decode(kube_cluster.get(f"/api/v1/namespaces/{ns}/secrets/demo-progress")["data"]["token"])
    assert token.decode() not in seen["operator log"] + seen["status"] + seen["events"]


def test_schema_invalid_manifest_is_rejected_by_kubectl_apply(kube_cluster, kube_namespace, operator_up):
    """Scenario 10: the CRD's schema, generated from the API model, rejects it at the API server."""
    run = kube_cluster.apply(finetunejob("demo", spec(method={"type": "full"}, resources={"gpus": -1})),
                             namespace=kube_namespace, check=False)
    assert run.returncode != 0
    assert "spec.method.type" in run.stderr and "spec.resources.gpus" in run.stderr
    assert get_job(kube_cluster, kube_namespace, "demo") is None


# ------------------------------------------------------------------------------------------ lifecycle


def test_progress_reports_show_in_kubectl_get(kube_cluster, kube_namespace, operator_up, scripted):
    """The trainer's endpoint, called as the trainer does with the token from the job's Secret."""
    ns = kube_namespace
    apply(kube_cluster, ns, "demo", spec())
    wait_condition(kube_cluster, ns, "demo", "Running")
    token = base64.b64decode(kube_cluster.get(f"/api/v1/namespaces/{ns}/secrets/demo-progress")["data"]["token"])
    url = operator_up.progress_url + PROGRESS_PATH.format(namespace=ns, name="demo")

    def report(step: int, auth: str) -> int:
        body = json.dumps({"event": "progress", "stage": "training", "step": step, "totalSteps": 40,
                           "loss": 2.0 - step / 40, "etaSeconds": 40 - step}).encode()
        req = urllib.request.Request(url, body, {"Authorization": f"Bearer {auth}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert report(10, "not-the-token") == 403
    for step in range(1, 31):  # a burst: written at most once per KUBETUNE_PROGRESS_INTERVAL (1 s here)
        assert report(step, token.decode()) == 202
    progress = wait_for(lambda: ((get_job(kube_cluster, ns, "demo")["status"].get("progress") or {})
                                 .get("step") == 30 and get_job(kube_cluster, ns, "demo")["status"]["progress"]),
                        10, "the last report in status.progress")
    assert progress["percent"] == 75 and progress["totalSteps"] == 40 and progress["etaSeconds"] == 10
    columns = kube_cluster.kubectl("get", "-n", ns, "finetunejob", "demo", "--no-headers").stdout.split()
    assert columns[1] == "Running" and "75" in columns


def test_suspend_stops_the_pod_and_resume_continues_with_a_new_attempt(
    kube_cluster, kube_namespace, operator_up, scripted
):
    ns = kube_namespace
    scripted({"demo-2": succeed(1)})
    apply(kube_cluster, ns, "demo", spec())
    wait_condition(kube_cluster, ns, "demo", "Running")
    apply(kube_cluster, ns, "demo", spec(suspend=True))
    job = wait_condition(kube_cluster, ns, "demo", "Suspended")
    assert job["status"]["phase"] == "Suspended"
    wait_for(lambda: not running_pods(kube_cluster, ns), 30, "the pod to be stopped")
    apply(kube_cluster, ns, "demo", spec())
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    assert job["status"]["attempts"] == 2 and job["status"]["retries"] == 0
    assert condition(job, "Suspended")["reason"] == "Resumed"
    assert {"Suspended", "Resumed"} <= event_reasons(kube_cluster, ns, "demo")


def test_a_spec_change_stops_the_run_and_starts_a_fresh_one(kube_cluster, kube_namespace, operator_up, scripted):
    ns = kube_namespace
    apply(kube_cluster, ns, "demo", spec())
    first = wait_condition(kube_cluster, ns, "demo", "Running")
    scripted({"demo-r2-1": succeed(1)})
    apply(kube_cluster, ns, "demo", spec(training={"learningRate": 1e-4}))
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    st = job["status"]
    assert st["specHash"] != first["status"]["specHash"] and st["attempts"] == 1 and st["run"] == 2
    assert st["podName"] == "demo-r2-1"
    pod = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-r2-1")
    assert pod["metadata"]["labels"]["kubetune.io/spec-hash"] == st["specHash"]
    assert pod["metadata"]["labels"]["kubetune.io/run"] == "2"
    wait_for(lambda: "demo-1" not in pod_names(kube_cluster, ns), 30, "the first run's running pod to be stopped")
    assert "SpecChanged" in event_reasons(kube_cluster, ns, "demo")


def test_a_fixed_spec_runs_under_new_names_and_keeps_the_failed_runs_pod(
    kube_cluster, kube_namespace, operator_up, scripted
):
    """A failed run's pod (its logs, its termination message) stays when the fix starts the next run."""
    ns = kube_namespace
    result = {"ok": False, "reason": "DataInvalid", "message": "dataset.train row 3: 'output' is empty"}
    scripted({"demo-1": [{"phase": "Running", "seconds": 1}, terminate(11, "Error", result)],
              "demo-r2-1": succeed(1)})
    apply(kube_cluster, ns, "demo", spec())
    wait_condition(kube_cluster, ns, "demo", "Failed")
    old_uid = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-1")["metadata"]["uid"]
    apply(kube_cluster, ns, "demo", spec(dataset={"train": {"uri": "s3://data/fixed.jsonl"}}))
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded")
    assert job["status"]["podName"] == "demo-r2-1" and job["status"]["run"] == 2
    assert pod_names(kube_cluster, ns) == ["demo-1", "demo-r2-1"]
    assert kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/demo-1")["metadata"]["uid"] == old_uid
    metric = operator_up.metrics()
    assert "kubetune_job_creation_to_pod_seconds_count" in metric


def test_unschedulable_and_image_pull_failures_say_why(kube_cluster, kube_namespace, operator_up, scripted):
    ns = kube_namespace
    apply(kube_cluster, ns, "big", spec(resources={"gpus": 16, "cpu": "1", "memory": "1Gi"}))
    job = wait_for(lambda: condition(get_job(kube_cluster, ns, "big"), "Scheduled") is not None and
                   condition(get_job(kube_cluster, ns, "big"), "Scheduled")["reason"] == "Unschedulable" and
                   get_job(kube_cluster, ns, "big"), 30, "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(job, "Scheduled")["message"] and job["status"]["phase"] == "Pending"
    scripted({"pull-1": [{"phase": "Pending", "reason": "ErrImagePull", "message": "manifest unknown"}]})
    apply(kube_cluster, ns, "pull", spec(image="registry.example/nope:1"))
    job = wait_condition(kube_cluster, ns, "pull", "Failed", timeout=30)  # after the 3 s grace of the tests
    assert condition(job, "Failed")["reason"] == "ImagePullFailed"
    wait_for(lambda: "pull-1" not in pod_names(kube_cluster, ns), 30, "the pod to be removed")


def test_ttl_after_finished_removes_children_and_keeps_the_job(kube_cluster, kube_namespace, operator_up, scripted):
    ns = kube_namespace
    scripted({"demo-1": succeed(1)})
    apply(kube_cluster, ns, "demo", spec(ttlSecondsAfterFinished=2))
    wait_condition(kube_cluster, ns, "demo", "Succeeded")
    wait_for(lambda: pod_names(kube_cluster, ns) == [] and
             kube_cluster.get(f"/api/v1/namespaces/{ns}/configmaps/demo-config") is None and
             kube_cluster.get(f"/api/v1/namespaces/{ns}/secrets/demo-progress") is None, 30, "TTL cleanup")
    job = get_job(kube_cluster, ns, "demo")
    assert job["status"]["phase"] == "Succeeded" and job["status"]["podName"] == "demo-1"
