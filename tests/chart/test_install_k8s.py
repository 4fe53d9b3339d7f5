"""A platform team's first `helm install` on a cluster that has never seen kubetune, on a control plane of
its own: one run installs the CRDs and the runtime presets that need them; `helm uninstall` removes the
release and keeps the CRDs, and with them every FineTuneJob."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s.cluster import LocalCluster
from k8s.fixtures import ensure_binaries

from .helm import helm_run, install_chart

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {"llama", "mistral", "gemma", "llama-13b", "llama-70b", "smollm2-cpu"}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def runtimes(cluster: LocalCluster) -> set[str]:
    out = cluster.kubectl("get", "clusterfinetuneruntimes", "-o", "name").stdout.split()
    return {name.removeprefix("clusterfinetuneruntime.kubetune.io/") for name in out}


def test_first_install_on_a_fresh_cluster_then_uninstall_keeps_crds_and_jobs(helm):
    ensure_binaries()
    with LocalCluster() as cluster:
        assert cluster.get(f"{CRDS}/finetunejobs.kubetune.io") is None
        chart = install_chart(cluster, helm)  # a single `helm upgrade --install`: no second run needed
        assert runtimes(cluster) == PRESETS
        cluster.create_namespace("team-a")
        job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
        cluster.apply(job, namespace="team-a")

        r = helm_run(helm, "uninstall", chart.release, "--namespace", chart.namespace,
                     "--kubeconfig", str(cluster.kubeconfig))
        assert r.returncode == 0, r.stderr
        for crd in ("finetunejobs.kubetune.io", "clusterfinetuneruntimes.kubetune.io"):
            assert cluster.get(f"{CRDS}/{crd}") is not None, f"helm uninstall deleted the {crd} CRD"
        assert cluster.get("/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/support-bot") is not None
        assert runtimes(cluster) == set(), "the presets belong to the release"
        # Installing again adopts the CRDs that are already there.
        install_chart(cluster, helm)
        assert runtimes(cluster) == PRESETS
