"""Case evidence, looked at: Grad-CAM of a report's worst cases under each version.

An error report carries its worst cases (image id, score, label). This finds
those films in the site's registered feedback sets, explains the report's
pathology on each with Grad-CAM (`cxr/gradcam.py`) under every version asked
for — typically the baseline and the production version that fixed the report
— and draws one grid: a row per film, a column per version, each cell with the
probability and whether it crosses that version's threshold. It is what a
radiologist asks first: what was the model looking at, and did the fix change
that or only the cut-off?
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.features import sigmoid
from cxr.gradcam import draw_overlay, grad_cam
from decision.catalog import Catalog
from registry import repo
from registry.entities import DatasetRole, ReportEntity, VersionEntity
from registry.session import session_scope


def find_films(cat: Catalog, url: str | None, site: str, image_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """The films of `image_ids` (those found) from the site's feedback sets, in the order asked."""
    with session_scope(url, read_only=True) as s:
        sets = repo.list_datasets(s, role=DatasetRole.feedback, site=site)
    want = set(image_ids)
    found: dict[str, np.ndarray] = {}
    for d in sets:
        ds = cat.dataset(d)
        rows = [i for i, iid in enumerate(ds.image_ids) if iid in want and iid not in found]
        if rows:
            for iid, img in zip((ds.image_ids[i] for i in rows), ds.images(np.array(rows)), strict=True):
                found[iid] = img
        if len(found) == len(want):
            break
    ids = [i for i in image_ids if i in found]
    return ids, (np.stack([found[i] for i in ids]) if ids else np.zeros((0,)))


def case_grid(cat: Catalog, url: str | None, report: ReportEntity, versions: list[VersionEntity], *,
              max_cases: int = 4, label: int | None = 0) -> tuple[bytes, list[dict[str, Any]]] | None:
    """A PNG grid of Grad-CAM maps (cases × versions) and its numbers; None when no film is found."""
    cases = [c for c in report.cases if label is None or c.get("label") == label][:max_cases]
    ids, films = find_films(cat, url, report.site, [c["image_id"] for c in cases])
    if not ids:
        return None
    from matplotlib.figure import Figure

    from decision.documents.plots import _png

    cells: list[dict[str, Any]] = []
    maps = []
    for v in versions:
        w = cat.weights(v)
        exp = grad_cam(cat.model(w), films, report.pathology, layer="auto")
        maps.append(exp)
        thr = v.thresholds.get(report.pathology)
        for iid, logit in zip(ids, exp.logits, strict=True):
            p = float(sigmoid(np.array([logit]))[0])
            cells.append({"image_id": iid, "version": v.ref, "probability": p, "threshold": thr,
                          "positive": None if thr is None else p >= thr})
    n, m = len(ids), len(versions)
    fig = Figure(figsize=(2.4 * m, 2.4 * n), dpi=90)
    axes = fig.subplots(n, m, squeeze=False)
    for i in range(n):
        for j, v in enumerate(versions):
            ax = axes[i][j]
            c = cells[j * n + i]
            call = ("" if c["positive"] is None else
                    f" {'≥' if c['positive'] else '<'} t={c['threshold']:.2f}")
            draw_overlay(ax, films[i], maps[j].maps[i], title=f"{v.ref}: p={c['probability']:.2f}{call}", alpha=0.35)
            if j == 0:
                ax.set_ylabel(ids[i], fontsize=6)
    fig.suptitle(f"{report.pathology} at {report.site}: Grad-CAM ({maps[0].layer}) of report {report.id}'s "
                 f"worst {'false positives' if label == 0 else 'false negatives' if label == 1 else 'cases'}",
                 fontsize=9)
    fig.tight_layout()
    return _png(fig), cells
