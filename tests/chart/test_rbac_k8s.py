"""The chart installed with `helm upgrade --install` on the real kube-apiserver, then its ServiceAccount's
own token (not an admin's) asks the API server: every request the operator makes is allowed, and requests
outside that are forbidden. A second release checks the namespaced-Role mode."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from k8s.fixtures import kube_cluster  # noqa: F401

from .helm import install_chart

VALUES = Path(__file__).resolve().parents[2] / "charts" / "kubetune" / "values.yaml"

pytestmark = pytest.mark.k8s

# (verb, resource, namespace or None for cluster scope, subresource): every request the operator makes
# (operator/kubetune_operator/kube.py, plus kopf's watches and Event posts).
OPERATOR_REQUESTS = [
    *[(v, "finetunejobs.kubetune.io", "team-a", None) for v in ("get", "list", "watch", "create", "delete")],
    ("patch", "finetunejobs.kubetune.io", "team-a", "status"),
    *[(v, "finetuneschedules.kubetune.io", "team-a", None) for v in ("get", "list", "watch")],
    ("patch", "finetuneschedules.kubetune.io", "team-a", "status"),
    *[(v, "pods", "team-a", None) for v in ("create", "get", "list", "watch", "delete")],
    *[(v, r, "team-a", None) for r in ("configmaps", "secrets", "services") for v in ("create", "patch", "delete")],
    ("create", "events", "team-a", None),
    *[(v, "clusterfinetuneruntimes.kubetune.io", None, None) for v in ("list", "watch")],
    *[(v, "customresourcedefinitions.apiextensions.k8s.io", None, None) for v in ("list", "watch")],
]
ALWAYS_FORBIDDEN = [
    ("delete", "nodes", None, None),
    ("get", "nodes", None, None),
    ("create", "deployments.apps", "team-a", None),
    ("create", "namespaces", None, None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
    ("patch", "finetunejobs.kubetune.io", "team-a", None),  # kopf keeps no bookkeeping on the jobs
    ("patch", "finetuneschedules.kubetune.io", "team-a", None),
    ("create", "finetuneschedules.kubetune.io", "team-a", None),
    ("update", "finetunejobs.kubetune.io", "team-a", "status"),
    ("get", "clusterfinetuneruntimes.kubetune.io", None, None),
    ("patch", "clusterfinetuneruntimes.kubetune.io", None, None),
    ("update", "pods", "team-a", None),
    ("patch", "pods", "team-a", None),
    ("create", "pods", "team-a", "exec"),
    ("create", "serviceaccounts", "team-a", "token"),
    *[(v, r, "team-a", None) for r in ("secrets", "configmaps", "services") for v in ("get", "list", "watch")],
    ("patch", "events", "team-a", None),
    ("update", "leases.coordination.k8s.io", "kubetune-system", None),  # one replica: no leader election
    ("list", "clusterkopfpeerings.kopf.dev", None, None),
]


def can_i(cluster, kubeconfig, verb, resource, namespace, subresource) -> bool:
    args = ["auth", "can-i", verb, resource]
    args += ["-n", namespace] if namespace else ["--all-namespaces=false"]
    if subresource:
        args.append(f"--subresource={subresource}")
    r = cluster.kubectl(*args, check=False, kubeconfig=kubeconfig)
    assert r.stdout.strip() in ("yes", "no"), r.stdout + r.stderr
    return r.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def cluster_wide(kube_cluster, helm):  # noqa: F811
    for ns in ("team-a", "team-b"):
        if kube_cluster.get(f"/api/v1/namespaces/{ns}") is None:
            kube_cluster.create_namespace(ns)
    return install_chart(kube_cluster, helm)


def test_operator_requests_are_allowed_with_the_chart_token(kube_cluster, cluster_wide):  # noqa: F811
    denied = [req for req in OPERATOR_REQUESTS if not can_i(kube_cluster, cluster_wide.kubeconfig, *req)]
    assert not denied, f"the chart's RBAC denies requests the operator makes: {denied}"


def test_requests_outside_the_operator_needs_are_forbidden(kube_cluster, cluster_wide):  # noqa: F811
    allowed = [req for req in ALWAYS_FORBIDDEN if can_i(kube_cluster, cluster_wide.kubeconfig, *req)]
    assert not allowed, f"the chart's RBAC allows more than the operator needs: {allowed}"
    # And a real request, not only a review: creating a Deployment is refused.
    r = kube_cluster.kubectl("create", "deployment", "x", "--image=busybox", "-n", "team-a", check=False,
                             kubeconfig=cluster_wide.kubeconfig)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr


def test_chart_objects_exist_and_presets_were_installed(kube_cluster, cluster_wide):  # noqa: F811
    r = kube_cluster.kubectl("get", "clusterfinetuneruntimes", "-o", "name", kubeconfig=cluster_wide.kubeconfig)
    presets = yaml.safe_load(VALUES.read_text())["runtimes"]["presets"]  # every preset the chart ships
    assert {"llama", "smollm2-cpu"} <= set(presets)
    assert set(r.stdout.split()) == {f"clusterfinetuneruntime.kubetune.io/{n}" for n in presets}
    crd = kube_cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.kubetune.io")
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]


def test_upgrade_keeps_the_progress_key(kube_cluster, helm, cluster_wide):  # noqa: F811
    path = f"/api/v1/namespaces/{cluster_wide.namespace}/secrets/{cluster_wide.release}-kubetune-progress"
    before = kube_cluster.get(path)["data"]["progress-key"]
    assert len(base64.b64decode(before)) >= 32
    install_chart(kube_cluster, helm, values={"trainer": {"image": "example/trainer:2"}})
    assert kube_cluster.get(path)["data"]["progress-key"] == before


def test_namespaced_rbac_confines_the_operator_to_its_namespaces(kube_cluster, helm, cluster_wide):  # noqa: F811
    chart = install_chart(
        kube_cluster, helm, release="ktn", namespace="kubetune-ns",
        values={"rbac": {"namespaced": True}, "watchNamespaces": ["team-a"],
                "runtimes": {"enabled": False}},
    )
    denied = [req for req in OPERATOR_REQUESTS if not can_i(kube_cluster, chart.kubeconfig, *req)]
    assert not denied, f"namespaced RBAC denies requests the operator makes in team-a: {denied}"
    outside = [
        ("list", "secrets", "kube-system", None), ("get", "secrets", "team-b", None),
        ("create", "pods", "team-b", None), ("list", "finetunejobs.kubetune.io", "team-b", None),
    ]
    allowed = [req for req in outside + ALWAYS_FORBIDDEN if can_i(kube_cluster, chart.kubeconfig, *req)]
    assert not allowed, f"namespaced RBAC reaches outside team-a: {allowed}"
    r = kube_cluster.kubectl("get", "secrets", "-n", "kube-system", check=False, kubeconfig=chart.kubeconfig)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
