"""The shift diagnosis: its two-sample statistic against analytic truth, its rule, and real films."""

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxr.data import phantom_dataset
from cxr.model import build_model
from cxr.phantom import PhantomConfig
from cxr.shift import (
    StageShift,
    _auroc,
    c2st_auroc,
    diagnose_for,
    diagnose_shift,
    excess_threshold,
    locate,
)
from cxr.spec import preset


def test_mann_whitney_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    z = (rng.random(300) < 0.4).astype(float)
    s = np.round(rng.normal(z, 1.0), 1)  # rounded: ties count half in both
    assert _auroc(z, s) == pytest.approx(roc_auc_score(z, s), abs=1e-12)


@pytest.mark.parametrize("delta", [0.0, 0.5, 1.0, 2.0])
def test_c2st_auroc_reaches_the_bayes_auroc_of_two_gaussians(delta):
    """N(0, I) vs N(μ, I), |μ| = δ: the best linear rule has AUROC Φ(δ/√2) (independent, analytic)."""
    rng = np.random.default_rng(1)
    d, n = 4, 3000
    mu = np.zeros(d)
    mu[0] = delta / math.sqrt(2)
    mu[1] = delta / math.sqrt(2)
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n, d)) + mu
    assert c2st_auroc(a, b) == pytest.approx(norm.cdf(delta / math.sqrt(2)), abs=0.02)


def test_the_threshold_rarely_fires_without_a_shift():
    """Under no shift the excess stays below the threshold in (far) more than 95 % of repetitions."""
    rng = np.random.default_rng(2)
    m, d, fired = 100, 12, 0
    for rep in range(60):
        x = rng.standard_normal((3 * m, d))
        auc = c2st_auroc(x[:m], x[m:2 * m], seed=rep)
        null = c2st_auroc(x[:m], x[2 * m:], seed=rep)
        fired += 2 * max(0.0, auc - null) >= excess_threshold(m)
    assert fired <= 3  # 5 % of 60


def test_a_shift_just_above_the_threshold_is_seen_and_just_below_is_not():
    """Near the boundary: a mean shift whose excess is about 1.5× the threshold fires, a tenth of it does not."""
    rng = np.random.default_rng(3)
    m, d = 400, 4
    thr = excess_threshold(m)
    # Bayes excess 2(Φ(δ/√2) − 0.5) = 1.5 thr  →  δ = √2 Φ⁻¹(0.5 + 0.75 thr)
    big = math.sqrt(2) * norm.ppf(0.5 + 0.75 * thr)
    small = math.sqrt(2) * norm.ppf(0.5 + 0.05 * thr)
    for delta, expect in ((big, True), (small, False)):
        x = rng.standard_normal((3 * m, d))
        x[2 * m:, 0] += delta
        exc = 2 * max(0.0, c2st_auroc(x[:m], x[2 * m:]) - c2st_auroc(x[:m], x[m:2 * m]))
        assert (exc >= thr) is expect


def _stages(**excess):
    order = ["image", "stem", "block1", "block2", "block3", "block4", "head"]
    level = {"image": "input", "stem": "input", "block1": "input", "head": "output"}
    return [StageShift(s, level.get(s, "feature"), 8, 0.5 + e / 2, 0.5, e) for s, e in
            ((s, excess.get(s, 0.0)) for s in order)]


@pytest.mark.parametrize("excess, level, blocks, at", [
    ({}, "none", (), None),
    ({"image": 0.9, "stem": 0.9, "block1": 0.9, "block2": 0.8, "block4": 0.7, "head": 0.6}, "input", (1, 2), "image"),
    ({"image": 0.05, "block2": 0.2, "block3": 0.6, "block4": 0.7, "head": 0.5}, "feature", (3, 4), "block3"),
    ({"block3": 0.2, "block4": 0.7, "head": 0.6}, "feature", (4, 3), "block4"),
    ({"image": 0.05, "block4": 0.15, "head": 0.8}, "output", (), "head"),
    # an early stage that shows a shift, but under half of the largest, does not locate it
    ({"image": 0.3, "block2": 0.7, "head": 0.5}, "feature", (2, 3), "block2"),
    # exactly half of the largest counts
    ({"image": 0.35, "block2": 0.7}, "input", (1, 2), "image"),
])
def test_the_rule_locates_the_earliest_stage_with_most_of_the_shift(excess, level, blocks, at):
    got = locate(_stages(**excess), 4, threshold=0.14)
    assert got[0] == level and got[1] == blocks and got[3] == at


def test_the_rule_needs_the_threshold():
    assert locate(_stages(image=0.139, head=0.13), 4, 0.14)[0] == "none"
    assert locate(_stages(image=0.14), 4, 0.14)[0] == "input"


@pytest.fixture(scope="module")
def tiny_world():
    spec = preset("tiny")
    ref = phantom_dataset(PhantomConfig(site="site-a", split="train", n=240, resolution=32), workers=1)
    same = phantom_dataset(PhantomConfig(site="site-a", split="calibration", n=120, resolution=32), workers=1)
    return build_model(spec, seed=0).eval(), ref, same


def _noisier(ds, sd: float, gamma: float, seed: int = 0):
    """The same films through another detector: a contrast curve and extra noise (an input-level shift)."""
    rng = np.random.default_rng(seed)
    px = ds.pixels.astype(np.float32) / 255.0
    px = np.clip(px ** gamma + rng.normal(0, sd, px.shape), 0, 1)
    from dataclasses import replace
    return replace(ds, pixels=np.rint(px * 255).astype(np.uint8))


def test_no_shift_between_two_samples_of_one_site(tiny_world):
    model, ref, same = tiny_world
    d = diagnose_shift(model, ref, same, max_images=120)
    assert d.level == "none" and d.blocks == () and d.strength == 0.0
    assert all(s.excess < d.threshold for s in d.stages)


def test_a_detector_change_is_an_input_level_shift(tiny_world):
    model, ref, same = tiny_world
    d = diagnose_shift(model, ref, _noisier(same, 0.06, 0.7), max_images=120)
    assert d.level == "input" and d.blocks == (1, 2) and d.located_at in ("image", "stem", "block1")
    assert d.strength >= d.threshold
    assert [s.stage for s in d.stages] == ["image", "stem", "block1", "block2", "block3", "block4", "head"]
    record = json.loads(json.dumps(d.as_dict()))
    assert record["level"] == "input" and record["blocks"] == [1, 2] and len(record["stages"]) == 7
    assert record["style"]["noise"] > record["style"]["reference_noise"]  # the added detector noise is measured
    assert record == diagnose_for(model, ref, _noisier(same, 0.06, 0.7), max_images=120)  # seeded: same answer


def test_too_few_films_are_refused(tiny_world):
    model, ref, same = tiny_world
    with pytest.raises(ValueError, match="at least 20"):
        diagnose_shift(model, ref, same.subset(np.arange(10)))
