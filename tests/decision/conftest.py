"""A tiny real registry for engine tests: a `tiny` DenseNet trained for one epoch on 32-pixel phantoms,
registered as production with its data sets, plus a labelled feedback week at site-b."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxr.data import phantom_dataset
from cxr.phantom import PhantomConfig
from cxr.spec import preset
from cxr.train import TrainConfig, train
from cxr.weights import to_bytes
from decision.baseline import DataBinding, register_baseline
from decision.catalog import record_dataset
from policies import load_policy
from registry.session import dispose_engines, init_registry, session_scope


@dataclass
class TinyHome:
    home: Path
    url: str


def _phantom(site: str, split: str, n: int):
    src = {"kind": "phantom", "site": site, "split": split, "n": n, "resolution": 32, "seed": 0,
           "missing_sign_rate": 0.1}
    return phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=32), workers=1), src


@pytest.fixture(scope="session")
def tiny_home_template(tmp_path_factory) -> TinyHome:
    home = tmp_path_factory.mktemp("tiny-template")
    url = f"sqlite:///{home / 'registry.db'}"
    init_registry(url)
    tr, cal, ev_a, ev_b = (_phantom("site-a", "train", 400), _phantom("site-a", "calibration", 300),
                           _phantom("site-a", "evaluation", 300), _phantom("site-b", "evaluation", 300))
    spec = preset("tiny")
    model = train(spec, tr[0], TrainConfig(epochs=1, batch_size=32, threads=1)).model
    _, weights = to_bytes(spec, model.state_dict())
    bindings = [DataBinding(tr[0], "train", tr[1]), DataBinding(cal[0], "calibration", cal[1]),
                DataBinding(ev_a[0], "evaluation", ev_a[1]), DataBinding(ev_b[0], "evaluation", ev_b[1])]
    register_baseline(url, home, "cxr", weights, bindings, load_policy())
    fb = _phantom("site-b", "feedback", 300)
    with session_scope(url) as s:  # a labelled week of site-b feedback, as the monitor would register it
        record_dataset(s, fb[0], "feedback", fb[1])
    dispose_engines()
    return TinyHome(home, url)


@pytest.fixture
def tiny_home(tiny_home_template, tmp_path, monkeypatch) -> TinyHome:
    """A private copy of the template home (registry, blobs, caches) for one test."""
    home = tmp_path / "home"
    shutil.copytree(tiny_home_template.home, home)
    monkeypatch.setenv("DECIDE_HOME", str(home))
    return TinyHome(home, f"sqlite:///{home / 'registry.db'}")
