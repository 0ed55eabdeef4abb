"""Rendering of one synthetic frontal chest radiograph (the phantom's drawing code).

Everything is drawn analytically in normalised coordinates (x to the image
right = the patient's left, y down), so one code path renders 32² test images,
64² demo images and 224² benchmark images. An image is an attenuation map:
soft tissue, lungs (negative), mediastinum, heart, spine, ribs, clavicles,
scapulae, vessels, then each present pathology's sign; the site's detector
(contrast curve, blur, noise) turns it into 8-bit pixels.

AP portable films differ from PA films the way they do in hospitals: the heart
is magnified (it lies far from the detector and the source is close), lung
volumes are lower, the mediastinum is wider, the scapulae project over the
upper lung fields, and portable detectors are noisier.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

PATHOLOGY_ORDER = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
)  # fmt: skip


@dataclass(frozen=True)
class SiteProfile:
    """How one hospital's films look."""

    name: str
    ap_fraction: float  # share of AP (portable) films among its studies
    gamma: float  # detector/processing contrast curve
    contrast: float
    exposure: float
    noise: float  # Gaussian noise sd, in [0, 1] intensity units
    blur: float  # Gaussian blur sd, as a fraction of the image width
    marker_corner: int  # where the site burns its AP/portable marker (0 = top-left, 1 = top-right)
    #: bumped when a site's look changes, so that cached films of the old look are not served for the new
    revision: int = 1


SITES: dict[str, SiteProfile] = {
    "site-a": SiteProfile("site-a", 0.12, 1.00, 1.00, 0.00, 0.020, 0.000, 0),
    "site-b": SiteProfile("site-b", 0.75, 0.85, 0.92, 0.04, 0.035, 0.004, 1),
    # A district hospital reading its films on an older computed-radiography system: a low-dose
    # protocol triples the detector noise, and its look-up table renders films brighter and flatter.
    # Its patients and views are ordinary (a third AP): the shift is in the acquisition, input-level.
    "site-c": SiteProfile("site-c", 0.35, 0.75, 0.85, 0.05, 0.060, 0.003, 0, revision=2),
}


@functools.lru_cache(maxsize=8)
def _grid(res: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(res, dtype=np.float32) + 0.5) / res
    return np.meshgrid(c, c)  # X, Y


@functools.lru_cache(maxsize=32)
def _interp_matrix(res: int, cells: int) -> np.ndarray:
    """(res, cells+1) bilinear weights: smooth noise = W @ G @ W.T."""
    pos = (np.arange(res) + 0.5) / res * cells
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 1)
    f = (pos - i0).astype(np.float32)
    f = f * f * (3 - 2 * f)  # smoothstep: no creases at cell borders
    w = np.zeros((res, cells + 1), dtype=np.float32)
    w[np.arange(res), i0] = 1 - f
    w[np.arange(res), i0 + 1] = f
    return w


def smooth_noise(rng: np.random.Generator, res: int, cells: int) -> np.ndarray:
    w = _interp_matrix(res, cells)
    g = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return w @ g @ w.T


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def ellipse(X, Y, cx, cy, rx, ry, edge) -> np.ndarray:
    """Soft ellipse mask in [0, 1]; `edge` is the soft border width (normalised units)."""
    d = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
    return _sig((1.0 - d) * min(rx, ry) / edge)


def segment(X, Y, x0, y0, x1, y1, half_width, edge) -> np.ndarray:
    """Soft band around the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    d = np.hypot(X - (x0 + t * dx), Y - (y0 + t * dy))
    return _sig((half_width - d) / edge)


@dataclass
class Anatomy:
    """One patient's geometry on one film (normalised coordinates)."""

    cx: float
    top: float
    half_width: float  # half of the thoracic width
    dome_r: float  # right hemidiaphragm dome (image left), y of its apex
    dome_l: float
    ctr: float  # cardiothoracic ratio as projected on this film
    heart_cy: float
    mediastinum: float  # half width
    ap: bool
    lung_scale: float  # lung attenuation multiplier (< 1 for hyperlucent lungs)

    def lung_centres(self) -> tuple[float, float]:
        return self.cx - 0.52 * self.half_width, self.cx + 0.52 * self.half_width

    def heart_box(self) -> tuple[float, float, float, float]:
        hw = self.ctr * self.half_width
        return self.cx + 0.28 * hw, self.heart_cy, hw, 0.78 * hw


