"""Cluster-wide fixtures for the operator's integration tests: the real kube-apiserver from tests/k8s with
the CRDs applied, the node agent standing in for the kubelet, and the operator running as its own process
(`kubetune-operator`, the console script a user runs) with short test settings."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# This directory has no __init__.py (a package named `operator` would shadow the standard library); the
# tests/ packages (k8s, fixtures) are on the path through tests/conftest.py.
from k8s.cluster import LocalCluster, free_port
from k8s.fixtures import kube_cluster, kube_namespace, node_agent  # noqa: F401
from k8s.process import LoggedProcess

TESTS = Path(__file__).resolve().parents[1]

ROOT = TESTS.parent
BIN = Path(sys.executable).parent


class OperatorProcess(LoggedProcess):
    """The operator as a real process. `kill()` is SIGKILL (no cleanup at all), `start()` starts it again."""

    def __init__(self, cluster: LocalCluster, log_path: Path, **env: str):
        super().__init__(log_path)
        self.cluster = cluster
        self.progress_port, self.metrics_port = free_port(), free_port()
        self.env = cluster.env(
            KUBETUNE_PROGRESS_URL=f"http://127.0.0.1:{self.progress_port}",
            KUBETUNE_PROGRESS_PORT=str(self.progress_port),
            KUBETUNE_PROGRESS_KEY="integration-test-key",
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
            KUBETUNE_PROGRESS_INTERVAL="1",
            KUBETUNE_IMAGE_PULL_GRACE_SECONDS="3",
            KUBETUNE_TRAINER_IMAGE="registry.example/kubetune/trainer:test",
            **env,
        )
        self.starts = 0

    @property
    def progress_url(self) -> str:
        return self.env["KUBETUNE_PROGRESS_URL"]

    def start(self, argv: list[str] | None = None, timeout: float = 60) -> None:
        argv = argv or [str(BIN / "kubetune-operator"), "--standalone", "--verbose"]
        self.launch(argv, self.env, f"{self.progress_url}/healthz", timeout,
                    header=f"\n===== start {self.starts}: {' '.join(argv)}\n")
        self.starts += 1

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture(scope="session")
def kubetune_crds(kube_cluster: LocalCluster) -> LocalCluster:  # noqa: F811
    kube_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/finetunejobs.kubetune.io", "crd/clusterfinetuneruntimes.kubetune.io",
                         "crd/finetuneschedules.kubetune.io")
    return kube_cluster


@pytest.fixture(scope="session")
def kubetune_operator(kubetune_crds: LocalCluster, node_agent, tmp_path_factory) -> Iterator[OperatorProcess]:  # noqa: F811
    op = OperatorProcess(kubetune_crds, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def operator_up(kubetune_operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The shared operator, running before and after the test (a test that kills it gets it back)."""
    if not kubetune_operator.alive():
        kubetune_operator.start()
    yield kubetune_operator
    if not kubetune_operator.alive():
        kubetune_operator.start()


@pytest.fixture
def scripted(node_agent) -> Iterator[Callable[[dict[str, list]], None]]:  # noqa: F811
    """Script trainer pods by name for this test: scripted({"demo-1": [steps], ...}). Pods without a script
    report Running and hold until deleted (never the real trainer by accident)."""
    scripts: dict[str, list] = {}
    seen: list[tuple[str, str]] = []

    def script_for(pod: dict) -> list:
        meta = pod["metadata"]
        seen.append((meta["name"], meta["uid"]))
        return scripts.get(meta["name"], [{"phase": "Running"}])

    def set_scripts(new: dict[str, list]) -> None:
        scripts.update(new)

    set_scripts.seen = seen  # type: ignore[attr-defined]
    with node_agent.scripted(script_for):
        yield set_scripts


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[Any]:
    """A SeaweedFS S3 server (tests/fixtures/s3.py)."""
    from fixtures.s3 import S3Server, find_weed

    try:
        find_weed()
    except RuntimeError as err:
        pytest.skip(str(err))
    server = S3Server.start(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()
