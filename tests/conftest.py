"""Test-wide isolation: each test gets its own DECIDE_HOME and one torch thread."""

from __future__ import annotations

import os

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
