"""The phantom: deterministic, real NIH label statistics, patient-disjoint, site effects."""

import dataclasses

import numpy as np
import pytest

from cxr.data import phantom_dataset
from cxr.errors import InvalidInput
from cxr.nih import load_nih_metadata
from cxr.phantom import SPLITS, PhantomConfig, generate, render_row, select_rows
from cxr.phantom_render import SITES
from cxr.spec import NIH_PATHOLOGIES


def test_same_seed_same_digest_and_pixels():
    cfg = PhantomConfig(n=40, resolution=32, seed=5)
    a, b = phantom_dataset(cfg, workers=1), phantom_dataset(cfg, workers=1)
    assert a.digest() == b.digest()
    assert np.array_equal(a.pixels, b.pixels)
    c = phantom_dataset(PhantomConfig(n=40, resolution=32, seed=6), workers=1)
    assert c.digest() != a.digest()


def test_images_follow_xrv_conventions():
    ds = phantom_dataset(PhantomConfig(n=16, resolution=32), workers=1)
    x = ds.images(np.arange(16))
    assert x.shape == (16, 1, 32, 32) and x.dtype == np.float32
    assert x.min() >= -1024 and x.max() <= 1024 and x.std() > 100
    assert ds.labels.shape == (16, 18)
    assert np.isnan(ds.labels[:, 14:]).all()  # the 4 non-NIH outputs are unknown
    assert not np.isnan(ds.labels[:, :14]).any()


def test_more_images_extend_without_changing_earlier_ones():
    small = generate(PhantomConfig(n=10, resolution=32), workers=1)
    big = generate(PhantomConfig(n=30, resolution=32), workers=1)
    same = [i for i, iid in enumerate(big.image_ids) if iid in set(small.image_ids)]
    assert len(same) == 10
    for i in same:
        j = small.image_ids.index(big.image_ids[i])
        assert np.array_equal(big.images[i], small.images[j])


def test_labels_are_the_nih_rows_labels():
    meta = load_nih_metadata()
    cfg = PhantomConfig(n=50, resolution=32)
    rows = select_rows(meta, cfg)
    d = generate(cfg, workers=1)
    assert np.array_equal(d.labels[:, :14], meta.labels[rows].astype(np.float32))
    assert d.views == ["AP" if v else "PA" for v in meta.view_ap[rows]]


def test_label_statistics_match_the_nih_csv():
    """Prevalence and co-occurrence of a large selection stay close to NIH's (same view mix)."""
    meta = load_nih_metadata()
    rows = select_rows(meta, PhantomConfig(site="site-c", split="train", n=6000))
    ap_share = meta.view_ap[rows].mean()
    # NIH reference at the same AP share.
    ref_prev = ap_share * meta.labels[meta.view_ap].mean(0) + (1 - ap_share) * meta.labels[~meta.view_ap].mean(0)
    prev = meta.labels[rows].mean(0)
    assert np.allclose(prev, ref_prev, atol=0.02)
    lab = meta.labels.astype(float)
    sel = meta.labels[rows].astype(float)
    co_ref = (lab.T @ lab) / len(lab)
    co_sel = (sel.T @ sel) / len(sel)
    assert np.abs(co_ref - co_sel).max() < 0.02
    # The strongest NIH pair (Effusion with Infiltration) stays the strongest.
    e, i = NIH_PATHOLOGIES.index("Effusion"), NIH_PATHOLOGIES.index("Infiltration")
    off = co_sel - np.diag(np.diag(co_sel))
    assert np.unravel_index(off.argmax(), off.shape) in {(e, i), (i, e)}


def test_sites_and_splits_never_share_a_patient():
    meta = load_nih_metadata()
    seen: dict[int, tuple[str, str]] = {}
    for site in SITES:
        for split in SPLITS:
            for r in select_rows(meta, PhantomConfig(site=site, split=split, n=300)):
                pid = int(meta.patient_id[r])
                assert seen.setdefault(pid, (site, split)) == (site, split)


def test_site_b_is_ap_heavy():
    meta = load_nih_metadata()
    a = meta.view_ap[select_rows(meta, PhantomConfig(site="site-a", n=1000))].mean()
    b = meta.view_ap[select_rows(meta, PhantomConfig(site="site-b", n=1000))].mean()
    assert a == pytest.approx(SITES["site-a"].ap_fraction, abs=0.01)
    assert b == pytest.approx(SITES["site-b"].ap_fraction, abs=0.01)


def test_ap_films_magnify_the_heart():
    """The same row drawn as AP shows a wider cardiac silhouette than as PA."""
    meta = load_nih_metadata()
    cfg = PhantomConfig(resolution=128)
    healthy = [r for r in select_rows(meta, PhantomConfig(n=400)) if meta.labels[r].sum() == 0][:30]
    widths = {True: [], False: []}
    for ap in (True, False):
        as_view = dataclasses.replace(meta, view_ap=np.full_like(meta.view_ap, ap))
        for r in healthy:
            img, _, _ = render_row(as_view, int(r), cfg)
            band = img[70:80].astype(float).mean(0)  # a row through the heart
            widths[ap].append((band > band.max() * 0.8).sum())
    assert np.mean(widths[True]) > np.mean(widths[False])


def test_bad_configs_name_the_field():
    with pytest.raises(InvalidInput, match="site"):
        PhantomConfig(site="mars")
    with pytest.raises(InvalidInput, match="split"):
        PhantomConfig(split="test")
    with pytest.raises(InvalidInput, match="n"):
        PhantomConfig(n=0)
