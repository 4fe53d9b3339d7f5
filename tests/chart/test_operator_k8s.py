"""The operator as the chart runs it, on the real kube-apiserver: the chart installed with helm, then the
operator process started with the rendered Deployment's own command line and environment, authenticated
with the chart ServiceAccount's token (not an admin's). It drives jobs through success, an invalid spec,
a TTL clean-up and a deletion without one 403: the chart's RBAC suffices (test_rbac_k8s.py shows what lies
outside it is forbidden). With two replicas, one leads, the other stands by, and it takes over when the
leader dies: one pod, one status, each transition once (in the namespaced-RBAC mode, so both modes run).

The tests run the operator process themselves, so no other kubetune operator may be running against the
cluster meanwhile (tests/operator's shared one starts after these in `pytest tests`)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k8s.cluster import free_port
from k8s.fixtures import kube_cluster, kube_namespace, node_agent  # noqa: F401
from k8s.process import LoggedProcess

from .helm import InstalledChart, install_chart

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # clusterkit: a plain module
from clusterkit import condition, events, finetunejob, get_job, pod_names, succeed, wait_condition  # noqa: E402

pytestmark = pytest.mark.k8s

BIN = Path(sys.executable).parent
TRAINER_IMAGE = "registry.example/kubetune/trainer:test"
# A 403 as kopf logs it (APIForbiddenError, "Not enough permissions", a failed Event post) or as the
# operator's own client does ("... 403 Forbidden: ...").
DENIED = re.compile(r"forbidden|not enough permissions|failed to post an event", re.IGNORECASE)


class ChartOperator(LoggedProcess):
    """The operator process as the chart's Deployment runs it: the container's command and env from the
    rendered manifest, secretKeyRef and fieldRef resolved as the kubelet would, the chart ServiceAccount's
    kubeconfig standing in for its mounted token. Pods have network namespaces of their own; processes on
    one host do not, so `ports` moves a second replica's listening ports (chart port -> this replica's)."""

    def __init__(self, cluster, chart: InstalledChart, pod_name: str, log_path: Path,
                 ports: dict[int, int] | None = None):
        super().__init__(log_path)
        self.ports = ports or {}
        deployment = next(d for d in chart.docs if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.argv = [self._port(a) for a in container["command"] + container.get("args", [])]
        self.argv[0] = str(BIN / self.argv[0])  # kopf, as the image has it on PATH
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
        for var in container["env"]:
            value = self._value(cluster, chart, pod_name, var)
            env[var["name"]] = self._port(value) if var["name"].endswith("_PORT") else value
        env["KUBECONFIG"] = str(chart.kubeconfig)
        self.env = env
        health = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
        self.health_url = f"http://127.0.0.1:{self.ports.get(health, health)}/healthz"

    def _port(self, text: str) -> str:
        for chart_port, own in self.ports.items():
            text = re.sub(rf"(?<!\d){chart_port}(?!\d)", str(own), text)
        return text

    @staticmethod
    def _value(cluster, chart: InstalledChart, pod_name: str, var: dict) -> str:
        source = var.get("valueFrom")
        if source is None:
            return var["value"]
        if "fieldRef" in source:
            return {"metadata.name": pod_name, "metadata.namespace": chart.namespace}[source["fieldRef"]["fieldPath"]]
        ref = source["secretKeyRef"]  # the kubelet reads it (as admin here), never the operator
        secret = cluster.get(f"/api/v1/namespaces/{chart.namespace}/secrets/{ref['name']}")
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    def start(self, timeout: float = 60) -> ChartOperator:
        self.launch(self.argv, self.env, self.health_url, timeout)  # what the chart's readiness probe asks
        return self


@pytest.fixture(scope="module")
def test_values() -> dict:
    """The chart's values for running its operator on this host: free ports, a progress URL it can reach,
    the test trainer image and short intervals."""
    progress, metrics, health = free_port(), free_port(), free_port()
    return {
        "service": {"progressPort": progress, "metricsPort": metrics},
        "probes": {"port": health},
        "progress": {"url": f"http://127.0.0.1:{progress}", "intervalSeconds": 1},
        "trainer": {"image": TRAINER_IMAGE, "imagePullGraceSeconds": 3},
    }


@pytest.fixture
def operators(tmp_path) -> Iterator[list[ChartOperator]]:
    """Operator processes started by a test, stopped after it."""
    started: list[ChartOperator] = []
    yield started
    for op in started:
        op.stop()


@pytest.fixture
def scripts(node_agent) -> Iterator[dict[str, list]]:  # noqa: F811
    """Trainer pods by name (or by a prefix ending in `*`, the longest wins) -> node agent script; a pod
    without one runs until deleted."""
    table: dict[str, list] = {}

    def script_for(pod: dict) -> list:
        name = pod["metadata"]["name"]
        prefixes = sorted((k for k in table if k.endswith("*") and name.startswith(k[:-1])), key=len)
        return table.get(name) or (table[prefixes[-1]] if prefixes else [{"phase": "Running"}])

    with node_agent.scripted(script_for):
        yield table


def spec(**extra) -> dict:
    return {"model": {"uri": "s3://models/base/"}, "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": "s3://out/"}, **extra}


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return value


def assert_no_denials(*ops: ChartOperator) -> None:
    for op in ops:
        denied = [line for line in op.log().splitlines() if DENIED.search(line)]
        assert not denied, "the chart's RBAC denied the operator:\n" + "\n".join(denied[:20])


@contextlib.contextmanager
def denials_explain_failures(ops: list[ChartOperator]) -> Iterator[None]:
    """A scenario that fails (say, a job that never succeeds) because of a 403 says so."""
    try:
        yield
    except (AssertionError, TimeoutError):
        assert_no_denials(*ops)
        raise


def test_the_operator_runs_with_only_the_chart_rbac(kube_cluster, helm, kube_namespace, scripts, operators,  # noqa: F811
                                                   test_values, tmp_path):
    cluster, ns = kube_cluster, kube_namespace
    chart = install_chart(cluster, helm, values=test_values)
    op = ChartOperator(cluster, chart, "kt-kubetune-7f9c-x1", tmp_path / "operator.log")
    assert op.argv[1:4] == ["run", "-m", "kubetune_operator"] and "--standalone" in op.argv
    operators.append(op.start())
    with denials_explain_failures(operators):
        # A job that names a runtime preset (the chart's, watched cluster-wide), whose ConfigMap and progress
        # Secret someone left behind (the operator takes them over with a patch, never reading them), and whose
        # children the operator removes after its TTL.
        for kind, name in (("configmaps", "demo-config"), ("secrets", "demo-progress")):
            cluster.request("POST", f"/api/v1/namespaces/{ns}/{kind}",
                            {"apiVersion": "v1", "kind": "ConfigMap" if kind == "configmaps" else "Secret",
                             "metadata": {"name": name}, "data": {}})
        scripts["demo-1"] = succeed(1, metrics={"evalLoss": 0.9})
        cluster.apply(finetunejob("demo", spec(runtimeRef="smollm2-cpu", ttlSecondsAfterFinished=2)), namespace=ns)
        # An invalid one (valid for the CRD schema, not for the API model) and one deleted while it trains.
        cluster.apply(finetunejob("bad", spec(training={"epochs": 2, "maxSteps": 10})), namespace=ns)
        cluster.apply(finetunejob("gone", spec(resources={"gpus": 0, "cpu": "1", "memory": "1Gi"})), namespace=ns)

        job = wait_condition(cluster, ns, "demo", "Succeeded", timeout=40)
        assert job["status"]["attempts"] == 1 and job["status"]["metrics"] == {"evalLoss": 0.9}
        config = cluster.get(f"/api/v1/namespaces/{ns}/configmaps/demo-config")
        assert config is None or config["metadata"]["ownerReferences"][0]["name"] == "demo"
        failed = condition(wait_condition(cluster, ns, "bad", "Failed"), "Failed")
        assert failed["reason"] == "InvalidSpec" and "spec.training" in failed["message"]
        wait_condition(cluster, ns, "gone", "Running")
        # Deleting a job waits on nothing of the operator's (no finalizer); its pod is the garbage collector's.
        cluster.kubectl("delete", "-n", ns, "finetunejob/gone", "--wait=true", "--timeout=20s")
        wait_for(lambda: "demo-1" not in pod_names(cluster, ns), 20, "the TTL clean-up of demo's pod")
        wait_for(lambda: all(cluster.get(f"/api/v1/namespaces/{ns}/{k}/demo-{s}") is None
                             for k, s in (("configmaps", "config"), ("secrets", "progress"))), 10, "the TTL clean-up")
        time.sleep(1)
        assert set(pod_names(cluster, ns)) <= {"gone-1"}  # nothing recreated for a finished or deleted job

        reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events(cluster, ns)
                   if e.get("reportingComponent") == "kubetune-operator"}
        assert {("demo", "PodCreated"), ("demo", "Completed"), ("bad", "InvalidSpec")} <= reasons
        assert get_job(cluster, ns, "gone") is None and op.alive()
        schedule_with_chart_rbac(cluster, ns, scripts)
        assert "kubetune operator ready" in op.log()
    assert_no_denials(op)


def schedule_with_chart_rbac(cluster, ns: str, scripts: dict[str, list]) -> None:
    """A FineTuneSchedule every 2 s: its probe pod, the job it creates, the status, its Events and the
    history limit's delete, all with the chart's RBAC."""
    probe = {"ok": True, "reason": "Completed", "dataVersion": "v1"}
    scripts["tick-probe-*"] = [{"terminate": {"exitCode": 0, "reason": "Completed", "message": json.dumps(probe)}}]
    scripts["tick-*"] = succeed(0.5, dataVersion="v1", artifacts={"adapter": "s3://out/tick/adapter/"})
    cluster.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": "tick"},
                   "spec": {"schedule": "* * * * * */2", "successfulJobsHistoryLimit": 0,
                            "jobTemplate": {"spec": spec()}}}, namespace=ns)
    path = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetuneschedules/tick"
    status = wait_for(lambda: (s := (cluster.get(path) or {}).get("status") or {}).get("lastPassingRun")
                      and s.get("lastOutcome") == "DataUnchanged" and s, 60, "a job, then unchanged data")
    assert status["latestAdapter"] == "s3://out/tick/adapter/"
    wait_for(lambda: get_job(cluster, ns, status["lastPassingRun"]["name"]) is None, 20, "the history limit")
    reasons = {e["reason"] for e in events(cluster, ns, None) if e["involvedObject"].get("kind") == "FineTuneSchedule"}
    assert {"JobCreated", "DataUnchanged", "HistoryPruned"} <= reasons


def test_two_replicas_elect_one_leader_and_the_standby_takes_over(kube_cluster, helm, kube_namespace, scripts,  # noqa: F811
                                                                   operators, test_values, tmp_path):
    cluster, ns = kube_cluster, kube_namespace
    # The namespaced mode this time (Roles in the watched namespace, kopf --namespace), and a 3 s lease
    # instead of 15 s through the chart's extraEnv, so that the failover fits a test.
    values = {**test_values, "replicas": 2, "rbac": {"namespaced": True}, "watchNamespaces": [ns],
              "extraEnv": [{"name": "KUBETUNE_LEADER_ELECTION_SECONDS", "value": "3"}]}
    chart = install_chart(cluster, helm, values=values)
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{chart.namespace}/leases/kt-kubetune"

    def can_i(verb: str, lease: str) -> str:
        return cluster.kubectl("auth", "can-i", verb, f"leases.coordination.k8s.io/{lease}", "-n", chart.namespace,
                               check=False, kubeconfig=chart.kubeconfig).stdout.strip()

    assert [can_i("update", "kt-kubetune"), can_i("update", "another-operators"), can_i("delete", "kt-kubetune")] == [
        "yes", "no", "no"]  # this release's Lease only, and never deleted

    def holder() -> str:
        return ((cluster.get(lease_path) or {}).get("spec") or {}).get("holderIdentity", "")

    a = ChartOperator(cluster, chart, "kt-kubetune-5d8-aaaaa", tmp_path / "a.log")
    assert f"--namespace={ns}" in a.argv and a.env["KUBETUNE_NAMESPACES"] == ns
    operators.append(a.start())
    with denials_explain_failures(operators):
        wait_for(lambda: holder() == "kt-kubetune-5d8-aaaaa", 10, "replica a to lead")
        chart_ports = [test_values["service"]["progressPort"], test_values["service"]["metricsPort"],
                       test_values["probes"]["port"]]
        b = ChartOperator(cluster, chart, "kt-kubetune-5d8-bbbbb", tmp_path / "b.log",
                          ports={p: free_port() for p in chart_ports})
        operators.append(b.start())

        # One job: a's to run while b stands by with the same events in its cache.
        scripts["ha-1"] = succeed(6)
        cluster.apply(finetunejob("ha", spec(resources={"gpus": 0, "cpu": "1", "memory": "1Gi"})), namespace=ns)
        wait_condition(cluster, ns, "ha", "Running", timeout=20)
        assert holder() == "kt-kubetune-5d8-aaaaa"
        assert f"FineTuneJob {ns}/ha: PodCreated" in a.log()
        assert f"FineTuneJob {ns}/ha" not in b.log()  # the standby wrote nothing

        a.kill()  # the leader dies without a word; b takes over once the lease has been silent for 3 s
        job = wait_condition(cluster, ns, "ha", "Succeeded", timeout=30)
        lease = cluster.get(lease_path)["spec"]
        assert lease["holderIdentity"] == "kt-kubetune-5d8-bbbbb" and lease["leaseTransitions"] == 1
        # The line is written just after the status patch that a test may see first: waited for, not raced.
        wait_for(lambda: f"FineTuneJob {ns}/ha: Completed" in b.log(), 10, "b to log the completion")
        taken_over = b.log().split("acquired Lease", 1)
        assert len(taken_over) == 2 and f"FineTuneJob {ns}/ha" not in taken_over[0]
        assert f"FineTuneJob {ns}/ha: Completed" in taken_over[1]

        # One pod, one consistent status, and each transition reported once.
        assert pod_names(cluster, ns) == ["ha-1"]
        st = job["status"]
        assert (st["phase"], st["attempts"], st["podName"]) == ("Succeeded", 1, "ha-1")
        true = [c["type"] for c in st["conditions"] if c["status"] == "True"]
        assert true == ["Validated", "Scheduled", "Succeeded", "EvaluationPassed"]

        def posted() -> list[str]:
            return [e["reason"] for e in events(cluster, ns, "ha")
                    if e.get("reportingComponent") == "kubetune-operator"]

        wait_for(lambda: "Completed" in posted(), 10, "the Completed event")
        assert "PodCreated" in posted() and sorted(posted()) == sorted(set(posted()))
    assert_no_denials(a, b)

    # A graceful shutdown hands the lease on at once.
    b.stop()
    assert not holder()
