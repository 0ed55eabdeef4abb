"""A synthetic head-level world: features, labels, two sites, a shifted Cardiomegaly score at site-b."""

import numpy as np
import pytest

from cxr.spec import XRV_PATHOLOGIES, preset
from treatments.base import Case, FeatureSplit, ReportInfo, Slo, TreatmentContext, probabilities

CARDIO = XRV_PATHOLOGIES.index("Cardiomegaly")


def make_split(rng, n, site, shift, name):
    f = 16
    latent = rng.standard_normal((n, f)).astype(np.float32)
    x = np.maximum(latent, 0) + 0.1
    truth = latent @ (np.eye(f, 18, dtype=np.float32) * 2.0)  # output k < 16 depends on feature k
    y = (rng.random((n, 18)) < 1 / (1 + np.exp(-3 * (truth - 2.5)))).astype(np.float32)
    y[:, 14:] = np.nan
    # A site effect: feature 15 is "AP-ness", present at site-b; the parent head reads it as Cardiomegaly.
    x[:, 15] = shift * (rng.random(n) < 0.75)
    return FeatureSplit(name, x.astype(np.float32), y, tuple(f"{site}/{name}/{i}" for i in range(n)), (site,) * n)


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    train = make_split(rng, 3000, "site-a", 0.0, "train")
    cal = FeatureSplit.concat([make_split(rng, 1000, "site-a", 0.0, "cal"), make_split(rng, 1000, "site-b", 2.0, "fb")],
                              "calibration")
    w = np.eye(18, 16, dtype=np.float32) * 2.0
    w[CARDIO, 15] = 1.5  # the parent's flaw: AP-ness raises the Cardiomegaly logit
    b = np.full(18, -2.5, dtype=np.float32)
    probs = probabilities(cal.features, w, b)
    thresholds = {p: 0.5 for p in XRV_PATHOLOGIES[:14]}
    site_b = np.array([s == "site-b" for s in cal.sites])
    fp = np.flatnonzero(site_b & (cal.labels[:, CARDIO] == 0) & (probs[:, CARDIO] >= 0.5))
    cases = tuple(Case(cal.image_ids[i], float(probs[i, CARDIO]), 0) for i in fp[:50])
    report = ReportInfo(1, "Cardiomegaly", "false_positives", "fpr", 0.3, 0.1, "site-b", cases)
    spec = preset("tiny").model_copy(update={"growth_rate": 8})  # 16 pooled features
    assert spec.num_features == 16
    ctx = TreatmentContext(
        report=report, spec=spec, head_weight=w, head_bias=b, thresholds=thresholds, train=train, calibration=cal,
        slo=Slo(min_recall=0.8, max_fpr=0.1, min_auroc=0.7), params={}, delta=0.05,
    )
    return ctx
