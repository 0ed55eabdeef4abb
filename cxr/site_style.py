"""A hospital's acquisition style, estimated from its own unlabelled films, and augmentation drawn around it.

Why: retraining with fixed "another hospital" presets guesses at the site; the
site's own images say how its equipment renders a chest. From unlabelled films
of the site (and the training data as the reference) this module estimates

* the **contrast curve** relative to the reference: site ≈ clip(gain·ref + offset, 0, 1) ** gamma, fitted
  to the two pooled intensity histograms (quantile matching, least squares over a gamma grid);
* the **noise** level: the sd of white detector noise, from the median absolute response of the
  3×3 Laplacian-of-Laplacian mask (Immerkær 1996) on unclipped pixels (the median ignores anatomy edges);
* the **blur** relative to the reference: the sd (pixels) of the Gaussian that, applied to reference
  films sent through the site's fitted curve, best reproduces the site's mean power spectrum of the
  central chest window (corners, where sites burn in sharp markers, left out):
  P_site(f) ≈ P_ref→site(f)·exp(−4π²σ²f²) + white floor, the floor fitted too;
* **magnification** (the width of the heart and mediastinum at the heart's level, site over
  reference: AP portable films magnify the heart) and **field of view** (the body's width in
  the frame, site over reference).

Pixels are the model's input rescaled to [0, 1]. The estimates describe populations (medians and
means over films), not single films. `site_matched_augment` then renders reference films the way
the site would: each film, with probability `share`, gets the site's curve, blur, magnification and
noise, each drawn around the estimate (the deviation from "no change" scaled by U(1 − spread, 1 + spread)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter

__all__ = ["ImageStats", "SiteStyle", "estimate_site_style", "image_stats", "site_matched_augment"]

_QUANTILES = np.linspace(0.02, 0.98, 49)
_GAMMAS = np.exp(np.linspace(np.log(0.4), np.log(2.5), 121))
#: the mask whose response to white noise of sd σ has sd 6σ (Immerkær's noise estimator)
_LAPLACE2 = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    """Model input (N, 1, R, R) or (N, R, R) in [-1024, 1024], or uint8 (N, R, R), as float32 (N, R, R) in [0, 1]."""
    a = np.asarray(x)
    if a.ndim == 4:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"expected images (N, 1, R, R) or (N, R, R), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.clip((a.astype(np.float32) / 1024.0 + 1.0) / 2.0, 0.0, 1.0)


@dataclass(frozen=True)
class ImageStats:
    """Per-film acquisition statistics (N rows each) — also the input level of the shift diagnosis."""

    quantiles: np.ndarray  # (N, 5) intensity at 5, 25, 50, 75, 95 %
    noise: np.ndarray  # (N,) white-noise sd
    sharpness: np.ndarray  # (N,) high- over mid-frequency power (noise-corrected), log10
    mediastinum: np.ndarray  # (N,) width of the heart/mediastinum band, fraction of the width
    body: np.ndarray  # (N,) width of the body, fraction of the width

    def matrix(self) -> np.ndarray:
        """(N, 9) float64: the statistics side by side."""
        return np.column_stack([self.quantiles, self.noise, self.sharpness, self.mediastinum, self.body])


def _noise(img: np.ndarray) -> np.ndarray:
    """Immerkær's estimator, median form, on pixels whose 3×3 neighbourhood is unclipped."""
    r = np.zeros_like(img[:, 1:-1, 1:-1])
    lo = np.ones(r.shape, bool)
    for dy in range(3):
        for dx in range(3):
            patch = img[:, dy:dy + r.shape[1], dx:dx + r.shape[2]]
            r += _LAPLACE2[dy, dx] * patch
            lo &= (patch > 0.02) & (patch < 0.98)
    out = np.empty(len(img))
    for i in range(len(img)):
        v = np.abs(r[i][lo[i]])
        out[i] = np.median(v) / 0.6745 / 6.0 if v.size > 16 else np.nan
    return out


