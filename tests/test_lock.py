"""The lock files: what pyproject.toml asks for is what is locked, the images pin what the tests run with,
this venv is the locked one, and every place that names the release version names the same one."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"


def _lock_module():
    spec = importlib.util.spec_from_file_location("kubetune_lock", LOCKS / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lock = _lock_module()
TARGETS = {t.file: t for t in lock.TARGETS}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_lock_was_made_from_the_current_pyproject(name):
    target = TARGETS[name]
    recorded = lock.recorded_digest(LOCKS / name)
    assert recorded == lock.inputs_digest(target), (
        f"requirements/{name} was resolved from other dependencies than pyproject.toml now lists: run `make lock` "
        f"and commit requirements/")


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_requirement_is_pinned_in_its_lock_within_pyproject_s_range(name):
    pinned = lock.pins(LOCKS / name)
    for text in lock.project_requirements(TARGETS[name]):
        req = Requirement(text)
        key = lock.canonical(req.name)
        assert key in pinned, f"{req.name} is required by pyproject.toml but not in requirements/{name}: run `make lock`"
        assert req.specifier.contains(pinned[key], prereleases=True), (
            f"requirements/{name} pins {req.name}=={pinned[key]}, outside pyproject's {req}: run `make lock`")


def test_every_pin_carries_a_hash():
    for name in TARGETS:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (LOCKS / name).read_text())
        for block in blocks:
            if "==" in block.split("\n")[0]:
                assert "--hash=sha256:" in block, f"requirements/{name}: {block.splitlines()[0]} has no hash"


@pytest.mark.parametrize("image", ["trainer-image.txt", "operator-image.txt"])
def test_the_images_pin_the_versions_the_tests_run_with(image):
    dev = lock.pins(LOCKS / "dev.txt")
    shared = {k: v for k, v in lock.pins(LOCKS / image).items() if k in dev}
    assert "kopf" in shared or "torch" in shared  # the packages that matter are in both
    for name, ver in shared.items():
        # torch differs only in its build: 2.13.0+cpu in the tests, PyPI's CUDA 2.13.0 in the trainer image
        assert ver == dev[name].split("+")[0], f"requirements/{image} pins {name}=={ver}, the tests {dev[name]}"


def test_the_trainer_image_has_cuda_torch_and_the_tests_the_cpu_build():
    assert lock.pins(LOCKS / "trainer-image.txt")["torch"] == "2.13.0"
    assert lock.pins(LOCKS / "dev.txt")["torch"] == "2.13.0+cpu"
    assert any(name.startswith("nvidia-") for name in lock.pins(LOCKS / "trainer-image.txt"))


def test_this_venv_is_the_locked_one():
    """A venv that kept yesterday's packages must not pass for the locked one (make install rebuilds it)."""
    installed = {lock.canonical(d.metadata["Name"]): d.version for d in distributions()}
    wanted = {**lock.pins(LOCKS / "dev.txt"), **lock.pins(LOCKS / "bundled-model.txt")}
    drift = {name: (ver, installed.get(name)) for name, ver in wanted.items() if installed.get(name) != ver}
    assert not drift, f"installed packages differ from requirements/dev.txt (locked, installed): {drift}; run make install"


def test_dockerfiles_install_only_from_the_locks():
    for path, lock_name in [("trainer-image/Dockerfile", "trainer-image.txt"), ("operator/Dockerfile", "operator-image.txt")]:
        text = (REPO / path).read_text()
        assert f"requirements/{lock_name}" in text
        commands = re.sub(r"\\\n\s*", " ", text)  # join continued lines
        for install in re.findall(r"pip install[^&\n]*", commands):
            assert "--require-hashes" in install or "--no-deps" in install, f"{path}: unlocked `{install}`"
            assert not re.search(r"\s[A-Za-z][\w.\-]*(==|>=)", install), f"{path}: a version pin outside the lock"


def test_the_release_version_agrees_everywhere():
    from kubetune_api import __version__
    from kubetune_operator.settings import DEFAULT_TRAINER_IMAGE

    chart = yaml.safe_load((REPO / "charts/kubetune/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts/kubetune/values.yaml").read_text())
    labels = {path: re.search(r'org\.opencontainers\.image\.version="([^"]+)"', (REPO / path).read_text())
              for path in ("trainer-image/Dockerfile", "operator/Dockerfile")}
    found = {
        "the installed kubetune package": next(d.version for d in distributions() if d.metadata["Name"] == "kubetune"),
        "Chart.yaml appVersion": str(chart["appVersion"]),
        "the operator's default trainer image tag": DEFAULT_TRAINER_IMAGE.rsplit(":", 1)[1],
        "values.yaml trainer.image tag": values["trainer"]["image"].rsplit(":", 1)[1],
        **{f"{path} OCI label": m.group(1) if m else None for path, m in labels.items()},
    }
    cli = subprocess.run([sys.executable, "-m", "kubetune_trainer", "--version"], capture_output=True, text=True)
    found["kubetune --version"] = cli.stdout.split()[-1] if cli.returncode == 0 else cli.stderr
    wrong = {where: ver for where, ver in found.items() if ver != __version__}
    assert not wrong, f"kubetune_api.__version__ is {__version__}, but: {wrong}"
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dynamic"] == ["version"]
