"""Site style from unlabelled films, checked against the phantom's hospitals, whose true parameters are known.

The truth comes from `cxr.phantom_render.SITES` and the phantom's own rendering rules (AP films
are 1.3× noisier, 0.35 px blurrier and magnify the heart by about 13 %), not from the estimator.
"""

import numpy as np
import pytest

from cxr.data import phantom_dataset
from cxr.phantom import PhantomConfig
from cxr.phantom_render import SITES
from cxr.site_style import SiteStyle, estimate_site_style, image_stats, site_matched_augment

RES = 64
N = 200
AP_NOISE, AP_BLUR_PX, AP_HEART = 1.3, 0.35, 0.13  # phantom_render.detector / phantom.render_row


def true_curve(site: str, x: np.ndarray) -> np.ndarray:
    """The site's pixel value for a site-a pixel value x (site-a: gamma 1, contrast 1, exposure 0)."""
    s = SITES[site]
    return np.clip((x - 0.35) * s.contrast + 0.35 + s.exposure, 0, 1) ** s.gamma


def true_noise(site: str) -> float:
    """The median film's noise sd (AP films are noisier; the median film is AP when most are)."""
    s = SITES[site]
    return s.noise * (AP_NOISE if s.ap_fraction > 0.5 else 1.0)


def true_blur(site: str) -> float:
    """Blur relative to site-a, in quadrature: sqrt(E[σ²_site] − E[σ²_site-a]) over the films' own blurs."""
    def mean_sq(name: str) -> float:
        s = SITES[name]
        base = s.blur * RES
        return (1 - s.ap_fraction) * base**2 + s.ap_fraction * (base + AP_BLUR_PX) ** 2
    return float(np.sqrt(max(mean_sq(site) - mean_sq("site-a"), 0.0)))


def true_magnification(site: str) -> float:
    return (1 + AP_HEART * SITES[site].ap_fraction) / (1 + AP_HEART * SITES["site-a"].ap_fraction)


def fitted_curve(st: SiteStyle, x: np.ndarray) -> np.ndarray:
    return np.clip(st.gain * x + st.offset, 0, 1) ** st.gamma


@pytest.fixture(scope="module")
def films():
    ref = phantom_dataset(PhantomConfig(site="site-a", split="train", n=N, resolution=RES), workers=1)
    sites = {s: phantom_dataset(PhantomConfig(site=s, split="calibration", n=N, resolution=RES), workers=1)
             for s in ("site-a", "site-b", "site-c")}
    return ref, sites


@pytest.fixture(scope="module")
def styles(films):
    ref, sites = films
    return {s: estimate_site_style(d.pixels, ref.pixels) for s, d in sites.items()}


def test_the_estimates_order_the_sites(styles):
    """Each estimate ranks the three hospitals as their true parameters do."""
    sites = sorted(styles)
    x = np.array([0.2])  # how a dark tone (lung) comes out: the curve's lift of the darks

    def order(values: dict) -> list[str]:
        return sorted(sites, key=values.get)

    assert order({s: styles[s].noise for s in sites}) == order({s: true_noise(s) for s in sites})
    assert order({s: styles[s].blur_px for s in sites}) == order({s: true_blur(s) for s in sites})
    assert order({s: styles[s].magnification for s in sites}) == order({s: true_magnification(s) for s in sites})
    assert order({s: fitted_curve(styles[s], x)[0] for s in sites}) == order({s: true_curve(s, x)[0] for s in sites})


@pytest.mark.parametrize("site", ["site-a", "site-b", "site-c"])
def test_the_estimates_land_near_the_truth(styles, site):
    st = styles[site]
    x = np.linspace(0.1, 0.9, 17)
    assert np.abs(fitted_curve(st, x) - true_curve(site, x)).max() < 0.05
    assert st.noise == pytest.approx(true_noise(site), rel=0.12)
    assert st.blur_px == pytest.approx(true_blur(site), abs=0.12)
    assert st.magnification == pytest.approx(true_magnification(site), abs=0.05)
    assert st.field_of_view == pytest.approx(1.0, abs=0.05)  # no phantom site changes the body's size


def test_the_same_site_is_the_identity(films):
    ref, sites = films
    st = estimate_site_style(sites["site-a"].pixels, ref.pixels)
    x = np.linspace(0.1, 0.9, 9)
    assert np.abs(fitted_curve(st, x) - x).max() < 0.02
    assert st.extra_noise < 0.005 and st.blur_px < 0.1


def test_augmentation_renders_reference_films_in_the_site_style(films, styles):
    """Site-a films augmented with site-b's estimated style are estimated back as site-b-like."""
    ref, _ = films
    target = styles["site-b"]
    x = ref.images(np.arange(N))
    out = site_matched_augment(x, np.random.default_rng(0), target, spread=0.0, share=1.0)
    assert out.shape == x.shape and out.dtype == np.float32 and -1024 <= out.min() and out.max() <= 1024
    back = estimate_site_style(out, ref.pixels)
    xs = np.linspace(0.2, 0.9, 8)  # in the darkest tones, noise clipped at black lifts the quantiles
    assert np.abs(fitted_curve(back, xs) - fitted_curve(target, xs)).max() < 0.05
    assert back.noise == pytest.approx(target.noise, rel=0.15)
    assert back.blur_px == pytest.approx(target.blur_px, abs=0.15)
    assert back.magnification == pytest.approx(target.magnification, abs=0.04)


def test_augmentation_draws_around_the_estimate_and_is_seeded(films, styles):
    ref, _ = films
    x = ref.images(np.arange(40))
    st = styles["site-b"]
    a = site_matched_augment(x, np.random.default_rng(3), st)
    assert np.array_equal(a, site_matched_augment(x, np.random.default_rng(3), st))
    # share 0: only the mild jitter, so every film stays close to itself; share 1 moves every film.
    none = site_matched_augment(x, np.random.default_rng(3), st, share=0.0)
    full = site_matched_augment(x, np.random.default_rng(3), st, share=1.0, spread=0.0)
    assert np.median(image_stats(none).noise) == pytest.approx(np.median(image_stats(x).noise), rel=0.2)
    assert np.median(image_stats(full).noise) == pytest.approx(st.noise, rel=0.15)


def test_bad_inputs_are_refused(films):
    ref, sites = films
    with pytest.raises(ValueError, match="at least 8"):
        estimate_site_style(sites["site-b"].pixels[:5], ref.pixels)
    with pytest.raises(ValueError, match="reference"):
        estimate_site_style(sites["site-b"].pixels, ref.pixels[:, :32, :32])
    assert set(styles_dict := estimate_site_style(sites["site-b"].pixels[:20], ref.pixels[:20]).as_dict()) >= {
        "gamma", "gain", "offset", "noise", "extra_noise", "blur_px", "magnification", "field_of_view"}
    assert all(isinstance(v, int | float) for v in styles_dict.values())
