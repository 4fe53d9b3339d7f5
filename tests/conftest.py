"""Fixtures shared by every test package: the model cache and the SmolLM2 example run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The shared fixtures are imported as `fixtures.*` with tests/ on the path.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def monkeysession():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, monkeysession) -> Path:
    """KUBETUNE_CACHE_DIR for the suite; bundled models are linked from the user's cache when present."""
    path = tmp_path_factory.mktemp("cache")
    home = Path.home() / ".cache" / "kubetune" / "bundled"
    if home.is_dir():
        (path / "bundled").symlink_to(home)
    monkeysession.setenv("KUBETUNE_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def smollm2_example(tmp_path_factory, cache_dir) -> dict:
    """examples/smollm2-local.yaml trained once for the session (fixtures/smollm2.py)."""
    from fixtures.smollm2 import train_example

    return train_example(tmp_path_factory.mktemp("smollm2-out"))
