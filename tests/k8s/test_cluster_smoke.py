"""Proves the test infrastructure: a real kube-apiserver + controller manager, and the node agent."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from k8s.cluster import KubeHTTPError, LocalCluster
from k8s.node_agent import SCRIPT_ANNOTATION, NodeAgent

pytestmark = pytest.mark.k8s


def pod_manifest(name: str, command: list[str], **spec) -> dict:
    container = {"name": "main", "image": "busybox:1.36", "command": command}
    container.update(spec.pop("container", {}))
    annotations = spec.pop("annotations", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


def create_pod(cluster: LocalCluster, ns: str, manifest: dict) -> dict:
    return cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", manifest)


def get_pod(cluster: LocalCluster, ns: str, name: str) -> dict | None:
    return cluster.get(f"/api/v1/namespaces/{ns}/pods/{name}")


def wait_pod(
    cluster: LocalCluster, ns: str, name: str, predicate, timeout: float = 30, what: str = ""
) -> dict:
    last: dict = {}

    def check():
        nonlocal last
        last = get_pod(cluster, ns, name) or {}
        return last if last and predicate(last) else None

    try:
        return cluster.wait_for(check, timeout, what or f"pod {ns}/{name}")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last status: {json.dumps(last.get('status'), indent=1)}") from None


def phase_in(*phases):
    return lambda p: p.get("status", {}).get("phase") in phases


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_cluster_namespace_and_rbac(kube_cluster: LocalCluster, tmp_path):
    c = kube_cluster
    assert c.startup_seconds is not None
    assert c.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    ns = "smoke-rbac"
    c.create_namespace(ns)
    assert c.kubectl("auth", "can-i", "create", "pods", "-n", ns).stdout.strip() == "yes"

    c.kubectl("-n", ns, "create", "serviceaccount", "nobody")
    token = c.service_account_token(ns, "nobody")
    kubeconfig = c.make_token_kubeconfig(token, tmp_path / "nobody.kubeconfig", namespace=ns)

    denied = c.kubectl("auth", "can-i", "list", "pods", kubeconfig=kubeconfig, check=False)
    assert denied.stdout.strip() == "no"
    get = c.kubectl("get", "pods", kubeconfig=kubeconfig, check=False)
    assert get.returncode != 0 and "forbidden" in get.stderr.lower()
    with pytest.raises(KubeHTTPError) as err:
        c.request("GET", f"/api/v1/namespaces/{ns}/secrets", token=token)
    assert err.value.status == 403

    # The same token works once a Role allows it (so it is RBAC saying no above, not authentication).
    c.apply(f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: nobody-reads-pods, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: nobody, namespace: {ns}}}]
""")
    c.wait_for(
        lambda: (
            c.kubectl("auth", "can-i", "list", "pods", kubeconfig=kubeconfig, check=False).stdout.strip()
            == "yes"
        ),
        10,
        "the RoleBinding to take effect",
    )
    assert c.kubectl("get", "pods", kubeconfig=kubeconfig).returncode == 0
    assert (
        c.kubectl("auth", "can-i", "list", "secrets", kubeconfig=kubeconfig, check=False).stdout.strip()
        == "no"
    )
    c.delete_namespace(ns)


def test_node_registered(kube_cluster: LocalCluster, node_agent: NodeAgent):
    node = kube_cluster.get("/api/v1/nodes/test-node")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_pod_env_volumes_termination_message(
    kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str
):
    c, ns = kube_cluster, kube_namespace
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": ns},
            "stringData": {"foo": "from-secret"},
        }
    )
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": ns},
            "data": {"k": "config-content"},
        }
    )
    manifest = pod_manifest(
        "hello",
        ["sh", "-c", "echo hi $FOO > /out/x; cat /cfg/k > /dev/termination-log"],
        container={
            "env": [{"name": "FOO", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "foo"}}}],
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "out", "mountPath": "/out"}],
        },
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "out", "emptyDir": {"medium": "Memory"}},
        ],
    )
    manifest["metadata"]["namespace"] = ns
    c.apply(manifest)  # through the real kubectl

    pod = wait_pod(c, ns, "hello", phase_in("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["spec"]["nodeName"] == "test-node"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"], t["message"]) == (0, "Completed", "config-content")
    assert t["startedAt"] and t["finishedAt"]
    assert (node_agent.pod_dir(ns, "hello") / "volumes" / "out" / "x").read_text() == "hi from-secret\n"
    scheduled = {cond["type"]: cond["status"] for cond in pod["status"]["conditions"]}
    assert scheduled["PodScheduled"] == "True"