def _radial_power(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean periodogram of each film's central chest window per radial frequency bin: (N, B), (B,) cycles/px.

    The window (the middle 60 % of rows and columns, Hann-tapered) leaves out the corners, where sites
    burn in sharp markers that would pass for fine detail. Normalised so that white noise of variance σ²
    has expected power σ² at every frequency.
    """
    _n, h, w = img.shape
    k = int(0.6 * min(h, w))
    y0, x0 = (h - k) // 2, (w - k) // 2
    c = img[:, y0:y0 + k, x0:x0 + k]
    c = c - c.mean(axis=(1, 2), keepdims=True)
    win = np.outer(np.hanning(k), np.hanning(k))
    p = np.abs(np.fft.fft2(c * win)) ** 2 / (win**2).sum()
    fy, fx = np.meshgrid(np.fft.fftfreq(k), np.fft.fftfreq(k), indexing="ij")
    edges = np.linspace(0.0, 0.5, 13)
    idx = np.digitize(np.hypot(fy, fx).ravel(), edges) - 1
    ok = (idx >= 0) & (idx < len(edges) - 1)
    counts = np.bincount(idx[ok], minlength=len(edges) - 1)
    out = np.stack([np.bincount(idx[ok], weights=pi.ravel()[ok], minlength=len(edges) - 1) for pi in p])
    return out / np.maximum(counts, 1), 0.5 * (edges[1:] + edges[:-1])


def _run_width(prof: np.ndarray, c: int, level: float) -> float:
    """Width (pixels, sub-pixel) of the run around index `c` where `prof` >= `level`."""
    w = len(prof)
    a = c
    while a > 0 and prof[a - 1] >= level:
        a -= 1
    b = c
    while b < w - 1 and prof[b + 1] >= level:
        b += 1
    # Linear interpolation of both crossings (the run's ends lie between a-1|a and b|b+1).
    left = a - (prof[a] - level) / (prof[a] - prof[a - 1]) if a > 0 and prof[a] != prof[a - 1] else float(a)
    right = b + (prof[b] - level) / (prof[b] - prof[b + 1]) if b < w - 1 and prof[b] != prof[b + 1] else float(b)
    return float(right - left)


def _outer_width(prof: np.ndarray, a: int, b: int, level: float) -> float:
    """Sub-pixel distance between the first (`a`) and last (`b`) indices at or above `level`."""
    left = a - (prof[a] - level) / (prof[a] - prof[a - 1]) if a > 0 and prof[a] != prof[a - 1] else float(a)
    last = len(prof) - 1
    right = b + (prof[b] - level) / (prof[b] - prof[b + 1]) if b < last and prof[b] != prof[b + 1] else float(b)
    return float(right - left)


def _widths(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mediastinum, body) widths as fractions of the image width, from row-band profiles.

    Mediastinum: at the heart's level, the bright run around the brightest central column, cut at
    half-way between its peak and the darker lung on either side. Body: the run of the chest band's
    profile above a quarter of the way from its minimum to its maximum.
    """
    n, h, w = img.shape
    heart = img[:, int(0.48 * h):int(0.68 * h)].mean(axis=1)  # (N, W) profile at the heart's level
    chest = img[:, int(0.30 * h):int(0.70 * h)].mean(axis=1)
    med = np.empty(n)
    body = np.empty(n)
    c0, c1 = int(0.35 * w), int(0.70 * w)
    for i in range(n):
        prof = heart[i]
        c = c0 + int(np.argmax(prof[c0:c1]))
        left, right = prof[int(0.08 * w):c].min(initial=prof[c]), prof[c:int(0.92 * w)].min(initial=prof[c])
        med[i] = _run_width(prof, c, 0.5 * (prof[c] + 0.5 * (left + right))) / w
        ch = chest[i]
        inside = np.flatnonzero(ch >= ch.min() + 0.25 * (ch.max() - ch.min()))
        body[i] = _outer_width(ch, inside[0], inside[-1], ch.min() + 0.25 * (ch.max() - ch.min())) / w
    return med, body


def image_stats(images: np.ndarray) -> ImageStats:
    """Acquisition statistics of each film (model input (N, 1, R, R) in [-1024, 1024], or uint8 (N, R, R))."""
    return _stats(_unit(images))


def _stats(img: np.ndarray) -> ImageStats:
    noise = _noise(img)
    power, f = _radial_power(img)
    hi, mid = (f > 0.3), (f > 0.1) & (f <= 0.2)
    signal_hi = np.maximum(power[:, hi].mean(1) - noise**2, 1e-9)
    sharp = np.log10(signal_hi / np.maximum(power[:, mid].mean(1) - noise**2, 1e-9))
    med, body = _widths(img)
    return ImageStats(np.quantile(img.reshape(len(img), -1), [0.05, 0.25, 0.5, 0.75, 0.95], axis=1).T,
                      noise, sharp, med, body)


@dataclass(frozen=True)
class SiteStyle:
    """A site's acquisition relative to a reference (identity: gamma 1, gain 1, offset 0, blur 0, ×1 sizes)."""

    gamma: float
    gain: float
    offset: float
    noise: float  # the site's white-noise sd (intensity units in [0, 1])
    reference_noise: float
    blur_px: float  # extra Gaussian blur sd, in pixels at the images' resolution
    magnification: float  # heart/mediastinum width, site over reference
    field_of_view: float  # body width, site over reference
    n_images: int
    n_reference: int
    resolution: int

    @property
    def extra_noise(self) -> float:
        """The noise sd to add to a reference film to reach the site's level."""
        return float(np.sqrt(max(self.noise**2 - self.reference_noise**2, 0.0)))

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()} | {
            "extra_noise": round(self.extra_noise, 5)}


