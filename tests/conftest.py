"""Test-wide isolation (each test its own DECIDE_HOME, one torch thread) and the shared demo run.

The `demo` fixture runs `decide demo`'s own job once per session (about three minutes on two
cores); tests that use it are in the xdist group "demo" so that one worker runs them all.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
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


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's console (made once per process, its width read from COLUMNS then) at 300 columns for this
    test, so that no table cell wraps whatever test made the console first."""
    from cli.output import console

    monkeypatch.setattr(console.real(), "_width", 300)


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


#: xdist groups by how long they hold a worker, longest first (see pytest_collection_modifyitems)
_LONGEST_GROUPS = ("demo", "tiny-home", "faults", "early-block")


def pytest_collection_modifyitems(config, items):
    """Longest xdist groups first, so that `make test`'s two workers finish together.

    `--dist loadgroup` hands each group to one worker in collection order (the Makefile turns off
    xdist's reordering by test count, which put the demo — ~9 of the suite's ~17 worker-minutes —
    third, after two groups of many quick tests, and made the suite ~2 minutes longer than it needs to be).
    """
    def rank(item) -> int:
        marker = item.get_closest_marker("xdist_group")
        name = (marker.args[0] if marker and marker.args else marker.kwargs.get("name")) if marker else None
        return _LONGEST_GROUPS.index(name) if name in _LONGEST_GROUPS else len(_LONGEST_GROUPS)

    items.sort(key=rank)  # stable: within a rank, collection order


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


# -- a tiny real registry: a `tiny` DenseNet trained one epoch on 32-pixel phantoms, production,
#    with its data sets and a labelled week of site-b feedback (seconds to build, copied per test)

@dataclass
class TinyHome:
    home: Path
    url: str


def _tiny_phantom(site: str, split: str, n: int):
    from cxr.data import phantom_dataset
    from cxr.phantom import PhantomConfig

    src = {"kind": "phantom", "site": site, "split": split, "n": n, "resolution": 32, "seed": 0,
           "missing_sign_rate": 0.1}
    return phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=32), workers=1), src


def build_tiny_home(home: Path, url: str) -> TinyHome:
    """Train the `tiny` baseline on site-a phantoms and register it (with its data sets) at `url`."""
    from cxr.spec import preset
    from cxr.train import TrainConfig, train
    from cxr.weights import to_bytes
    from decision.baseline import DataBinding, register_baseline
    from decision.catalog import record_dataset
    from policies import load_policy
    from registry.session import dispose_engines, init_registry, session_scope

    init_registry(url)
    tr, cal, ev_a, ev_b = (_tiny_phantom("site-a", "train", 400), _tiny_phantom("site-a", "calibration", 300),
                           _tiny_phantom("site-a", "evaluation", 300), _tiny_phantom("site-b", "evaluation", 300))
    spec = preset("tiny")
    model = train(spec, tr[0], TrainConfig(epochs=1, batch_size=32, threads=1)).model
    _, weights = to_bytes(spec, model.state_dict())
    bindings = [DataBinding(tr[0], "train", tr[1]), DataBinding(cal[0], "calibration", cal[1]),
                DataBinding(ev_a[0], "evaluation", ev_a[1]), DataBinding(ev_b[0], "evaluation", ev_b[1])]
    register_baseline(url, home, "cxr", weights, bindings, load_policy())
    fb = _tiny_phantom("site-b", "feedback", 300)
    with session_scope(url) as s:  # a labelled week of site-b feedback, as the monitor would register it
        record_dataset(s, fb[0], "feedback", fb[1])
    dispose_engines()
    return TinyHome(home, url)


@pytest.fixture(scope="session")
def tiny_home_template(tmp_path_factory) -> TinyHome:
    home = tmp_path_factory.mktemp("tiny-template")
    return build_tiny_home(home, f"sqlite:///{home / 'registry.db'}")


@pytest.fixture
def tiny_home(tiny_home_template, tmp_path, monkeypatch) -> TinyHome:
    """A private copy of the template home (registry, blobs, caches) for one test."""
    home = tmp_path / "home"
    shutil.copytree(tiny_home_template.home, home)
    monkeypatch.setenv("DECIDE_HOME", str(home))
    return TinyHome(home, f"sqlite:///{home / 'registry.db'}")