def test_pod_exit_code(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    create_pod(
        c,
        ns,
        pod_manifest(
            "fails",
            ["sh", "-c", "echo oops >&2; exit 3"],
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    pod = wait_pod(c, ns, "fails", phase_in("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    t = terminated(pod)
    assert (t["exitCode"], t["reason"]) == (3, "Error")
    assert t["message"].strip() == "oops"  # FallbackToLogsOnError
    assert node_agent.logs(ns, "fails").strip() == "oops"


def test_garbage_collection(kube_cluster: LocalCluster, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    owner = c.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "owner"}, "data": {"a": "b"}}
    )
    c.request(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            }
        },
    )
    c.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/owner")
    c.wait_for(
        lambda: c.get(f"/api/v1/namespaces/{ns}/configmaps/dependent") is None,
        60,
        "the garbage collector to delete the dependent ConfigMap",
    )


def test_memory_limit_oomkilled(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    create_pod(
        c,
        ns,
        pod_manifest(
            "hog",
            ["python3", "-c", "import time; x = b'a' * (400 << 20); time.sleep(60)"],
            container={"resources": {"limits": {"memory": "100Mi"}}},
        ),
    )
    pod = wait_pod(c, ns, "hog", phase_in("Succeeded", "Failed"))
    t = terminated(pod)
    assert (pod["status"]["phase"], t["exitCode"], t["reason"]) == ("Failed", 137, "OOMKilled")


def test_unschedulable(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    create_pod(c, ns, pod_manifest("picky", ["true"], nodeSelector={"gpu-type": "h100"}))
    create_pod(
        c, ns, pod_manifest("greedy", ["true"], container={"resources": {"limits": {"nvidia.com/gpu": 16}}})
    )
    create_pod(
        c,
        ns,
        pod_manifest(
            "fits",
            ["true"],
            nodeSelector={"kubernetes.io/hostname": "test-node"},
            container={"resources": {"limits": {"nvidia.com/gpu": 8}}},
        ),
    )

    def unschedulable(p):
        cond = next((x for x in p["status"].get("conditions") or [] if x["type"] == "PodScheduled"), {})
        return cond.get("status") == "False" and cond.get("reason") == "Unschedulable" and cond

    picky = wait_pod(c, ns, "picky", unschedulable)
    assert "didn't match node selector" in unschedulable(picky)["message"]
    greedy = wait_pod(c, ns, "greedy", unschedulable)
    assert "Insufficient nvidia.com/gpu" in unschedulable(greedy)["message"]
    assert wait_pod(c, ns, "fits", phase_in("Succeeded"))["spec"]["nodeName"] == "test-node"
    assert "nodeName" not in get_pod(c, ns, "picky")["spec"]
    events = c.request("GET", f"/api/v1/namespaces/{ns}/events")["items"]
    assert any(e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == "picky" for e in events)


def test_delete_running_pod(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    create_pod(c, ns, pod_manifest("sleeper", ["sleep", "300"]))
    pod = wait_pod(c, ns, "sleeper", phase_in("Running"))
    state = pod["status"]["containerStatuses"][0]
    assert state["ready"] and state["state"]["running"]["startedAt"] and pod["status"]["podIP"] == "127.0.0.1"
    t0 = time.monotonic()
    c.kubectl("-n", ns, "delete", "pod", "sleeper", "--wait=true", "--timeout=30s")
    assert get_pod(c, ns, "sleeper") is None
    assert time.monotonic() - t0 < 10  # SIGTERM ends `sleep` at once; no waiting for the grace period


def test_active_deadline(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    create_pod(c, ns, pod_manifest("slow", ["sleep", "300"], activeDeadlineSeconds=2))
    pod = wait_pod(c, ns, "slow", phase_in("Succeeded", "Failed"))
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "DeadlineExceeded")


def test_scripted_failures(kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str):
    c, ns = kube_cluster, kube_namespace
    script = [{"phase": "Pending", "reason": "ErrImagePull", "message": "pull access denied", "seconds": 30}]
    create_pod(c, ns, pod_manifest("no-image", ["true"], annotations={SCRIPT_ANNOTATION: json.dumps(script)}))
    create_pod(
        c,
        ns,
        pod_manifest(
            "evicted",
            ["true"],
            annotations={
                SCRIPT_ANNOTATION: json.dumps(
                    [{"phase": "Running", "seconds": 0.5}, {"evict": "low on memory"}]
                )
            },
        ),
    )

    def oom_first_attempt(pod):  # the agent-level hook: attempt 1 is OOM-killed after 1 s of running
        if (pod["metadata"].get("labels") or {}).get("attempt") == "1":
            return [{"run": True, "seconds": 1}, {"terminate": {"exitCode": 137, "reason": "OOMKilled"}}]
        return None

    with node_agent.scripted(oom_first_attempt):
        for attempt in ("1", "2"):
            manifest = pod_manifest(
                f"train-{attempt}", ["sh", "-c", "sleep 2; printf done > /dev/termination-log"]
            )
            manifest["metadata"]["labels"] = {"attempt": attempt}
            create_pod(c, ns, manifest)
        first = wait_pod(c, ns, "train-1", phase_in("Succeeded", "Failed"))
        second = wait_pod(c, ns, "train-2", phase_in("Succeeded", "Failed"))
    assert (first["status"]["phase"], terminated(first)["reason"], terminated(first)["exitCode"]) == (
        "Failed",
        "OOMKilled",
        137,
    )
    assert (second["status"]["phase"], terminated(second)["message"]) == ("Succeeded", "done")

    waiting = wait_pod(c, ns, "no-image", lambda p: p["status"].get("containerStatuses"))
    reason = waiting["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
    assert waiting["status"]["phase"] == "Pending" and reason in ("ErrImagePull", "ImagePullBackOff")
    evicted = wait_pod(c, ns, "evicted", phase_in("Failed"))
    assert (evicted["status"]["reason"], evicted["status"]["message"]) == ("Evicted", "low on memory")


def test_kubectl_errors_are_readable(kube_cluster: LocalCluster):
    with pytest.raises(subprocess.CalledProcessError) as err:
        kube_cluster.kubectl("get", "pods", "-n", "default", "does-not-exist")
    assert "NotFound" in str(err.value) or "not found" in str(err.value)


def test_job_controller_and_init_container(
    kube_cluster: LocalCluster, node_agent: NodeAgent, kube_namespace: str
):
    c, ns = kube_cluster, kube_namespace
    c.apply(f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: job, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      initContainers:
      - {{name: init, image: busybox, command: [sh, -c, "echo prepared > /work/state"],
          volumeMounts: [{{name: work, mountPath: /work}}]}}
      containers:
      - {{name: main, image: busybox, command: [sh, -c, "cat state > /dev/termination-log"], workingDir: /work,
          volumeMounts: [{{name: work, mountPath: /work}}]}}
      volumes: [{{name: work, emptyDir: {{}}}}]
""")
    job = c.wait_for(
        lambda: (j := c.get(f"/apis/batch/v1/namespaces/{ns}/jobs/job"))["status"].get("succeeded") and j,
        30,
        "the Job to succeed",
    )
    assert any(cond["type"] == "Complete" for cond in job["status"]["conditions"])
    pods = c.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3Djob")["items"]
    assert [terminated(p)["message"] for p in pods] == ["prepared\n"]
