"""A multi-node gang on the real API server: `resources.nodes: 2` with 2 processes per pod. The operator builds
the headless Service and the two pods, the node agent runs each pod's `kubetune train` (torchrun's agent; its
two workers are CPU processes on gloo) and stands in for the cluster DNS, so the four processes meet at pod
0's c10d rendezvous over loopback. The adapter equals a one-process run with the same global batch."""

from __future__ import annotations

import json
import time

import pytest
from clusterkit import events, get_job, pod_names, wait_condition
from test_op_training import BUCKET, manifest, s3_secret, tiny_s3  # noqa: F401 - tiny_s3 is a fixture

from fixtures.adapters import assert_same_adapter, assert_trained
from k8s.cluster import LocalCluster
from kubetune_api import parse_job
from kubetune_api.job import MAX_NAME_LENGTH

pytestmark = [pytest.mark.k8s, pytest.mark.s3]


def gang_manifest(name: str, s3, nodes: int, gpus: int, **training) -> dict:
    doc = manifest(name, s3, **training)
    doc["spec"]["resources"].update(gpus=gpus, nodes=nodes)
    return doc


def artefacts(s3, doc: dict, ns: str) -> str:
    return parse_job({**doc, "metadata": {"name": doc["metadata"]["name"], "namespace": ns}}).artifact_root()


def read(s3, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def adapter(s3, root: str) -> dict:
    from safetensors.torch import load

    return load(read(s3, root + "adapter/adapter_model.safetensors"))


def logs(node_agent, ns: str, names: list[str]) -> str:
    return "\n".join(f"--- {n}\n{node_agent.logs(ns, n)[-3000:]}" for n in names)


@pytest.mark.slow
def test_two_pods_of_two_processes_train_the_adapter_one_process_trains(kube_cluster, kube_namespace, operator_up,
                                                                         node_agent, tiny_s3):  # noqa: F811
    ns = kube_namespace
    s3_secret(kube_cluster, ns, tiny_s3)
    gang = gang_manifest("gang", tiny_s3, nodes=2, gpus=2, maxSteps=3, batchSize=1)
    one = gang_manifest("one", tiny_s3, nodes=1, gpus=0, maxSteps=3, batchSize=4)
    kube_cluster.apply(gang, namespace=ns)
    kube_cluster.apply(one, namespace=ns)
    try:
        job = wait_condition(kube_cluster, ns, "gang", "Succeeded", timeout=500)
        wait_condition(kube_cluster, ns, "one", "Succeeded", timeout=300)
    except Exception:
        print(logs(node_agent, ns, ["gang-1-0", "gang-1-1", "one-1"]))
        raise
    st = job["status"]
    assert st["worldSize"] == 4 and st["attempts"] == 1 and st["podName"] == "gang-1-0"
    assert pod_names(kube_cluster, ns) == ["gang-1-0", "gang-1-1", "one-1"]
    service = kube_cluster.get(f"/api/v1/namespaces/{ns}/services/gang-gang")
    assert service["spec"]["clusterIP"] == "None"
    pod = kube_cluster.get(f"/api/v1/namespaces/{ns}/pods/gang-1-1")
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("gang-1-1", "gang-gang")

    gang_root, one_root = artefacts(tiny_s3, gang, ns), artefacts(tiny_s3, one, ns)
    start = json.loads(read(tiny_s3, gang_root + "train-log.jsonl").splitlines()[0])
    assert start["event"] == "start" and start["worldSize"] == 4, "four processes in two pods trained"
    gang_adapter = adapter(tiny_s3, gang_root)
    assert_same_adapter(adapter(tiny_s3, one_root), gang_adapter)
    assert_trained(gang_adapter)


def _wait_for(what, condition, timeout: float) -> None:
    LocalCluster.wait_for(condition, timeout, what)


@pytest.mark.slow
def test_a_pod_killed_mid_run_restarts_the_gang_and_every_rank_resumes(kube_cluster, kube_namespace, operator_up,
                                                                        node_agent, tiny_s3):  # noqa: F811
    ns = kube_namespace
    s3_secret(kube_cluster, ns, tiny_s3)
    doc = gang_manifest("kill", tiny_s3, nodes=2, gpus=1, maxSteps=6, batchSize=2)
    doc["spec"]["checkpoint"] = {"everySteps": 1, "keep": 1}
    kube_cluster.apply(doc, namespace=ns)
    root = artefacts(tiny_s3, doc, ns)
    bucket, _, prefix = (root + "checkpoints/").removeprefix("s3://").partition("/")

    def checkpointed() -> bool:
        return bool(tiny_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount"))

    try:
        _wait_for("a checkpoint of attempt 1", checkpointed, 400)
        kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}/pods/kill-1-1")
        job = wait_condition(kube_cluster, ns, "kill", "Succeeded", timeout=500)
        _check_restarted_gang(kube_cluster, ns, job, tiny_s3, root)
    except Exception:
        print(logs(node_agent, ns, ["kill-1-0", "kill-1-1", "kill-2-0", "kill-2-1"]))
        print("\n".join(f"{e['reason']}: {e['message']}" for e in events(kube_cluster, ns, "kill")))
        raise


def _check_restarted_gang(kube_cluster, ns: str, job: dict, s3, root: str) -> None:
    st = job["status"]
    assert st["attempts"] == 2 and st["retries"] == 0, "a lost pod is a disruption: no retry used"
    names = pod_names(kube_cluster, ns)
    assert sorted(n for n in names if n.startswith("kill-2")) == ["kill-2-0", "kill-2-1"], names
    assert "kill-1-1" not in names and not any(n.startswith("kill-3") for n in names), "one gang per attempt"
    preempted = [e["message"] for e in events(kube_cluster, ns, "kill") if e["reason"] == "Preempted"]
    assert preempted and "kill-1-1" in preempted[0], "the status and events name the lost pod"
    metrics = json.loads(read(s3, root + "metrics.json"))
    assert (metrics["training"]["resumedFrom"] or 0) >= 1, "the second gang resumed from the checkpoint"
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=root.removeprefix(f"s3://{BUCKET}/"))
    adapters = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("adapter_model.safetensors")]
    assert len(adapters) == 1, adapters


