"""The per-study clinical report: what a registered version says about one film, and why.

For each study (a film file, or a film of a registered data set that an error report names) and a
registered version at its operating points (per site when asked):

* first, whether the study lies **outside what the version was validated on** (`decision.scoring.OodCheck`:
  the version's reference statistics, the DICOM header, degenerate input). A study that is no frontal chest
  radiograph, or is degenerate, is **withheld**: no finding is computed or shown, only the reasons. One only
  far from the reference keeps its findings under a banner that says they may be meaningless;
* every pathology's probability against the operating point, called positive when it reaches it;
* the findings **excluded or down-weighted** because a mutually exclusive finding is far more
  certain (`cxr.labelstats.EXCLUSION_RULE`, with the Jaccard of the reference label statistics it
  relied on);
* for each remaining positive finding: its Grad-CAM overlay (`cxr.gradcam`, layer `auto`), the
  plain-language region of the map's peak (`cxr.regions`) with a warning when the peak lies
  outside the lung fields — on the film's border or corner, where burnt-in markers are (a shortcut, not
  anatomy) — the **shortcut check** (the film scored again with its border band masked out: a call
  that then falls below its operating point rested on the film's edge), and the classifier channels
  that add most to its logit, with the pathology each polarized one votes against (`cxr.channels`);
* a footer: the version, its lineage with the treatments that made it, its recorded evaluation
  (AUROC with 95% DeLong intervals) and a decision-support disclaimer.

This module computes plain values (`StudyView`, `VersionView`); `decision/documents/clinical_html.py`
renders them. Nothing here is a diagnosis: it is a model's output, explained.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.channels import ChannelAnalysis, polarized_channels, top_contributions
from cxr.labelstats import EXCLUSION_RULE, LabelStats, exclusions, log_odds_margin
from cxr.ood import DEFAULT_RATE
from cxr.regions import BORDER, Region, locate
from decision.scoring import LoadedVersion, OodCheck, OodVerdict, score_images

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Decision support only — not a diagnosis. These are the outputs of a machine-learning model at its "
    "registered operating points; they can be wrong, and they do not replace a qualified clinician's reading of "
    "the film. Regions are named from a fixed anatomical template of a frontal chest film, not from a "
    "segmentation of this film."
)
#: share of a uniform map's weight on the border band: a map above twice this leans on the border
UNIFORM_BORDER_MASS = 1 - (1 - 2 * BORDER) ** 2


@dataclass(frozen=True)
class FindingView:
    pathology: str
    probability: float
    threshold: float | None
    call: str  # positive | down-weighted | excluded | negative | no operating point
    odds_ratio: float | None = None  # odds over the operating point (exp of the log-odds margin)
    exclusion: dict[str, Any] | None = None
    region: Region | None = None
    overlay_png: bytes | None = None
    channels: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the probability with the film's border band masked out (the shortcut check)
    probability_border_masked: float | None = None


@dataclass(frozen=True)
class StudyView:
    study_id: str
    source: str  # the file, or "data set NAME" for a registered film
    film: str  # how it was read
    image_png: bytes
    findings: list[FindingView]  # positive and down-weighted, most certain first
    excluded: list[FindingView]
    others: list[FindingView]  # negative and uncalled, highest probability first
    layer: str
    #: outside what the version was validated on? (None: not assessed, for callers that build views by hand)
    ood: OodVerdict | None = None

    @property
    def withheld(self) -> str | None:
        """Why no finding is shown (not a chest film, degenerate input), or None."""
        return self.ood.withheld if self.ood is not None else None

    @property
    def warnings(self) -> list[str]:
        return [f"{f.pathology}: {w}" for f in self.findings for w in f.warnings]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the calls, exclusions and regions (no images)."""
        def one(f: FindingView) -> dict[str, Any]:
            return {"pathology": f.pathology, "probability": f.probability, "threshold": f.threshold,
                    "call": f.call, "odds_ratio_over_threshold": f.odds_ratio, "exclusion": f.exclusion,
                    "region": f.region.name if f.region else None,
                    "border_mass": f.region.border_mass if f.region else None,
                    "probability_border_masked": f.probability_border_masked,
                    "channels": f.channels, "warnings": f.warnings}
        return {"study": self.study_id, "source": self.source, "film": self.film, "layer": self.layer,
                "findings": [one(f) for f in self.findings], "excluded": [one(f) for f in self.excluded],
                "others": [{"pathology": f.pathology, "probability": f.probability, "threshold": f.threshold,
                            "call": f.call} for f in self.others],
                "ood": self.ood.as_dict() if self.ood is not None else None, "withheld": self.withheld}


