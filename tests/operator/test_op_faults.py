"""Cluster faults, on the real API server with the real operator process (issue 11): a node going NotReady,
a pod deleted by hand, the API server answering 409 to status patches, and the operator SIGKILLed while 20
jobs are in flight. Each asserts what a user would see: the status says what happened, no retry is used
for a disruption, no status is lost, no pod is created twice and each transition's Event appears once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from clusterkit import condition, events, finetunejob, job_spec, pod_names, succeed, wait_condition

from k8s.cluster import KubeHTTPError, LocalCluster

pytestmark = pytest.mark.k8s


def spec(**extra) -> dict:
    return job_spec(max_retries=0, **extra)


def test_a_not_ready_node_is_named_in_the_status(kube_cluster, kube_namespace, operator_up, scripted, node_agent):
    ns = kube_namespace
    kube_cluster.apply(finetunejob("demo", spec()), namespace=ns)
    wait_condition(kube_cluster, ns, "demo", "Running")
    try:
        node_agent.set_ready(False)
        job = wait_condition(kube_cluster, ns, "demo", "Running", status="Unknown", timeout=30)
        running = condition(job, "Running")
        assert running["reason"] == "NodeNotReady" and "node test-node of pod demo-1" in running["message"]
        assert "Kubelet stopped posting node status" in running["message"]
        assert job["status"]["phase"] == "Unknown"  # not Pending: it was training and may still be
        assert any(e["reason"] == "NodeNotReady" and e["type"] == "Warning" for e in events(kube_cluster, ns, "demo"))
    finally:
        node_agent.set_ready(True)
    job = wait_condition(kube_cluster, ns, "demo", "Running", timeout=30)
    assert condition(job, "Running")["reason"] == "Training"


def test_a_pod_deleted_by_hand_uses_no_retry(kube_cluster, kube_namespace, operator_up, scripted):
    """With maxRetries 0, `kubectl delete pod` of a training pod (it checkpoints on SIGTERM) is a disruption:
    the next attempt starts and the job succeeds."""
    ns = kube_namespace
    scripted({"demo-2": succeed(1)})
    kube_cluster.apply(finetunejob("demo", spec()), namespace=ns)
    wait_condition(kube_cluster, ns, "demo", "Running")
    kube_cluster.kubectl("delete", "-n", ns, "pod", "demo-1", "--wait=false")
    job = wait_condition(kube_cluster, ns, "demo", "Succeeded", timeout=60)
    assert job["status"]["attempts"] == 2 and job["status"]["retries"] == 0
    preempted = [e for e in events(kube_cluster, ns, "demo") if e["reason"] == "Preempted"]
    assert preempted and preempted[0]["type"] == "Warning" and "no retry used" in preempted[0]["message"]


def test_status_patches_answered_409_lose_nothing(kube_cluster, kube_namespace, operator_up, scripted):
    """A user (or a GitOps tool) relabelling the jobs all the time makes the operator's conditional status
    patches answer 409 Conflict; every job still ends with its full status and each Event once."""
    ns, names = kube_namespace, [f"busy-{i}" for i in range(5)]
    conflicts_before = operator_up.log().count("changed while it was reconciled")
    scripted({f"{n}-1": succeed(2, metrics={"evalLoss": 0.5 + i}) for i, n in enumerate(names)})
    stop, edits = threading.Event(), Counter()

    def relabel():
        while not stop.is_set():
            for n in names:
                patch = {"metadata": {"labels": {"touched": str(edits[n])}}}
                try:
                    kube_cluster.request("PATCH", f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs/{n}",
                                         patch, content_type="application/merge-patch+json")
                    edits[n] += 1
                except KubeHTTPError:  # not created yet
                    pass
            time.sleep(0.01)  # often enough that some status patch meets a newer label edit

    for n in names:
        kube_cluster.apply(finetunejob(n, spec()), namespace=ns)
    worker = threading.Thread(target=relabel, daemon=True)
    worker.start()
    try:
        jobs = {n: wait_condition(kube_cluster, ns, n, "Succeeded", timeout=90) for n in names}
    finally:
        stop.set()
        worker.join(10)
    assert min(edits.values()) > 5
    assert operator_up.log().count("changed while it was reconciled") > conflicts_before  # 409s did happen
    for i, n in enumerate(names):
        st = jobs[n]["status"]
        assert st["attempts"] == 1 and st["metrics"] == {"evalLoss": 0.5 + i} and st["completionTime"]
        reasons = Counter(e["reason"] for e in events(kube_cluster, ns, n))
        assert reasons["Completed"] == 1 and reasons["PodCreated"] == 1, reasons
    assert "kubetune_reconcile_errors_total" in operator_up.metrics()


@pytest.mark.slow  # about 40 s on 2 cores
def test_operator_sigkilled_with_20_jobs_in_flight(kube_cluster, kube_namespace, operator_up, scripted):
    """SIGKILL right after 20 jobs are applied (nothing or part of it done), and again while they train: one
    pod per job, every status complete, each recorded transition's Event once (those the first operator
    never posted are posted by the next)."""
    ns, op, names = kube_namespace, operator_up, [f"job-{i:02d}" for i in range(20)]
    scripted({f"{n}-1": succeed(4) for n in names})
    for n in names:
        kube_cluster.apply(finetunejob(n, spec()), namespace=ns)
    op.kill()
    op.start()
    LocalCluster.wait_for(lambda: sum(1 for n in pod_names(kube_cluster, ns)) >= 10, 60, "half of the pods")
    op.kill()
    time.sleep(1)
    op.start()
    jobs = {n: wait_condition(kube_cluster, ns, n, "Succeeded", timeout=120) for n in names}
    assert pod_names(kube_cluster, ns) == sorted(f"{n}-1" for n in names)
    started = Counter(name for name, _ in scripted.seen if name.startswith("job-"))
    assert set(started.values()) == {1}  # no pod was created (and run) twice
    for n, job in jobs.items():
        st = job["status"]
        assert st["attempts"] == 1 and st["phase"] == "Succeeded" and st["startTime"] and st["completionTime"]
        reasons = Counter(e["reason"] for e in events(kube_cluster, ns, n))
        # Every recorded transition has its Event, once. (A pod created just before a SIGKILL may be
        # scheduled before the next operator looks: then the recorded transition is PodScheduled, and
        # PodCreated, never recorded, is never posted.)
        assert max(reasons.values()) == 1, (n, reasons)
        assert reasons["Valid"] == reasons["Completed"] == 1 and reasons["PodCreated"] + reasons["PodScheduled"], (
            n, reasons)
