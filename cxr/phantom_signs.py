"""Radiographic signs of the 14 NIH pathologies, drawn onto a phantom film.

Each sign has a severity in (0, 1]: mild cases are subtle on purpose, so a
classifier has to earn its AUROC. Where NIH's expert box list has boxes for a
pathology, the lesion's position (and for focal lesions its size) comes from a
real box. Signs that change the anatomy (Cardiomegaly, Emphysema, Atelectasis,
Fibrosis) act through `adjust_anatomy` before the chest is drawn; the others
add attenuation afterwards through `draw_signs`.
"""

from __future__ import annotations

import numpy as np

from cxr.phantom_render import Anatomy, _grid, _sig, ellipse, segment, smooth_noise


def adjust_anatomy(a: Anatomy, sev: dict[str, float], rng: np.random.Generator) -> None:
    """Apply the signs that change geometry (in place)."""
    if "Cardiomegaly" in sev:
        # Cardiothoracic ratio > 0.5 as it would project on a PA film.
        a.ctr = max(a.ctr, 0.50 + 0.13 * sev["Cardiomegaly"] + rng.normal(0, 0.012))
    if "Emphysema" in sev:
        s = sev["Emphysema"]
        a.lung_scale *= 1.0 + 0.45 * s  # hyperlucent lungs
        a.dome_r += 0.05 * s  # low, flat diaphragms
        a.dome_l += 0.05 * s
        a.ctr *= 1.0 - 0.08 * s  # long narrow heart
    if "Atelectasis" in sev:  # volume loss lifts one hemidiaphragm
        if rng.random() < 0.5:
            a.dome_r -= 0.035 * sev["Atelectasis"]
        else:
            a.dome_l -= 0.035 * sev["Atelectasis"]
    if "Fibrosis" in sev:
        a.dome_r -= 0.02 * sev["Fibrosis"]
        a.dome_l -= 0.02 * sev["Fibrosis"]


def _box_centre(box: np.ndarray | None, a: Anatomy, rng: np.random.Generator, zone: str) -> tuple[float, float, int]:
    """Lesion centre from a real NIH box (shifted with this film's anatomy) or a zone prior."""
    if box is not None:
        x, y, w, h = (float(v) for v in box)
        cx = a.cx + (x + w / 2 - 0.5) * (a.half_width / 0.36)
        cy = y + h / 2 + (a.top - 0.14)
    else:
        lx = a.lung_centres()[int(rng.random() < 0.5)]
        lo, hi = {"upper": (0.25, 0.45), "lower": (0.55, 0.8), "any": (0.25, 0.8)}[zone]
        cx = lx + rng.normal(0, 0.06)
        cy = a.top + (min(a.dome_r, a.dome_l) - a.top) * rng.uniform(lo, hi)
    side = 0 if cx < a.cx else 1
    return cx, cy, side


def _side_mask(X: np.ndarray, a: Anatomy, side: int) -> np.ndarray:
    return (X < a.cx) if side == 0 else (X >= a.cx)


