"""Cluster-wide fixtures for the operator's integration tests: the real kube-apiserver from tests/k8s with
the CRDs applied, the node agent standing in for the kubelet, and the operator running as its own process
(`kubetune-operator`, the console script a user runs) with short test settings."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# This directory has no __init__.py (a package named `operator` would shadow the standard library), so
# the tests/ packages (k8s, fixtures) are put on the path explicitly.
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from k8s.cluster import LocalCluster, free_port  # noqa: E402
from k8s.fixtures import kube_cluster, kube_namespace, node_agent  # noqa: E402, F401

ROOT = TESTS.parent
BIN = Path(sys.executable).parent


class OperatorProcess:
    """The operator as a real process. `kill()` is SIGKILL (no cleanup at all), `start()` starts it again."""

    def __init__(self, cluster: LocalCluster, log_path: Path, **env: str):
        self.cluster, self.log_path = cluster, log_path
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
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def progress_url(self) -> str:
        return self.env["KUBETUNE_PROGRESS_URL"]

    def start(self, argv: list[str] | None = None, timeout: float = 60) -> None:
        argv = argv or [str(BIN / "kubetune-operator"), "--standalone", "--verbose"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(argv)}\n".encode())
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not get ready:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.progress_url}/healthz", timeout=1) as r:
            return r.status == 200
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture(scope="session")
def kubetune_crds(kube_cluster: LocalCluster) -> LocalCluster:  # noqa: F811
    kube_cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         "crd/finetunejobs.kubetune.io", "crd/clusterfinetuneruntimes.kubetune.io")
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