def _fit_curve(ref_q: np.ndarray, site_q: np.ndarray) -> tuple[float, float, float]:
    """(gamma, gain, offset) minimising Σ (site_q − clip(gain·ref_q + offset)^gamma)² over the gamma grid."""
    best = (np.inf, 1.0, 1.0, 0.0)
    design = np.column_stack([ref_q, np.ones_like(ref_q)])
    for g in _GAMMAS:
        lin = np.clip(site_q, 1e-6, 1.0) ** (1.0 / g)
        (a, b), *_ = np.linalg.lstsq(design, lin, rcond=None)
        err = float(np.sum((site_q - np.clip(a * ref_q + b, 0.0, 1.0) ** g) ** 2))
        if err < best[0]:
            best = (err, float(g), float(a), float(b))
    return best[1], best[2], best[3]


def _fit_blur(site_power: np.ndarray, mapped_power: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """(blur sd in px, white floor) with site ≈ mapped · exp(−4π²σ²f²) + floor, least squares in log power.

    `mapped_power` is the mean spectrum of reference films sent through the site's fitted curve, less
    their own white-noise floor; the site's floor (its noise, partly clipped) is fitted, not assumed,
    so that a floor slightly off is not read as blur. Grid: σ 0–1.5 px by 0.01, floor log-spaced.
    """
    band = f > 0.06
    sig = np.arange(0.0, 1.5, 0.01)[:, None, None]
    floor = np.exp(np.linspace(np.log(1e-6), np.log(1e-1), 241))[None, :, None]
    model = np.maximum(mapped_power[band], 1e-9)[None, None, :] * np.exp(-4 * np.pi**2 * sig**2 * f[band] ** 2)
    err = ((np.log(model + floor) - np.log(site_power[band])[None, None, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(sig[i, 0, 0]), float(floor[0, j, 0])


def estimate_site_style(images_of_site: np.ndarray, reference: np.ndarray | None = None) -> SiteStyle:
    """Estimate a site's style from its unlabelled films, relative to `reference` films (the training data).

    Takes images as model input (N, 1, R, R) in [-1024, 1024] or uint8 (N, R, R), both at the same
    resolution; without a reference the curve, blur and sizes are absolute (identity reference, no noise).
    Returns a `SiteStyle`. Raises `ValueError` for fewer than 8 films or mismatched resolutions.
    """
    site = _unit(images_of_site)
    if len(site) < 8:
        raise ValueError(f"need at least 8 films of the site to estimate its style, got {len(site)}")
    ref = _unit(reference) if reference is not None else None
    if ref is not None and ref.shape[1:] != site.shape[1:]:
        raise ValueError(f"site films are {site.shape[1:]}, reference films {ref.shape[1:]}")
    st = _stats(site)
    p_site, f = _radial_power(site)
    site_q = np.quantile(site, _QUANTILES)
    noise = float(np.nanmedian(st.noise))
    if ref is None:
        return SiteStyle(1.0, 1.0, 0.0, noise, 0.0, 0.0, 1.0, 1.0, len(site), 0, site.shape[-1])
    rt = _stats(ref)
    gamma, gain, offset = _fit_curve(np.quantile(ref, _QUANTILES), site_q)
    ref_noise = float(np.nanmedian(rt.noise))
    mapped = np.clip(gain * ref + offset, 0.0, 1.0) ** gamma
    p_mapped, _ = _radial_power(mapped)
    blur, _ = _fit_blur(p_site.mean(0), p_mapped.mean(0) - float(np.nanmedian(_noise(mapped))) ** 2, f)
    # Sizes are measured on the site's films mapped back through the fitted curve, so that a contrast
    # change does not move the half-level crossings.
    lin = (np.clip(site, 0.0, 1.0) ** (1.0 / gamma) - offset) / gain
    st = _stats(np.clip(lin, 0.0, 1.0))
    mag = float(_trimmed_mean(st.mediastinum) / max(_trimmed_mean(rt.mediastinum), 1e-6))
    fov = float(_trimmed_mean(st.body) / max(_trimmed_mean(rt.body), 1e-6))
    return SiteStyle(gamma, gain, offset, noise, ref_noise, blur, mag, fov, len(site), len(ref), site.shape[-1])


def _trimmed_mean(v: np.ndarray, cut: float = 0.1) -> float:
    v = np.sort(v[np.isfinite(v)])
    k = int(cut * len(v))
    return float(v[k:len(v) - k].mean()) if len(v) > 2 * k else float("nan")


def site_matched_augment(x: np.ndarray, rng: np.random.Generator, style: SiteStyle, *, spread: float = 0.5,
                         share: float = 0.5) -> np.ndarray:
    """Render model-input films (N, 1, R, R) the way the site would, around the estimated style.

    Each film, with probability `share`, gets (in this order, as a detector would): magnification about
    the lower mediastinum and field-of-view zoom, the contrast curve, blur, then noise — each parameter's
    deviation from "no change" scaled by d ~ U(1 − spread, 1 + spread) (one d per film). The other films
    get the training loop's mild jitter only (2-pixel shift, ±8 % exposure). Returns float32 (N, 1, R, R).
    """
    n, _, h, w = x.shape
    out = np.empty_like(x, dtype=np.float32)
    for i in range(n):
        img = (x[i, 0].astype(np.float32) / 1024.0 + 1.0) / 2.0
        if rng.random() < share:
            d = rng.uniform(1.0 - spread, 1.0 + spread)
            img = _zoom(img, [(1.0 + (style.magnification - 1.0) * d, (0.6 * h, 0.5 * w)),
                              (1.0 + (style.field_of_view - 1.0) * d, (0.5 * h, 0.5 * w))])
            gain, offset = 1.0 + (style.gain - 1.0) * d, style.offset * d
            img = np.clip(gain * img + offset, 0.0, 1.0) ** (style.gamma ** d)
            blur = style.blur_px * d
            if blur > 0.1:
                img = gaussian_filter(img, blur, mode="nearest")
            img = img + rng.normal(0.0, style.extra_noise * d, img.shape)
        else:
            dy, dx = rng.integers(0, 5, size=2)
            img = np.pad(img, 2, mode="edge")[dy:dy + h, dx:dx + w] * rng.uniform(0.92, 1.08)
        out[i, 0] = (np.clip(img, 0.0, 1.0) * 2.0 - 1.0) * 1024.0
    return out


def _zoom(img: np.ndarray, zooms: list[tuple[float, tuple[float, float]]]) -> np.ndarray:
    """Zoom by each (factor, centre) in turn, as one cubic resampling (the composition of scalings about
    points is a scaling about a point: one interpolation, half the time of two, and less blur)."""
    scale, offset = 1.0, np.zeros(2)
    for z, centre in reversed(zooms):  # the input coordinate of an output pixel: the last zoom's map first
        if abs(z - 1.0) < 1e-3:
            continue
        c = np.array(centre)
        offset = offset / z + c - c / z
        scale /= z
    if scale == 1.0:
        return img
    return affine_transform(img, np.eye(2) * scale, offset=offset, order=3, mode="nearest")  # cubic: little blur
