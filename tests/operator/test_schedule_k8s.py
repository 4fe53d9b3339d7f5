"""FineTuneSchedule on the real API server: the operator process, the node agent running the probe pod's
real `kubetune data-version` against a SeaweedFS S3 server, a schedule every 3 seconds (croniter's seconds
field) and scripted trainer pods (no training: the schedule is what is under test)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubetune_api.spec import S3Spec

pytestmark = [pytest.mark.k8s, pytest.mark.s3]

BUCKET = "kt-schedule"
KEY = "data/train.jsonl"
SCHEDULES = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetuneschedules"
JOBS = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"


def put_data(s3, rows: int) -> None:
    body = "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(rows)).encode()
    s3.client().put_object(Bucket=BUCKET, Key=KEY, Body=body)


def data_version(s3, spec: dict, monkeypatch) -> str:
    """What the probe and the trainer compute, computed here from the same listing."""
    from kubetune_api import parse_spec
    from kubetune_api.dataversion import data_version as digest
    from kubetune_trainer.dataversion import list_inputs
    from kubetune_trainer.storage import Storage

    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    parsed = parse_spec(spec)
    return digest(list_inputs(parsed, Storage(S3Spec.model_validate(spec["storage"]["s3"]))))


def scheduled_jobs(cluster, ns: str) -> list[dict]:
    items = (cluster.get(JOBS.format(ns=ns) + "?labelSelector=kubetune.io%2Fschedule-name%3Dnightly")
             or {}).get("items") or []
    return sorted(items, key=lambda j: j["metadata"]["name"])


def schedule_status(cluster, ns: str) -> dict:
    return (cluster.get(f"{SCHEDULES.format(ns=ns)}/nightly") or {}).get("status") or {}


def test_schedule_creates_jobs_on_time_only_for_new_data_and_survives_restarts(
        kube_cluster, kube_namespace, operator_up, node_agent, s3_server, monkeypatch):
    ns = kube_namespace
    s3_server.make_bucket(BUCKET)
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}})
    spec = {"model": {"uri": f"s3://{BUCKET}/models/base/"}, "dataset": {"train": {"uri": f"s3://{BUCKET}/{KEY}"}},
            "output": {"uri": f"s3://{BUCKET}/runs/"}, "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
            "storage": {"s3": {"endpoint": s3_server.endpoint, "addressingStyle": "path", "secretRef": {"name": "s3"}}}}
    put_data(s3_server, 4)
    current = {"version": data_version(s3_server, spec, monkeypatch)}

    def script_for(pod: dict) -> list:
        name = pod["metadata"]["name"]
        if name.startswith("nightly-probe-"):
            return [{"run": True}]  # the real `kubetune data-version`, reading S3 with the Secret's keys
        job = name.rsplit("-", 1)[0]
        result = {"ok": True, "reason": "Completed", "dataVersion": current["version"],
                  "artifacts": {"adapter": f"s3://{BUCKET}/runs/{ns}/{job}/h/adapter/"}}
        return [{"phase": "Running", "seconds": 0.5}, {"terminate": {"exitCode": 0, "reason": "Completed",
                                                                     "message": json.dumps(result)}}]

    with node_agent.scripted(script_for):
        kube_cluster.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule",
                            "metadata": {"name": "nightly"},
                            "spec": {"schedule": "* * * * * */3", "successfulJobsHistoryLimit": 5,
                                     "jobTemplate": {"spec": spec}}}, namespace=ns)
        first = kube_cluster.wait_for(lambda: scheduled_jobs(kube_cluster, ns), 60, "the first scheduled job")
        # An operator killed as soon as it created a job (its status maybe not yet written) creates no
        # second job for that time when it comes back.
        operator_up.kill()
        operator_up.start()
        (job,) = first
        stamp = int(job["metadata"]["name"].removeprefix("nightly-"))
        assert stamp % 3 == 0, "created for a scheduled time, named after it"
        assert job["metadata"]["annotations"]["kubetune.io/data-version"] == current["version"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSchedule"

        def passed_and_unchanged():
            st = schedule_status(kube_cluster, ns)
            later = st.get("lastScheduleTime", "") > datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return st.get("lastOutcome") == "DataUnchanged" and later and st

        st = kube_cluster.wait_for(passed_and_unchanged, 60, "a later time skipped for unchanged data")
        assert [j["metadata"]["name"] for j in scheduled_jobs(kube_cluster, ns)] == [job["metadata"]["name"]]
        assert st["lastPassingRun"]["name"] == job["metadata"]["name"]
        assert st["latestAdapter"] == f"s3://{BUCKET}/runs/{ns}/{job['metadata']['name']}/h/adapter/"
        assert st["lastSuccessfulRun"]["dataVersion"] == current["version"]

        # New data at the same URI while the operator is down: one new job when it is back, for one time.
        operator_up.kill()
        put_data(s3_server, 5)
        current["version"] = data_version(s3_server, spec, monkeypatch)
        operator_up.start()
        jobs = kube_cluster.wait_for(lambda: len(scheduled_jobs(kube_cluster, ns)) == 2 and scheduled_jobs(kube_cluster, ns),
                                     60, "a job for the new data")
        second = jobs[1]
        assert second["metadata"]["annotations"]["kubetune.io/data-version"] == current["version"]
        kube_cluster.wait_for(
            lambda: (schedule_status(kube_cluster, ns).get("lastPassingRun") or {}).get("name")
            == second["metadata"]["name"], 60, "the second job to pass")
        kube_cluster.wait_for(lambda: schedule_status(kube_cluster, ns).get("lastOutcome") == "DataUnchanged", 60,
                              "unchanged data again")
        assert len(scheduled_jobs(kube_cluster, ns)) == 2
        reasons = {e["reason"] for e in (kube_cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items", [])
                   if e["involvedObject"].get("kind") == "FineTuneSchedule"}
        assert {"JobCreated", "DataUnchanged"} <= reasons
