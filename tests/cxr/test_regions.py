"""Plain-language regions of a Grad-CAM peak, and the pointing game's hit test."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import InvalidInput
from cxr.regions import BORDER, locate, peak_in_box, zone


@pytest.mark.parametrize(("x", "y", "name", "inside"), [
    (0.30, 0.20, "right upper zone", True),  # image left = the patient's right
    (0.70, 0.40, "left middle zone", True),
    (0.26, 0.60, "right lower zone", True),
    (0.15, 0.70, "right costophrenic angle", True),
    (0.85, 0.70, "left costophrenic angle", True),
    (0.55, 0.60, "cardiac silhouette", True),
    (0.50, 0.30, "mediastinum", True),
    (0.30, 0.88, "below the right hemidiaphragm", True),
    (0.03, 0.03, "film corner (top-left of the image)", False),
    (0.97, 0.05, "film corner (top-right of the image)", False),
    (0.50, 0.97, "film border (bottom edge of the image)", False),
    (0.02, 0.50, "film border (left edge of the image)", False),
])
def test_zone_names(x, y, name, inside):
    assert zone(x, y) == (name, inside)


def test_outside_the_image_is_refused():
    with pytest.raises(InvalidInput):
        zone(1.2, 0.5)


def test_locate_names_the_peak_and_measures_the_border_weight():
    m = np.zeros((64, 64))
    m[14, 18] = 1.0  # y = 14.5/64 ≈ 0.23, x = 18.5/64 ≈ 0.29: right upper zone
    r = locate(m)
    assert r.name == "right upper zone" and r.inside_chest and r.border_mass == 0.0
    assert r.x == pytest.approx(18.5 / 64) and r.y == pytest.approx(14.5 / 64)
    corner = np.zeros((64, 64))
    corner[1, 62] = 1.0
    rc = locate(corner)
    assert not rc.inside_chest and rc.border_mass == 1.0 and "outside the lung fields" in rc.sentence()
    uniform = locate(np.ones((100, 100)))
    assert uniform.border_mass == pytest.approx(1 - (1 - 2 * BORDER) ** 2)
    assert "nothing raises this score" in locate(np.zeros((8, 8))).name
    with pytest.raises(InvalidInput):
        locate(np.zeros(5))


def test_pointing_game_hit_test_at_the_box_edge():
    m = np.zeros((10, 10))
    m[2, 3] = 1.0  # centre (0.35, 0.25)
    assert peak_in_box(m, (0.35, 0.25, 0.1, 0.1))  # the edge counts as inside
    assert not peak_in_box(m, (0.351, 0.25, 0.1, 0.1))
    assert peak_in_box(m, (0.0, 0.0, 1.0, 1.0))
