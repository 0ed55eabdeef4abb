"""Site-style augmentation: what another hospital's films do to an image.

Used by retraining treatments to make a model robust to a site's acquisition:
magnification (AP portable films enlarge the heart; approximated by a zoom
about the mediastinum), contrast curve (gamma), exposure, detector noise and
blur. Inputs and outputs are model input: float32 (N, 1, R, R) in [-1024, 1024].
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter


def random_site_style(x: np.ndarray, rng: np.random.Generator, *, max_zoom: float = 1.2, gamma: float = 0.2,
               max_noise: float = 0.04, max_blur_px: float = 0.8) -> np.ndarray:
    n, _, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        img = (x[i, 0] / 1024.0 + 1.0) / 2.0  # back to [0, 1]
        z = rng.uniform(1.0, max_zoom)
        if z > 1.001:  # zoom about the lower mediastinum, where the heart is
            c = np.array([0.6 * h, 0.5 * w])
            img = affine_transform(img, np.eye(2) / z, offset=c - c / z, order=1, mode="nearest")
        img = np.clip(img, 0, 1) ** rng.uniform(1 - gamma, 1 + gamma)
        img = img * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        sigma = rng.uniform(0, max_blur_px)
        if sigma > 0.1:
            img = gaussian_filter(img, sigma, mode="nearest")
        img = img + rng.normal(0, rng.uniform(0, max_noise), img.shape)
        out[i, 0] = (np.clip(img, 0, 1) * 2.0 - 1.0) * 1024.0
    return out.astype(np.float32)