def test_an_operator_killed_while_creating_gangs_never_makes_two_for_one_attempt(
        kube_cluster, kube_namespace, operator_up, scripted):
    """SIGKILL at several points while 4-pod gangs are being created: the restarted operator adopts the pods
    it finds and creates only the missing ones; every job ends with exactly one gang of attempt 1. (A real
    gang's pods wait at the rendezvous for the missing ones; the scripted ones run 30 s, longer than the
    operator's restarts take.)"""
    from clusterkit import finetunejob, job_spec, succeed

    ns = kube_namespace
    names = [f"g{i}" for i in range(6)]
    scripted({f"{n}-1-{i}": succeed(30) for n in names for i in range(4)})
    for n in names:
        spec = job_spec(resources={"gpus": 1, "nodes": 4, "cpu": "1", "memory": "1Gi"})
        kube_cluster.request("POST", f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs", finetunejob(n, spec))
    for delay in (0.3, 0.6):
        time.sleep(delay)
        operator_up.kill()
        operator_up.start()
    try:
        for n in names:
            wait_condition(kube_cluster, ns, n, "Succeeded", timeout=120)
    finally:
        print(pod_names(kube_cluster, ns))
    assert pod_names(kube_cluster, ns) == sorted(f"{n}-1-{i}" for n in names for i in range(4))
    assert all(get_job(kube_cluster, ns, n)["status"]["attempts"] == 1 for n in names)


def test_a_gang_whose_pod_names_would_be_too_long_fails_with_no_pod_and_no_service(
        kube_cluster, kube_namespace, operator_up):
    """A 52-character name, 64 pods and 20 retries: run 999's longest hostname, `<name>-r999-21-63`, is 63
    characters; run 1000's would be 64, so the spec change that starts run 1000 (and resumes the job) fails
    it before any pod (the first attempt's 64 pods, `<name>-r1000-1-<index>`, would have been accepted)."""
    from clusterkit import JOBS, finetunejob, job_spec

    ns, name = kube_namespace, "g" * MAX_NAME_LENGTH
    spec = job_spec(max_retries=20, suspend=True, resources={"gpus": 1, "nodes": 64, "cpu": "1", "memory": "1Gi"})
    path = f"{JOBS.format(ns=ns)}/{name}"
    kube_cluster.request("POST", JOBS.format(ns=ns), finetunejob(name, spec))
    wait_condition(kube_cluster, ns, name, "Suspended")
    # 998 spec changes later, as the operator would have recorded them; then one more.
    kube_cluster.request("PATCH", f"{path}/status", {"status": {"run": 999}},
                         content_type="application/merge-patch+json")
    _wait_for("run 999", lambda: get_job(kube_cluster, ns, name)["status"]["run"] == 999, 30)
    kube_cluster.request("PATCH", path, {"spec": {"suspend": False, "training": {"learningRate": 1e-4}}},
                         content_type="application/merge-patch+json")
    job = wait_condition(kube_cluster, ns, name, "Failed")
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and job["status"]["run"] == 1000, failed
    assert f"'{name}-r1000-21-63'" in failed["message"] and "would be 64 characters" in failed["message"]
    assert pod_names(kube_cluster, ns) == []
    assert kube_cluster.get(f"/api/v1/namespaces/{ns}/services/{name}-gang") is None
