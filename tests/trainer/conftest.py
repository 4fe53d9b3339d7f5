"""Fixtures for the trainer tests: a real S3 server, tiny models, small data and manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The shared fixtures are imported as `fixtures.*`: tests/conftest.py puts tests/ on the path.
from fixtures.s3 import S3Server
from fixtures.tiny_model import make_tiny_model

TESTS = Path(__file__).resolve().parents[1]

REPO = TESTS.parent
PRODUCTS = {"tent": "KAV", "boots": "FJL", "backpack": "RYG", "lamp": "LYS"}
COLOURS = {"red": "RD", "blue": "BL", "green": "GR"}


def sku_rows(n: int | None = None) -> list[dict]:
    """A small version of the example domain: product and colour to a made-up code."""
    rows = [{"instruction": f"SKU for a {c} {p}?", "input": "", "output": f"NV-{pc}-{cc}"}
            for p, pc in PRODUCTS.items() for c, cc in COLOURS.items()]
    return rows[:n] if n else rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def manifest(spec: dict, name: str = "tiny", namespace: str = "default") -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def tiny_spec(model: str, train: str, output: str, **overrides) -> dict:
    """A small job on the tiny model. fp32 unless a test says otherwise: `precision: auto` trains in bf16 on
    a CPU that multiplies bf16 natively (models.native_bf16), and the parity tests compare runs at fp32's
    tolerances, whichever CPU runs them."""
    spec = {
        "model": {"uri": model},
        "dataset": {"train": {"uri": train}, "evalSplit": 0.25, "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "training": {"maxSteps": 6, "batchSize": 4, "learningRate": 0.01, "seed": 3, "precision": "fp32"},
        "evaluation": {"maxSamples": 4, "generation": {"maxNewTokens": 6}},
        "output": {"uri": output},
        "checkpoint": {"everySteps": 3, "keep": 1},
        "resources": {"gpus": 0},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def write_manifest(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `kubetune` entry point in a fresh process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kubetune_trainer", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    server = S3Server.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_alpaca_model(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer has no chat template (the Alpaca path)."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-nochat", chat_template=False)


@pytest.fixture
def sku_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data" / "train.jsonl", sku_rows())


@pytest.fixture
def s3_env(s3, monkeypatch) -> dict[str, str]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3.env()