@dataclass(frozen=True)
class VersionView:
    ref: str
    site: str | None
    parameter_count: int
    created_at: str
    lineage: list[str]
    evaluations: list[dict[str, Any]]
    notes: str
    reference: str  # the label statistics the exclusion rule used
    rule: str = EXCLUSION_RULE


def version_view(loaded: LoadedVersion, stats: LabelStats, url: str | None = None) -> VersionView:
    """The footer's facts from the registry: lineage (with the treatment behind each step) and evaluations."""
    from registry import repo
    from registry.session import session_scope

    v = loaded.entity
    with session_scope(url, read_only=True) as s:
        lin = repo.lineage(s, v.id)
        steps = []
        for node in [lin.version, *lin.ancestors]:
            how = "baseline" if node.parent_id is None else "registered"
            if node.treatment_run_id is not None:
                run = repo.get_run(s, node.treatment_run_id)
                how = f"{run.treatment} (decision {node.decision_id})" if node.decision_id else run.treatment
            steps.append(f"{node.ref} — {how}")
        evals = repo.list_evaluations(s, v.id)
    rows = [{"dataset": e.dataset, "pathology": e.pathology, "auroc": e.auroc, "auroc_lo": e.auroc_lo,
             "auroc_hi": e.auroc_hi, "sensitivity": e.sensitivity, "specificity": e.specificity,
             "threshold": e.threshold, "n_pos": e.n_pos, "n_neg": e.n_neg} for e in evals]
    return VersionView(v.ref, loaded.site, v.parameter_count, f"{v.created_at:%Y-%m-%d %H:%M} UTC", steps, rows,
                       v.notes, f"{stats.source} ({stats.n:,} films)")


def mask_border(images: np.ndarray, band: float = BORDER) -> np.ndarray:
    """The films with their outer `band` (fraction of each side) set to each film's median: the shortcut check.

    Burnt-in markers, labels and collimation edges live there; a call that falls below its operating
    point once they are gone did not come from the chest.
    """
    x = np.array(images, dtype=np.float32, copy=True)
    h, w = x.shape[-2:]
    by, bx = max(1, round(band * h)), max(1, round(band * w))
    for film in x.reshape(-1, h, w):
        fill = float(np.median(film[by:h - by, bx:w - bx]))
        film[:by], film[h - by:], film[:, :bx], film[:, w - bx:] = fill, fill, fill, fill
    return x


def _display(image: np.ndarray, film_pixels: np.ndarray | None, size: int = 256) -> np.ndarray:
    """What to draw under the map: the original film center-cropped at `size`, else the model input."""
    if film_pixels is None:
        return np.asarray(image).squeeze()
    from cxr.images import center_crop_resize

    return center_crop_resize(film_pixels, min(size, max(film_pixels.shape)))[0]


def _overlay_png(display: np.ndarray, heat: np.ndarray, title: str) -> bytes:
    from matplotlib.figure import Figure
    from scipy.ndimage import zoom

    from cxr.gradcam import draw_overlay
    from decision.documents.plots import _png

    if heat.shape != display.shape:
        heat = np.clip(zoom(heat, (display.shape[0] / heat.shape[0], display.shape[1] / heat.shape[1]), order=1),
                       0, 1)
    fig = Figure(figsize=(3.6, 3.6), dpi=100)
    draw_overlay(fig.subplots(), display, heat, title=title, alpha=0.38)
    fig.tight_layout()
    return _png(fig)


def _film_png(display: np.ndarray) -> bytes:
    from matplotlib.figure import Figure

    from decision.documents.plots import _png

    fig = Figure(figsize=(3.6, 3.6), dpi=100)
    ax = fig.subplots()
    ax.imshow(display, cmap="gray")
    ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def _channel_rows(weight_row: np.ndarray, feats: np.ndarray, pathology: str, polar: ChannelAnalysis | None,
                  k: int = 5) -> list[dict[str, Any]]:
    total = float(np.clip(weight_row * feats, 0, None).sum())
    by_channel = {c.channel: c for c in polar.channels} if polar else {}
    rows = []
    for f, contrib in top_contributions(weight_row, feats, k):
        row: dict[str, Any] = {"channel": f, "contribution": contrib, "share": contrib / total if total else None}
        c = by_channel.get(f)
        if c is not None:
            other = c.negative if c.positive == pathology else c.positive
            row["polarized"] = {"for": c.positive, "against": c.negative, "other": other, "jaccard": c.jaccard,
                                "category": c.category}
        rows.append(row)
    return rows