def draw_signs(
    att: np.ndarray,
    lung: np.ndarray,
    a: Anatomy,
    sev: dict[str, float],
    boxes: dict[str, np.ndarray | None],
    rng: np.random.Generator,
) -> None:
    """Add every present pathology's sign to `att` (in place)."""
    res = att.shape[0]
    X, Y = _grid(res)
    edge = max(0.6 / res, 0.004)
    for p, s in sev.items():
        box = boxes.get(p)
        if p == "Nodule":
            for _ in range(1 + int(rng.random() < 0.25)):
                cx, cy, _side = _box_centre(box, a, rng, "any")
                r = 0.013 + 0.016 * s
                att += (0.16 + 0.14 * s) * ellipse(X, Y, cx, cy, r, r * rng.uniform(0.85, 1.15), edge)
                box = None  # a second nodule lies elsewhere
        elif p == "Mass":
            cx, cy, _side = _box_centre(box, a, rng, "any")
            r = 0.04 + 0.045 * s
            lobes = 1.0 + 0.15 * smooth_noise(rng, res, 6)
            att += (0.15 + 0.12 * s) * ellipse(X, Y, cx, cy, r * rng.uniform(0.85, 1.2), r, 0.008) * lobes
        elif p in ("Consolidation", "Pneumonia"):
            cx, cy, _side = _box_centre(box, a, rng, "lower" if p == "Pneumonia" else "any")
            rx, ry = 0.06 + 0.05 * s, 0.05 + 0.05 * s
            patch = ellipse(X, Y, cx, cy, rx, ry, 0.012 if p == "Consolidation" else 0.03)
            tex = 1.0 + (0.1 if p == "Consolidation" else 0.35) * smooth_noise(rng, res, 10)
            dens = 0.12 + 0.16 * s if p == "Consolidation" else 0.09 + 0.14 * s
            att += dens * patch * tex * (0.3 + 0.7 * lung)
        elif p == "Infiltration":
            n = 2 + int(rng.integers(0, 3))
            for _ in range(n):
                cx, cy, _side = _box_centre(box, a, rng, "any")
                box = None
                blob = ellipse(X, Y, cx, cy, 0.05 + 0.04 * s, 0.04 + 0.04 * s, 0.03)
                att += (0.05 + 0.08 * s) * blob * np.abs(1.0 + 0.6 * smooth_noise(rng, res, 12)) * lung
        elif p == "Atelectasis":
            cx, cy, _side = _box_centre(box, a, rng, "lower")
            tilt = rng.normal(0.0, 0.02)
            band = segment(X, Y, cx - 0.07, cy - tilt, cx + 0.07, cy + tilt, 0.006 + 0.009 * s, edge)
            att += (0.12 + 0.14 * s) * band * lung
        elif p == "Effusion":
            sides = [int(rng.random() < 0.5)] if rng.random() < 0.7 else [0, 1]
            if box is not None:
                sides[0] = 0 if float(box[0] + box[2] / 2) < 0.5 else 1
            for side in sides:
                lx = a.lung_centres()[side]
                dome = a.dome_r if side == 0 else a.dome_l
                level = dome - (0.03 + 0.13 * s)
                lateral = np.abs(X - lx) / (0.4 * a.half_width)
                meniscus = level - 0.06 * lateral**2  # fluid climbs the lateral chest wall
                fluid = _sig((Y - meniscus) / 0.01) * _side_mask(X, a, side)
                att += (0.24 + 0.08 * s) * fluid * lung
        elif p == "Pneumothorax":
            cx, _cy, side = _box_centre(box, a, rng, "upper")
            lx = a.lung_centres()[side]
            dome = a.dome_r if side == 0 else a.dome_l
            cy, rx, ry = (a.top + dome) / 2, 0.40 * a.half_width, (dome - a.top) / 2 + 0.06
            gap = 0.02 + 0.05 * s
            shift = gap * (0.6 if side == 1 else -0.6)
            collapsed = ellipse(X, Y, lx - shift, cy + gap * 0.6, rx - gap, ry - gap, edge)
            region = lung * _side_mask(X, a, side) * (1.0 - collapsed)
            att -= (0.05 + 0.05 * s) * region  # air without lung markings
            rim = ellipse(X, Y, lx - shift, cy + gap * 0.6, rx - gap + 0.006, ry - gap + 0.006, edge) - collapsed
            att += 0.07 * np.clip(rim, 0, 1) * _side_mask(X, a, side)  # visceral pleural line
        elif p == "Edema":
            for side in (0, 1):
                lx = a.lung_centres()[side]
                haze = ellipse(X, Y, 0.5 * (lx + a.cx), a.top + 0.3, 0.14, 0.16, 0.06)
                att += (0.05 + 0.10 * s) * haze * lung
                kerley = (0.5 + 0.5 * np.cos(2 * np.pi * Y / 0.025)) ** 8
                base = ellipse(X, Y, lx + (0.12 if side else -0.12), min(a.dome_r, a.dome_l) - 0.05, 0.06, 0.08, 0.02)
                att += (0.04 + 0.05 * s) * kerley * base * lung
        elif p == "Fibrosis":
            tex = np.abs(smooth_noise(rng, res, max(8, res // 4)))
            periphery = np.clip(np.abs(X - a.cx) / a.half_width, 0, 1) ** 1.5
            basal = np.clip((Y - a.top) / (min(a.dome_r, a.dome_l) - a.top), 0, 1)
            att += (0.06 + 0.09 * s) * tex * periphery * (0.4 + 0.6 * basal) * lung
        elif p == "Pleural_Thickening":
            side = int(rng.random() < 0.5)
            lx = a.lung_centres()[side]
            dome = a.dome_r if side == 0 else a.dome_l
            cy, rx, ry = (a.top + dome) / 2, 0.40 * a.half_width, (dome - a.top) / 2 + 0.06
            t = 0.008 + 0.014 * s
            ring = ellipse(X, Y, lx, cy, rx, ry, edge) - ellipse(X, Y, lx, cy, rx - t, ry - t, edge)
            where = ellipse(X, Y, lx + (0.1 if side else -0.1), cy - 0.05, 0.12, 0.22, 0.04)
            att += (0.12 + 0.10 * s) * np.clip(ring, 0, 1) * where
        elif p == "Emphysema":
            for _ in range(int(rng.integers(0, 3))):  # bullae
                cx, cy, _side = _box_centre(None, a, rng, "upper")
                att -= (0.04 + 0.05 * s) * ellipse(X, Y, cx, cy, 0.035, 0.03, 0.01) * lung
        elif p == "Hernia":
            _hx, hy, hw, _hh = a.heart_box()
            bx, by = a.cx + 0.03 + rng.normal(0, 0.01), hy + 0.25 * hw
            rx, ry = 0.045 + 0.035 * s, 0.035 + 0.02 * s
            bubble = ellipse(X, Y, bx, by, rx, ry, edge)
            att -= (0.14 + 0.10 * s) * bubble * (Y < by)  # gas above an air-fluid level
            att += 0.05 * bubble * (Y >= by)