def draw_anatomy(rng: np.random.Generator, res: int, a: Anatomy, male: bool, age: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (attenuation map, lung mask) for a normal chest with geometry `a`."""
    X, Y = _grid(res)
    edge = max(0.6 / res, 0.004)
    att = 0.42 * ellipse(X, Y, a.cx, 0.58, a.half_width * 1.32, 0.62, 0.03)  # soft tissue
    if not male:  # breast shadows over the lower lung zones
        for sx in (-1, 1):
            att += 0.05 * ellipse(X, Y, a.cx + sx * 0.62 * a.half_width, a.dome_r - 0.02, 0.17, 0.09, 0.04)
    hx, hy, hw, hh = a.heart_box()
    heart = ellipse(X, Y, hx, hy, hw, hh, edge * 2)
    lung = np.zeros_like(X)
    above = np.zeros_like(X)  # above the diaphragm
    for side, (lx, dome) in enumerate(zip(a.lung_centres(), (a.dome_r, a.dome_l), strict=True)):
        rx = 0.40 * a.half_width
        cy = (a.top + dome) / 2
        ry = (dome - a.top) / 2 + 0.08
        lateral = -1 if side == 0 else 1
        # Diaphragm dome: a parabola, highest near mid-hemithorax, lowest at the costophrenic angle.
        dome_y = dome + 2.6 * (X - (lx - lateral * 0.03)) ** 2
        half = (X < a.cx) if side == 0 else (X >= a.cx)
        above = np.where(half, _sig((dome_y - Y) / edge), above)
        m = ellipse(X, Y, lx, cy, rx, ry, edge * 2) * _sig((dome_y - Y) / edge)
        # The medial border steps aside for the mediastinum.
        m = m * _sig((np.abs(X - a.cx) - a.mediastinum) / edge) * (1.0 - heart)
        lung = np.maximum(lung, m)
    att -= 0.30 * a.lung_scale * lung
    # Heart and mediastinum: one white silhouette, the heart resting on the left hemidiaphragm.
    heart = heart * above
    medi = _sig((a.mediastinum - np.abs(X - a.cx)) / (2 * edge))
    medi = medi * _sig((hy - Y) / 0.02) * _sig((Y - a.top + 0.08) / 0.02)
    att += 0.30 * np.maximum(heart, medi)
    att += 0.06 * _sig((0.035 - np.abs(X - a.cx)) / edge)  # spine
    att -= 0.10 * _sig((0.012 - np.abs(X - a.cx)) / edge) * _sig((a.top + 0.16 - Y) / edge) * (Y > a.top - 0.1)
    # Below the diaphragm: liver and stomach are dense.
    dome_mid = 0.5 * (a.dome_r + a.dome_l)
    att += 0.26 * (1.0 - above) * ellipse(X, Y, a.cx, 0.62, a.half_width * 1.3, 0.6, 0.03)
    # Posterior ribs: periodic curved bands over the thorax (osteopenic with age).
    rib_i = 0.085 * (1.15 - age / 180.0)
    thorax = ellipse(X, Y, a.cx, (a.top + dome_mid) / 2 + 0.03, a.half_width * 1.05, (dome_mid - a.top) / 2 + 0.1, 0.02)
    phase = (Y - a.top - 0.9 * (X - a.cx) ** 2) / 0.062
    att += rib_i * thorax * (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6
    # Clavicles: horizontal and projected higher on AP films.
    lift = -0.035 if a.ap else 0.0
    for sx in (-1, 1):
        x0, x1 = a.cx + sx * 0.03, a.cx + sx * 0.95 * a.half_width
        y0, y1 = a.top + 0.05 + lift, a.top + (0.01 if a.ap else -0.04) + lift
        att += 0.15 * segment(X, Y, x0, y0, x1, y1, 0.011, edge)
    # Scapulae: retracted off the lungs on PA films, over the upper lung fields on AP films.
    for sx in (-1, 1):
        if a.ap:
            sc = ellipse(X, Y, a.cx + sx * 0.80 * a.half_width, a.top + 0.15, 0.07, 0.16, 0.02)
            att += 0.07 * sc
        else:
            att += 0.07 * ellipse(X, Y, a.cx + sx * 1.18 * a.half_width, a.top + 0.15, 0.05, 0.15, 0.02)
    # Vessels: branching texture densest at the hila.
    hila = np.exp(-(((np.abs(X - a.cx) - 0.12) / 0.16) ** 2) - ((Y - (a.top + 0.28)) / 0.22) ** 2)
    vessels = np.abs(smooth_noise(rng, res, 14)) * (0.25 + hila)
    att += 0.05 * vessels * lung
    return att.astype(np.float32), lung.astype(np.float32)


def detector(att: np.ndarray, site: SiteProfile, rng: np.random.Generator, ap: bool) -> np.ndarray:
    """Turn attenuation into 8-bit pixels the way this site's equipment does."""
    res = att.shape[0]
    img = np.clip(att, 0.0, 1.0)
    exposure = site.exposure + rng.normal(0, 0.03)
    contrast = site.contrast * rng.normal(1.0, 0.05)
    img = np.clip((img - 0.35) * contrast + 0.35 + exposure, 0.0, 1.0) ** site.gamma
    blur = site.blur * res + (0.35 if ap else 0.0)
    if blur > 0.05:
        img = gaussian_filter(img, blur, mode="nearest")
    noise = site.noise * (1.3 if ap else 1.0)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    if ap:  # the burnt-in portable marker, in this site's corner
        m = max(2, res // 16)
        x0 = 1 if site.marker_corner == 0 else res - m - 1
        img[1 : 1 + m // 2, x0 : x0 + m] = 0.95
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
