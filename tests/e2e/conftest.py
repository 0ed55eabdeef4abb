"""The whole loop, once per test session: `decide demo`'s own job, with its default configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from decision.demo import DemoConfig, DemoResult, run_demo
from policies import load_policy
from registry.session import dispose_engines


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoResult:
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
