"""The dependency directions are part of the design: the API imports neither side, the operator image has
no torch, the trainer image has no kopf. Each package is imported in a fresh interpreter where the
forbidden packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # makes `import name` raise ImportError
pkg = importlib.import_module({package!r})
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if info.name.endswith("__main__"):
        continue
    importlib.import_module(info.name)
print("ok")
"""

HEAVY = ["torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate"]
OPERATOR = ["kopf", "kubernetes", "aiohttp"]


@pytest.mark.parametrize(
    "package,blocked",
    [
        ("kubetune_api", HEAVY + OPERATOR + ["boto3"]),
        ("kubetune_operator", HEAVY + ["boto3", "kubetune_trainer"]),
        ("kubetune_trainer", OPERATOR + ["kubetune_operator"]),
    ],
)
def test_package_imports_without_the_other_side(package, blocked):
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(blocked=blocked, package=package)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
