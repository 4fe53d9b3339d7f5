"""A `gpus: 2` job on the real API server: the operator builds the torchrun pod, the node agent runs its
`kubetune train` (the entrypoint a GPU node runs; here its two workers are CPU processes on gloo), and the
job trains to Succeeded with its world size in the status and in `kubectl describe`."""

from __future__ import annotations

import json

import pytest
from clusterkit import wait_condition
from test_op_training import manifest, s3_secret, tiny_s3  # noqa: F401 - tiny_s3 is a fixture

from kubetune_api import parse_job

pytestmark = [pytest.mark.k8s, pytest.mark.s3]


def test_a_two_gpu_job_trains_on_two_processes_to_success(kube_cluster, kube_namespace, operator_up, node_agent,
                                                         tiny_s3):  # noqa: F811
    ns = kube_namespace
    s3_secret(kube_cluster, ns, tiny_s3)
    doc = manifest("pair", tiny_s3, maxSteps=4, batchSize=2)
    doc["spec"]["resources"]["gpus"] = 2
    kube_cluster.apply(doc, namespace=ns)
    try:
        job = wait_condition(kube_cluster, ns, "pair", "Succeeded", timeout=400)
    except Exception:
        print(node_agent.logs(ns, "pair-1")[-5000:])
        raise
    st = job["status"]
    assert st["worldSize"] == 2 and st["attempts"] == 1
    assert "evalLoss" in st["metrics"] and st["progress"]["totalSteps"] == 4
    pod = kube_cluster.request("GET", f"/api/v1/namespaces/{ns}/pods/pair-1")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["kubetune", "train"]
    assert {e["name"]: e.get("value") for e in container["env"]}["PET_NPROC_PER_NODE"] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"

    root = parse_job({**doc, "metadata": {"name": "pair", "namespace": ns}}).artifact_root()
    bucket, _, key = (root + "train-log.jsonl").removeprefix("s3://").partition("/")
    body = tiny_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    start = json.loads(body.splitlines()[0])
    assert start["event"] == "start" and start["worldSize"] == 2, "the pod trained on two processes"
    described = kube_cluster.kubectl("describe", "finetunejob", "pair", "-n", ns).stdout
    assert [line.split() for line in described.splitlines() if "World Size:" in line] == [["World", "Size:", "2"]]
