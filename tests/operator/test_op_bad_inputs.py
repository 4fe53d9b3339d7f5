"""The cluster side of the bad-input and fault catalogue (issue 11): each case is a FineTuneJob a user could
apply, or something the cluster could do to its pod, fed through the real operator process, the real
kube-apiserver and the node agent (the kubelet's stand-in). Each row says the typed reason the job must end
with (or wait with), words its message must hold (the object at fault and what to do), and how many pods it
may take: a permanent error is never retried. All rows run at once next to a healthy job, which must
still succeed: one bad job never stops the operator serving the others. The spec, data and storage rows are
in tests/trainer and tests/api."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from clusterkit import condition, events, finetunejob, get_job, succeed, terminate

pytestmark = pytest.mark.k8s

MEMORY = "1Gi"
LLAMA_8B = {"layers": 32, "hidden": 4096, "intermediate": 14336, "heads": 32, "kvHeads": 8, "vocab": 128256}


def spec(**extra: Any) -> dict:
    base = {
        "model": {"uri": "s3://models/base/"},
        "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
        "output": {"uri": "s3://out/"},
        "resources": {"gpus": 1, "cpu": "1", "memory": MEMORY},
        "failurePolicy": {"maxRetries": 2, "backoffSeconds": 1},
    }
    base.update(extra)
    return base


def running(seconds: float = 1) -> dict:
    return {"phase": "Running", "seconds": seconds}


def result(reason: str, message: str) -> dict:
    return {"ok": False, "reason": reason, "message": message}


@dataclass
class Case:
    name: str
    spec: dict
    reason: str  # the Failed reason; for a job that waits, the reason of `condition`
    words: tuple[str, ...]  # in the condition's message (and the Warning Event's)
    script: list | None = None  # for pod <name>-1; other attempts succeed
    pods: int = 1  # attempts the job may use
    condition: str = "Failed"
    status: str = "True"
    retries: int = 0
    later: dict[str, list] = field(default_factory=dict)  # scripts for further attempts


AFFINITY_422 = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}]}}}

CASES = [
    # Stuck before the container starts: the kubelet retries forever; the job gives up after the grace.
    Case("no-s3-secret", spec(storage={"s3": {"secretRef": {"name": "s3-nowhere"}}}), "SecretNotFound",
         ("Secret s3-nowhere", "spec.storage.s3.secretRef", "does not exist")),
    Case("no-s3-key", spec(storage={"s3": {"secretRef": {"name": "half-creds"}}}), "SecretNotFound",
         ("Secret half-creds", "has no key AWS_SECRET_ACCESS_KEY", "spec.storage.s3.secretRef")),
    Case("renamed-key", spec(storage={"s3": {"secretRef": {"name": "half-creds", "accessKeyIdKey": "id"}}}),
         "SecretNotFound", ("Secret half-creds", "has no key id")),
    Case("no-hub-secret", spec(model={"uri": "hf://org/gated-model", "secretRef": {"name": "hub-nowhere"}}),
         "SecretNotFound", ("Secret hub-nowhere", "spec.model.secretRef")),
    Case("bad-image", spec(image="registry.example/nope:1"), "ImagePullFailed", ("could not pull its image",),
         script=[{"phase": "Pending", "reason": "ErrImagePull", "message": "manifest unknown"}]),
    # Refused by the API server: fails at once, with its words, no pod.
    Case("pod-422", spec(resources={"gpus": 1, "cpu": "1", "memory": MEMORY, "affinity": AFFINITY_422}),
         "PodRejected", ("rejected pod pod-422-1", "Near"), pods=0),
    # Refused for now (403 from the Priority admission plugin): said, and tried again every 30 s.
    Case("no-priority-class", spec(resources={"gpus": 1, "cpu": "1", "memory": MEMORY,
                                              "priorityClassName": "nowhere-priority"}),
         "PodCreateFailed", ("refused pod no-priority-class-1", "nowhere-priority"), condition="Scheduled",
         status="False", pods=0),
    # Refused by the API model: no pod either.
    Case("bad-spec", spec(training={"epochs": 2, "maxSteps": 10}), "InvalidSpec", ("spec.training",), pods=0),
    # Cannot fit its GPU by the memory estimate (Llama 3.1 8B, LoRA, 8 x 2048 tokens on a 22.5 GiB L4): no pod.
    Case("too-big-for-gpu", spec(model={"uri": "s3://models/base/", "shape": LLAMA_8B},
                                 dataset={"train": {"uri": "s3://data/train.jsonl"}, "maxSeqLength": 2048},
                                 training={"batchSize": 8},
                                 resources={"gpus": 1, "gpuProduct": "NVIDIA-L4", "cpu": "1", "memory": MEMORY}),
         "InsufficientGPUMemory", ("NVIDIA-L4", "exceeds the GPU's 22.5 GiB", "would fit:"), pods=0),
    # The trainer's typed answers: permanent, never retried.
    Case("trainer-invalid", spec(), "InvalidSpec", ("method.loraRank",),
         script=[running(), terminate(10, "Error", result("InvalidSpec", "method.loraRank: 0 is below 1"))]),
    Case("data-invalid", spec(), "DataInvalid", ("dataset.train row 3",),
         script=[running(), terminate(11, "Error", result("DataInvalid", "dataset.train row 3: 'output' is empty"))]),
    Case("access-denied", spec(), "AccessDenied", ("s3://data/train.jsonl",),
         script=[running(), terminate(12, "Error", result("AccessDenied", "GET s3://data/train.jsonl: 403"))]),
    Case("trainer-gpu-memory", spec(), "InsufficientGPUMemory", ("exceeds the GPU's 15.0 GiB",),
         script=[running(), terminate(16, "Error", result("InsufficientGPUMemory", "estimated peak 21.0 GiB per GPU "
                                                                               "exceeds the GPU's 15.0 GiB"))]),
    Case("not-found", spec(), "NotFound", ("s3://models/base/",),
         script=[running(), terminate(13, "Error", result("NotFound", "s3://models/base/ holds no model"))]),
    Case("deadline", spec(activeDeadlineSeconds=3), "DeadlineExceeded", ("activeDeadlineSeconds",),
         script=[running(30)]),
    # Retryable, with the retries used up.
    Case("oom", spec(failurePolicy={"maxRetries": 0}), "RetriesExhausted",
         ("OOMKilled", f"memory limit of {MEMORY}", "qlora", "training.batchSize", "gradientCheckpointing"),
         script=[running(), terminate(137, "OOMKilled")]),
    Case("segfault", spec(failurePolicy={"maxRetries": 1, "backoffSeconds": 1}), "RetriesExhausted",
         ("exit code 139", "maxRetries (1) used up"), script=[running(), terminate(139)], pods=2, retries=1,
         later={"segfault-2": [running(), terminate(139)]}),
    # Disruptions use no retry, even with maxRetries 0.
    Case("evicted", spec(failurePolicy={"maxRetries": 0}), "Completed", (), condition="Succeeded", pods=2,
         script=[running(), {"evict": "The node was low on resource: memory."}]),
    # Waiting, not failed: the job says why.
    Case("no-runtime", spec(runtimeRef="no-such-runtime"), "RuntimeNotFound", ("no-such-runtime",),
         condition="Validated", status="False", pods=0),
    Case("too-many-gpus", spec(resources={"gpus": 16, "cpu": "1", "memory": MEMORY}), "Unschedulable",
         ("Insufficient nvidia.com/gpu",), condition="Scheduled", status="False"),
]


def settled(job: dict | None, case: Case) -> bool:
    got = condition(job, case.condition)
    return bool(got and got["status"] == case.status and got["reason"] == case.reason)


def test_the_cluster_side_catalogue(kube_cluster, kube_namespace, operator_up, scripted):
    ns = kube_namespace
    assert len(CASES) >= 15
    kube_cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "half-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIA-TEST"},  # no AWS_SECRET_ACCESS_KEY
    })
    scripts = {"healthy-1": succeed(2)}
    for case in CASES:
        scripts[f"{case.name}-1"] = case.script or [running(30)]
        scripts.update({f"{case.name}-{n}": succeed(1) for n in range(2, 4)})
        scripts.update(case.later)
    scripted(scripts)
    healthy = Case("healthy", spec(), "Completed", (), condition="Succeeded")
    for case in [*CASES, healthy]:
        kube_cluster.apply(finetunejob(case.name, case.spec), namespace=ns)

    deadline, pending = time.monotonic() + 90, {c.name: c for c in [*CASES, healthy]}
    while pending and time.monotonic() < deadline:
        for name, case in list(pending.items()):
            if settled(get_job(kube_cluster, ns, name), case):
                del pending[name]
        time.sleep(0.5)
    assert not pending, {n: (get_job(kube_cluster, ns, n) or {}).get("status") for n in pending}

    time.sleep(2)  # time enough for a wrong retry to show
    pods = (kube_cluster.get(f"/api/v1/namespaces/{ns}/pods") or {}).get("items") or []
    for case in CASES:
        job = get_job(kube_cluster, ns, case.name)
        got, st = condition(job, case.condition), job["status"]
        for words in case.words:
            assert words in got["message"], f"{case.name}: {words!r} not in {got['message']!r}"
        assert st.get("retries", 0) == case.retries, f"{case.name}: {st}"
        mine = sorted(p["metadata"]["name"] for p in pods if p["metadata"]["name"].startswith(f"{case.name}-"))
        assert len(mine) <= case.pods and st.get("attempts", 0) == case.pods, f"{case.name}: {mine} {st}"
        if case.condition == "Failed":
            live = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] in mine
                    and p["status"].get("phase") not in ("Succeeded", "Failed")]
            assert not live or all(p["metadata"].get("deletionTimestamp") for p in pods
                                   if p["metadata"]["name"] in live), f"{case.name}: {live} still running"
            warning = [e for e in events(kube_cluster, ns, case.name) if e["reason"] == case.reason]
            assert warning and warning[0]["type"] == "Warning", f"{case.name}: no Warning {case.reason} event"
            assert all(words in warning[0]["message"] for words in case.words[:1]), warning[0]["message"]
