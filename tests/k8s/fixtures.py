"""pytest fixtures for the local control plane and the node agent.

Use them from a conftest.py or a test module by importing them:

    from k8s.fixtures import kube_cluster, kube_namespace, node_agent  # noqa: F401

`kube_cluster` (session): a started LocalCluster; builds the binaries first (tests/k8s/build-kube.sh, a no-op
when cached). If they cannot be built, tests using it are skipped with the reason; set FTJ_KUBE_REQUIRED=1
(e.g. in CI) to make that a failure instead.
`node_agent` (session): a NodeAgent (node "test-node", 8 GPUs) running pods for that cluster; use
`with node_agent.scripted(fn): ...` to script pods for one test.
`kube_namespace` (function): a fresh namespace whose default ServiceAccount is ready; deleted afterwards.

The cluster and the agent are process-wide singletons, so importing the fixtures into several modules or
conftests still starts one cluster per test session.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest

from .cluster import BUILD_SCRIPT, LocalCluster, build_binaries, missing_tools

_lock = threading.Lock()
_shared: dict[str, object] = {}
_users: dict[str, int] = {"cluster": 0, "agent": 0}


def _unavailable(reason: str) -> None:
    if os.environ.get("FTJ_KUBE_REQUIRED", "") not in ("", "0"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def ensure_binaries() -> None:
    """Builds the kube binaries if needed (minutes, once); skips (or fails, FTJ_KUBE_REQUIRED=1) if impossible."""
    if not missing_tools():
        return
    if "build_error" in _shared:
        _unavailable(str(_shared["build_error"]))
    try:
        result = build_binaries()
        output = (result.stdout + result.stderr)[-3000:]
        failed = result.returncode != 0
    except Exception as e:  # bash missing, timeout, ...
        output, failed = repr(e), True
    missing = missing_tools()
    if failed or missing:
        _shared["build_error"] = (
            f"local Kubernetes control plane unavailable (missing: {', '.join(missing)}); "
            f"{BUILD_SCRIPT} failed:\n{output}"
        )
        _unavailable(str(_shared["build_error"]))


def _acquire(kind: str, factory) -> object:
    with _lock:
        if kind not in _shared:
            _shared[kind] = factory()
        _users[kind] += 1
        return _shared[kind]


def _release(kind: str) -> None:
    with _lock:
        _users[kind] -= 1
        if _users[kind] == 0:
            obj = _shared.pop(kind)
            obj.stop()


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[LocalCluster]:
    ensure_binaries()
    cluster = _acquire("cluster", lambda: LocalCluster().start())
    try:
        yield cluster
    finally:
        _release("cluster")


@pytest.fixture(scope="session")
def node_agent(kube_cluster: LocalCluster):
    from .node_agent import NodeAgent

    agent = _acquire("agent", lambda: NodeAgent(kube_cluster.kubeconfig, "test-node").start())
    try:
        yield agent
    finally:
        _release("agent")


@pytest.fixture
def kube_namespace(kube_cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_cluster.create_namespace(name)
    try:
        yield name
    finally:
        kube_cluster.delete_namespace(name)
