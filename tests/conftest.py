"""Test-wide isolation (each test its own DECIDE_HOME, one torch thread) and the shared demo run.

The `demo` fixture runs `decide demo`'s own job once per session (about three minutes on two
cores); tests that use it are in the xdist group "demo" so that one worker runs them all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DECIDE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DECIDE_DATABASE_URL", raising=False)
    monkeypatch.setenv("DECIDE_ACTOR", "tester")
    yield


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from decision.demo import DemoConfig, run_demo
    from policies import load_policy
    from registry.session import dispose_engines

    home = tmp_path_factory.mktemp("demo") / "home"
    result = run_demo(home, f"sqlite:///{home / 'registry.db'}", load_policy(), DemoConfig())
    dispose_engines()
    return result


@pytest.fixture
def demo_copy(demo, tmp_path, monkeypatch) -> Path:
    """A private copy of the demo home, for tests that write to it."""
    home = tmp_path / "demo-home"
    shutil.copytree(demo.home, home)
    monkeypatch.setenv("DECIDE_HOME", str(home))
    return home
