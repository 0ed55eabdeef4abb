"""Where on the film a Grad-CAM map points, in words a radiologist uses.

A map's peak (the pointing game's point: its maximum) is named by a fixed anatomical template of
a frontal chest film in the model's square, center-cropped input, in normalised coordinates
(x to the image's right, y down). Radiographic convention: the patient's **right is on the
image's left**. The template is not a segmentation of this film: it names the usual place of
each zone on a well-centred adult PA/AP film, and says so when a peak falls outside the lung fields.

    film border / corner   the outer `BORDER` band of the image: outside the lung fields, where
                           burnt-in markers, labels, collimation edges and the chest wall lie — a map
                           peaking there is a warning sign (possibly a shortcut, not anatomy). A coarse
                           map (8 × 8 cells for the compact model, 7 × 7 for DenseNet121) peaks here
                           whenever its maximum is in the outer ring of cells
    mediastinal            central column above the heart
    cardiac                the heart's usual ellipse, left of the patient's midline
    costophrenic           the lateral lung bases, each side
    upper / middle / lower zone, right or left lung, by thirds of the lung height
    below the diaphragm    under the lung bases

`border_mass` (the share of the map's total weight in the border band) backs the warning with a
number: a uniform map puts 1 − (1 − 2·BORDER)² of its weight there (29 % for BORDER = 0.08).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr.errors import InvalidInput

BORDER = 0.08  # outer band (fraction of the side) counted as film border
CORNER = 0.2  # a border peak within this distance of two edges is in a corner
LUNG_TOP, LUNG_BOTTOM = 0.10, 0.80
CARDIAC = (0.55, 0.60, 0.16, 0.13)  # centre x, centre y, radius x, radius y
MEDIASTINUM_HALF_WIDTH, MEDIASTINUM_BOTTOM = 0.09, 0.47
COSTOPHRENIC_Y, COSTOPHRENIC_LATERAL = 0.64, 0.20  # y below, |x − 0.5| beyond


@dataclass(frozen=True)
class Region:
    """Where a map points: the zone's name, the peak (normalised x, y) and how much weight is on the border."""

    name: str
    x: float
    y: float
    inside_chest: bool
    border_mass: float

    def sentence(self) -> str:
        where = f"{self.name} (peak at x={self.x:.2f}, y={self.y:.2f} of the film)"
        if not self.inside_chest:
            return (f"{where}: outside the lung fields, on the film's edge — where burnt-in markers, labels, "
                    f"collimation and the chest wall lie; a score resting there may be a shortcut, not anatomy")
        return where


def zone(x: float, y: float) -> tuple[str, bool]:
    """The template's name for the normalised point (x, y), and whether it lies inside the chest."""
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InvalidInput(f"point ({x}, {y}) is outside the image", field="point")
    edges = [x < BORDER, x > 1 - BORDER, y < BORDER, y > 1 - BORDER]
    if any(edges):
        near_x = "left" if x < CORNER else "right" if x > 1 - CORNER else ""
        near_y = "top" if y < CORNER else "bottom" if y > 1 - CORNER else ""
        if near_x and near_y:
            return f"film corner ({near_y}-{near_x} of the image)", False
        side = "left" if edges[0] else "right" if edges[1] else "top" if edges[2] else "bottom"
        return f"film border ({side} edge of the image)", False
    side = "right" if x < 0.5 else "left"  # the patient's side
    cx, cy, rx, ry = CARDIAC
    if ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0:
        return "cardiac silhouette", True
    if abs(x - 0.5) < MEDIASTINUM_HALF_WIDTH and y < MEDIASTINUM_BOTTOM:
        return "mediastinum", True
    if y > LUNG_BOTTOM:
        return f"below the {side} hemidiaphragm", True
    if y > COSTOPHRENIC_Y and abs(x - 0.5) > COSTOPHRENIC_LATERAL:
        return f"{side} costophrenic angle", True
    third = (LUNG_BOTTOM - LUNG_TOP) / 3
    level = "upper" if y < LUNG_TOP + third else "middle" if y < LUNG_TOP + 2 * third else "lower"
    return f"{side} {level} zone", True


def border_mask(h: int, w: int) -> np.ndarray:
    """Boolean (h, w): the pixels of the outer `BORDER` band."""
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    by = (ys < BORDER) | (ys > 1 - BORDER)
    bx = (xs < BORDER) | (xs > 1 - BORDER)
    return by[:, None] | bx[None, :]


def locate(heat: np.ndarray) -> Region:
    """Name the peak of a map (H × W, any non-negative scale). Raises `InvalidInput` for an empty map."""
    m = np.asarray(heat, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise InvalidInput(f"expected a 2-D map, got shape {m.shape}", field="map")
    total = float(m.sum())
    h, w = m.shape
    iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
    x, y = (ix + 0.5) / w, (iy + 0.5) / h
    name, inside = zone(x, y)
    if total <= 0:
        return Region("nowhere (the map is zero: nothing raises this score)", x, y, True, 0.0)
    return Region(name, float(x), float(y), inside, float(m[border_mask(h, w)].sum() / total))


def peak_in_box(heat: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """The pointing game: is the map's maximum inside `box` = (x, y, w, h), normalised to [0, 1]?"""
    m = np.asarray(heat)
    h, w = m.shape
    iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
    x, y = (ix + 0.5) / w, (iy + 0.5) / h
    bx, by, bw, bh = box
    return bool(bx <= x <= bx + bw and by <= y <= by + bh)