def build_studies(loaded: LoadedVersion, images: np.ndarray, study_ids: Sequence[str], sources: Sequence[str],
                  films: Sequence[str], stats: LabelStats, *, film_pixels: Sequence[np.ndarray | None] | None = None,
                  layer: str = "auto", ood: OodCheck | None = None,
                  metadata: Sequence[Mapping[str, Any] | None] | None = None) -> list[StudyView]:
    """Check each study against the version's reference, then score, apply the exclusion rule and explain each
    positive finding of the studies not withheld. `images`: (N, 1, R, R) model input.

    `film_pixels` (optional, per study): the original film in [-1024, 1024], drawn under the
    maps at a readable size; without it the model input is shown. `ood`: the check to run
    (`decision.scoring.ood_check`); None runs the checks that need no reference and says "not checked".
    `metadata` (per study): the DICOM header (`Film.info`), None for PNG/JPEG.
    """
    from cxr.gradcam import auto_layer, grad_cam

    model = loaded.weights.model()
    layer = auto_layer(model) if layer == "auto" else layer
    names = list(model.spec.pathologies)
    weight = model.classifier.weight.detach().numpy()
    probs, feats = score_images(model, images)
    check = ood or OodCheck.unavailable("no reference was given to the report", DEFAULT_RATE)
    verdicts = check.assess(feats, images=images, metadata=metadata, probabilities=probs)
    masked, _ = score_images(model, mask_border(images))
    try:
        polar = polarized_channels(weight, names, stats)
    except Exception as exc:  # e.g. a model whose outputs have no statistics: channels shown without pairs
        log.info("no polarized-channel analysis: %s", exc)
        polar = None
    thr = loaded.thresholds
    pixels = list(film_pixels) if film_pixels is not None else [None] * len(images)
    out = []
    for i, sid in enumerate(study_ids):
        p = {n: float(probs[i, j]) for j, n in enumerate(names) if n}
        excl = exclusions(p, thr, stats)
        display = _display(images[i], pixels[i])
        if verdicts[i].withheld:  # not a chest film, or degenerate: nothing of it is a finding
            out.append(StudyView(str(sid), str(sources[i]), str(films[i]), _film_png(display), [], [], [], layer,
                                 verdicts[i]))
            continue
        findings, excluded, others = [], [], []
        for n, prob in sorted(p.items(), key=lambda kv: -kv[1]):
            t = thr.get(n)
            if t is None or prob < t:
                others.append(FindingView(n, prob, t, "no operating point" if t is None else "negative"))
                continue
            odds = float(np.exp(log_odds_margin(prob, t)))
            if n in excl and excl[n]["action"] == "excluded":
                excluded.append(FindingView(n, prob, t, "excluded", odds, excl[n]))
                continue
            exp = grad_cam(model, images[i:i + 1], n, layer=layer)
            region = locate(exp.maps[0])
            warns = []
            if not region.inside_chest:
                warns.append(f"the map peaks at the {region.name}, outside the lung fields: this call may rest on "
                             f"a marker, label, collimation edge or the chest wall rather than on the finding")
            if region.border_mass > 2 * UNIFORM_BORDER_MASS:
                warns.append(f"{region.border_mass:.0%} of the map's weight lies on the film border "
                             f"(a uniform map: {UNIFORM_BORDER_MASS:.0%})")
            j = names.index(n)
            p_masked = float(masked[i, j])
            if p_masked < t:
                warns.append(f"with the film's border masked out (outer {BORDER:.0%} set to the film's median) the "
                             f"probability falls from {prob:.2f} to {p_masked:.2f}, below the operating point: "
                             f"the call rests on the film's edge (markers, labels, collimation, the body outline), "
                             f"not on the lungs and heart")
            findings.append(FindingView(
                n, prob, t, excl[n]["action"] if n in excl else "positive", odds, excl.get(n), region,
                _overlay_png(display, exp.maps[0], f"{n} p={prob:.2f} (t={t:.2f})"),
                _channel_rows(weight[j], feats[i], n, polar), warns, p_masked))
        out.append(StudyView(str(sid), str(sources[i]), str(films[i]), _film_png(display), findings, excluded,
                             others, layer, verdicts[i]))
    return out
