"""Grad-CAM pointing game, and whether the compact model's Cardiomegaly maps are a shortcut.

Pointing game (Zhang et al., 2016): a map "hits" when its maximum lies inside the lesion's box.
Two chance levels are printed beside every figure: the mean box area (a uniformly random point),
and the hit rate of the same procedure on maps of pure noise at the explained layer's own
resolution (the compact model's maps are 8 × 8 cells upsampled to 64 px: a peak can only land
where a cell's maximum lands, and the outer ring of cells — 44 % of them — lands on the film's
border band, so the area alone understates chance there).

* Phantom films (site-a and site-b evaluation splits): the truth box of each drawn sign is
  recorded while the film is rendered — `cxr.phantom.draw_signs` is wrapped to replay each sign
  alone with the same random stream (so the film is unchanged), the box is the bounding box of
  where that sign changed the attenuation by ≥ 20 % of its maximum; Cardiomegaly's is the heart's
  ellipse. Only NIH's eight boxed pathologies are scored.
* Real films: the NIH sample's expert boxes (`../shared/data/nih-sample/BBox_sample.csv`).
* Shortcut check for Cardiomegaly: where the map peaks on site-b's false positives (heart box,
  the site's burnt-in AP marker corner, the rest of the film border, elsewhere), each with its
  chance, and two counterfactuals: the same AP films with the marker painted out, and every film
  with its border band masked (the clinical report's shortcut check) — how much do the
  Cardiomegaly probability and the false-positive count move?

Nothing here tunes the phantom or the metric. The model is a registered version (`--version`,
needs DECIDE_HOME), a weights file (`--weights`, thresholds from its .thresholds.json sibling or
`--thresholds`), or — by default — a compact model trained here as the demo trains it.

    python bench/pointing.py [--quick] [--json] [--version cxr:1 | --weights W.safetensors] [--n 2000]
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import _common
import numpy as np

import cxr.phantom as phantom
from cxr.features import sigmoid
from cxr.gradcam import grad_cam
from cxr.images import load_image_file
from cxr.nih import load_nih_metadata
from cxr.phantom import BOXED, PhantomConfig, select_rows, to_model_input
from cxr.phantom_render import SITES
from cxr.regions import BORDER, border_mask, peak_in_box
from cxr.spec import NIH_PATHOLOGIES

NIH_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-sample"
SIGN_FRACTION = 0.2


def render_with_boxes(cfg: PhantomConfig) -> tuple[np.ndarray, np.ndarray, list[dict], list[tuple], list[bool]]:
    """The phantom set of `cfg` (identical films) with, per film, {pathology: (x, y, w, h)} of each drawn sign,
    the heart's box (every film has a heart) and whether it is an AP film."""
    meta = load_nih_metadata()
    rows = select_rows(meta, cfg)
    original = phantom.draw_signs
    seen: dict = {}

    def recording(att, lung, a, sev, boxes, rng):
        state = copy.deepcopy(rng.bit_generator.state)
        original(att, lung, a, sev, boxes, rng)  # the film exactly as the phantom draws it
        replay = np.random.Generator(type(rng.bit_generator)())
        replay.bit_generator.state = state
        res = att.shape[0]
        hx, hy, hw, hh = a.heart_box()
        seen["heart"] = (hx - hw, hy - hh, 2 * hw, 2 * hh)
        out = {}
        for p, s in sev.items():  # draw_signs consumes the stream per sign, in order: replaying one by one
            alone = np.zeros_like(att)  # gives each sign's own contribution
            original(alone, lung, a, {p: s}, boxes, replay)
            mag = np.abs(alone)
            if p == "Cardiomegaly":
                out[p] = seen["heart"]
            elif mag.max() > 0:
                ys, xs = np.nonzero(mag >= SIGN_FRACTION * mag.max())
                out[p] = (xs.min() / res, ys.min() / res, (xs.max() + 1 - xs.min()) / res,
                          (ys.max() + 1 - ys.min()) / res)
        seen["boxes"] = out

    images, labels, boxes, hearts, ap = [], [], [], [], []
    phantom.draw_signs = recording
    try:
        for r in rows:
            seen.clear()
            img, lab, signs = phantom.render_row(meta, int(r), cfg)
            images.append(img)
            labels.append(lab)
            drawn = {p for j, p in enumerate(NIH_PATHOLOGIES) if signs[j]}
            boxes.append({p: b for p, b in seen.get("boxes", {}).items() if p in drawn and p in BOXED})
            hearts.append(seen["heart"])
            ap.append(bool(meta.view_ap[r]))
    finally:
        phantom.draw_signs = original
    return np.stack(images), np.stack(labels), boxes, hearts, ap


def native_side(model, layer: str) -> int:
    """Side of the feature map Grad-CAM reads at `layer` (e.g. 8 for the compact model's denseblock2 at 64 px)."""
    import torch

    sides = []
    module = dict(model.named_modules())[layer]
    h = module.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    try:
        with torch.no_grad():
            r = model.spec.resolution
            model(torch.zeros(1, model.spec.in_channels, r, r))
    finally:
        h.remove()
    return int(sides[0])


def random_peaks(side: int, res: int, k: int = 4000, seed: int = 0) -> np.ndarray:
    """Where the pointing procedure lands for maps of pure noise: k random side × side maps, upsampled to
    res × res exactly as `grad_cam` does (bilinear), peak by `np.argmax` as `peak_in_box` does → (k, 2) x, y."""
    import torch
    import torch.nn.functional as F

    noise = torch.from_numpy(np.random.default_rng(seed).random((k, 1, side, side), dtype=np.float32))
    up = F.interpolate(noise, size=(res, res), mode="bilinear", align_corners=False).squeeze(1).numpy()
    flat = up.reshape(k, -1).argmax(axis=1)
    iy, ix = np.divmod(flat, res)
    return np.stack([(ix + 0.5) / res, (iy + 0.5) / res], axis=1)


def chance_in(peaks: np.ndarray, box: tuple) -> float:
    x, y, w, h = box
    return float(np.mean((peaks[:, 0] >= x) & (peaks[:, 0] <= x + w) & (peaks[:, 1] >= y) & (peaks[:, 1] <= y + h)))


def pointing_rows(model, x: np.ndarray, boxes: list[dict], where: str, layer: str = "auto") -> list[dict]:
    """Per pathology: films with a box, hits of the Grad-CAM maximum, and two chance levels — the mean box area
    (a uniformly random point) and the same procedure run on noise maps of the layer's own resolution."""
    from cxr.gradcam import auto_layer

    layer = auto_layer(model) if layer == "auto" else layer
    peaks = random_peaks(native_side(model, layer), model.spec.resolution)
    out = []
    for p in BOXED:
        idx = [i for i, b in enumerate(boxes) if p in b]
        if not idx:
            continue
        exp = grad_cam(model, x[idx], p, layer=layer)
        hits = [peak_in_box(m, boxes[i][p]) for m, i in zip(exp.maps, idx, strict=True)]
        areas = [min(1.0, boxes[i][p][2]) * min(1.0, boxes[i][p][3]) for i in idx]
        procedure = [chance_in(peaks, boxes[i][p]) for i in idx]
        out.append({"films": where, "pathology": p, "n": len(idx), "hits": int(sum(hits)),
                    "pointing": round(float(np.mean(hits)), 3), "chance_area": round(float(np.mean(areas)), 3),
                    "chance_noise_maps": round(float(np.mean(procedure)), 3), "layer": exp.layer})
    return out


def marker_box(site: str, res: int) -> tuple[float, float, float, float]:
    """The site's burnt-in AP marker (`cxr.phantom_render.detector`), normalised, padded by one pixel."""
    m = max(2, res // 16)
    x0 = 1 if SITES[site].marker_corner == 0 else res - m - 1
    return ((x0 - 1) / res, 0.0, (m + 2) / res, (m // 2 + 3) / res)


def paint_out_marker(images_u8: np.ndarray, site: str) -> np.ndarray:
    """The same films with the marker replaced by the rows just below it (the film's own background there)."""
    res = images_u8.shape[-1]
    m = max(2, res // 16)
    x0 = 1 if SITES[site].marker_corner == 0 else res - m - 1
    out = images_u8.copy()
    h = m // 2
    out[:, 1:1 + h, x0:x0 + m] = out[:, 1 + h:1 + 2 * h, x0:x0 + m]
    return out


def where_peaks(maps: np.ndarray, heart: list, marker: tuple, peaks: np.ndarray) -> dict:
    """Share of maps peaking in the heart box, the marker corner, the rest of the border, elsewhere; beside each,
    the share that noise maps of the layer's resolution get through the same procedure (`peaks`)."""
    res = maps.shape[-1]
    band = border_mask(res, res)
    noise = {"heart": float(np.mean([chance_in(peaks, b) for b in heart])) if heart else None,
             "marker corner": chance_in(peaks, marker)}
    in_band = band[np.minimum((peaks[:, 1] * res).astype(int), res - 1), np.minimum((peaks[:, 0] * res).astype(int),
                                                                                     res - 1)]
    noise["other border"] = float(np.mean(in_band)) - noise["marker corner"]
    noise["elsewhere in the chest"] = None
    counts = {"heart": 0, "marker corner": 0, "other border": 0, "elsewhere in the chest": 0}
    for m, hb in zip(maps, heart, strict=True):
        iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
        if peak_in_box(m, marker):
            counts["marker corner"] += 1
        elif peak_in_box(m, hb):
            counts["heart"] += 1
        elif band[iy, ix]:
            counts["other border"] += 1
        else:
            counts["elsewhere in the chest"] += 1
    n = max(len(maps), 1)
    area = {"heart": float(np.mean([b[2] * b[3] for b in heart])) if heart else None,
            "marker corner": marker[2] * marker[3], "other border": 1 - (1 - 2 * BORDER) ** 2 - marker[2] * marker[3],
            "elsewhere in the chest": None}
    r3 = lambda v: None if v is None else round(v, 3)  # noqa: E731
    return {k: {"n": v, "share": round(v / n, 3), "chance_area": r3(area[k]), "chance_noise_maps": r3(noise[k])}
            for k, v in counts.items()}


def load_model(args):
    """(model, thresholds, description)."""
    if args.version:
        from decision.scoring import load_version

        lv = load_version(args.version)
        return lv.weights.model(), lv.thresholds, f"registered {lv.ref}"
    if args.weights:
        from cxr.weights import load_model as load

        model, w = load(args.weights)
        thr_file = Path(args.thresholds) if args.thresholds else Path(args.weights).with_suffix(".thresholds.json")
        thr = json.loads(thr_file.read_text()) if thr_file.is_file() else {}
        return model, thr, f"weights {Path(args.weights).name} ({w.weights_sha256[:12]})"
    from cxr.data import phantom_dataset
    from cxr.spec import preset
    from cxr.train import TrainConfig, train

    n, epochs = (1500, 2) if args.quick else (8000, 5)
    tr = phantom_dataset(PhantomConfig(site="site-a", split="train", n=n, resolution=64))
    model = train(preset("compact"), tr, TrainConfig(epochs=epochs, seed=0)).model.eval()
    return model, {}, f"compact trained here on {n} site-a films × {epochs} epochs"


def youden_thresholds(model, names, n: int = 2000) -> dict:
    from sklearn.metrics import roc_curve

    from cxr.data import phantom_dataset
    from cxr.infer import predict_probs

    cal = phantom_dataset(PhantomConfig(site="site-a", split="calibration", n=n, resolution=model.spec.resolution))
    probs = predict_probs(model, cal)
    out = {}
    for j, n in enumerate(names):
        y = cal.labels[:, j]
        if n and np.isfinite(y).all() and 0 < y.sum() < len(y):
            fpr, tpr, th = roc_curve(y, probs[:, j])
            out[n] = float(th[np.argmax(tpr - fpr)])
    return out


def cardiomegaly_shortcut(model, thr: float, images_u8, labels, hearts, ap, site: str) -> dict:
    """Where site `site`'s Cardiomegaly false positives point, and what painting out the marker does."""
    j = NIH_PATHOLOGIES.index("Cardiomegaly")
    exp_all = grad_cam(model, to_model_input(images_u8), "Cardiomegaly", layer="auto")
    p = sigmoid(exp_all.logits)
    neg = labels[:, j] == 0
    fp, tp = np.flatnonzero(neg & (p >= thr)), np.flatnonzero(~neg & (p >= thr))
    res = images_u8.shape[-1]
    marker = marker_box(site, res)
    band = border_mask(res, res)
    peaks = random_peaks(native_side(model, exp_all.layer), res)
    out = {"site": site, "threshold": round(float(thr), 4), "negative_films": int(neg.sum()),
           "false_positives": len(fp), "true_positives": len(tp),
           "ap_share_of_false_positives": round(float(np.mean([ap[i] for i in fp])) if len(fp) else 0.0, 3),
           "ap_share_of_films": round(float(np.mean(ap)), 3),
           "false_positive_peaks": where_peaks(exp_all.maps[fp], [hearts[i] for i in fp], marker, peaks),
           "true_positive_peaks": where_peaks(exp_all.maps[tp], [hearts[i] for i in tp], marker, peaks),
           "border_mass_false_positives": round(float(np.mean([m[band].sum() / max(m.sum(), 1e-12)
                                                               for m in exp_all.maps[fp]])) if len(fp) else 0.0, 3),
           "border_mass_true_positives": round(float(np.mean([m[band].sum() / max(m.sum(), 1e-12)
                                                              for m in exp_all.maps[tp]])) if len(tp) else 0.0, 3)}
    ap_idx = np.flatnonzero(np.array(ap) & neg)
    painted = to_model_input(paint_out_marker(images_u8[ap_idx], site))
    p_painted = sigmoid(grad_cam(model, painted, "Cardiomegaly", layer="auto").logits)
    before = p[ap_idx]
    out["marker_counterfactual"] = {
        "ap_negative_films": len(ap_idx),
        "mean_probability_with_marker": round(float(before.mean()), 4),
        "mean_probability_marker_painted_out": round(float(p_painted.mean()), 4),
        "false_positives_with_marker": int((before >= thr).sum()),
        "false_positives_marker_painted_out": int((p_painted >= thr).sum()),
    }
    # The clinical report's shortcut check: the film's outer band set to its median.
    from decision.documents.clinical import mask_border

    p_masked = sigmoid(grad_cam(model, mask_border(to_model_input(images_u8)), "Cardiomegaly", layer="auto").logits)
    out["border_masked_counterfactual"] = {
        "false_positives": len(fp), "still_positive_when_border_masked": int((p_masked[fp] >= thr).sum()),
        "true_positives": len(tp), "true_positives_still_positive": int((p_masked[tp] >= thr).sum()),
        "mean_probability_negatives": round(float(p[neg].mean()), 4),
        "mean_probability_negatives_border_masked": round(float(p_masked[neg].mean()), 4),
    }
    return out


def border_dependence(model, thresholds: dict, images_u8: np.ndarray, labels: np.ndarray) -> dict:
    """The control for the border check: per pathology, the share of its true- and false-positive calls that
    survive masking the film's border band. A shortcut on the edge is specific to some pathologies; an
    occlusion artefact would take every pathology's calls alike."""
    import torch

    from decision.documents.clinical import mask_border

    with torch.inference_mode():
        x = to_model_input(images_u8)
        p = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        pm = torch.sigmoid(model(torch.from_numpy(mask_border(x)))).numpy()
    out = {}
    for j, name in enumerate(NIH_PATHOLOGIES):
        t = thresholds.get(name)
        if t is None:
            continue
        pos, neg = labels[:, j] == 1, labels[:, j] == 0
        tp, fp = pos & (p[:, j] >= t), neg & (p[:, j] >= t)
        out[name] = {"true_positives": int(tp.sum()), "tp_kept": int((tp & (pm[:, j] >= t)).sum()),
                     "false_positives": int(fp.sum()), "fp_kept": int((fp & (pm[:, j] >= t)).sum())}
    return out


def real_rows(model) -> list[dict]:
    import pandas as pd

    if not (NIH_SAMPLE / "BBox_sample.csv").is_file():
        return []
    bb = pd.read_csv(NIH_SAMPLE / "BBox_sample.csv", header=None, skiprows=1,
                     names=["img", "label", "x", "y", "w", "h", "_1", "_2", "_3"])
    bb["label"] = bb["label"].replace({"Infiltrate": "Infiltration"})
    out = []
    res = model.spec.resolution
    for p, grp in bb.groupby("label"):
        x = np.stack([load_image_file(NIH_SAMPLE / "images" / f, res) for f in grp["img"]])
        boxes = [{p: tuple(v / 1024.0 for v in r)} for r in grp[["x", "y", "w", "h"]].to_numpy()]
        out += pointing_rows(model, x, boxes, "NIH sample (real)")
    return out


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--version", help="a registered version (needs DECIDE_HOME)")
    p.add_argument("--weights", help="a .safetensors file")
    p.add_argument("--thresholds", help="a thresholds JSON for --weights")
    p.add_argument("--n", type=int, default=2000, help="phantom evaluation films per site")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, thresholds, described = load_model(args)
    model.eval()
    n = 300 if args.quick else args.n
    if "Cardiomegaly" not in thresholds or thresholds["Cardiomegaly"] is None:
        youden = youden_thresholds(model, model.spec.pathologies, 600 if args.quick else 2000)
        thresholds = {**youden, **{k: v for k, v in thresholds.items() if v is not None}}
    rows, shortcut, dependence = [], {}, {}
    for site in ("site-a", "site-b"):
        cfg = PhantomConfig(site=site, split="evaluation", n=n, resolution=model.spec.resolution)
        images, labels, boxes, hearts, ap = render_with_boxes(cfg)
        rows += pointing_rows(model, to_model_input(images), boxes, f"phantom {site}")
        shortcut[site] = cardiomegaly_shortcut(model, thresholds["Cardiomegaly"], images, labels, hearts, ap, site)
        dependence[site] = border_dependence(model, thresholds, images, labels)
    rows += real_rows(model)
    layers = sorted({r.pop("layer") for r in rows})
    for r in rows:
        r["vs_noise_maps"] = round(r["pointing"] / r["chance_noise_maps"], 2) if r["chance_noise_maps"] else None
    figures = {"model": described, "grad_cam_layer": ", ".join(layers), "phantom_films_per_site": n,
               "cardiomegaly_threshold": thresholds["Cardiomegaly"],
               "cardiomegaly_shortcut": shortcut, "border_dependence": dependence,
               "seconds": round(time.perf_counter() - t0, 1)}
    title = ("Grad-CAM pointing game (hit = map maximum inside the box; chance: mean box area, and noise maps of "
             "the layer's resolution through the same procedure)")
    if not args.json:  # the table, then each site's Cardiomegaly shortcut check in one line (--json has it all)
        figures = {k: v for k, v in figures.items() if k not in ("cardiomegaly_shortcut", "border_dependence")}
        for site, sc in shortcut.items():
            peaks, mk, bd = sc["false_positive_peaks"], sc["marker_counterfactual"], sc["border_masked_counterfactual"]
            figures[f"Cardiomegaly at {site}"] = (
                f"{sc['false_positives']} false positives ({sc['ap_share_of_false_positives']:.0%} AP, films "
                f"{sc['ap_share_of_films']:.0%}); map peaks: heart {peaks['heart']['share']:.0%} (noise maps "
                f"{peaks['heart']['chance_noise_maps']:.0%}), marker corner {peaks['marker corner']['share']:.0%} "
                f"({peaks['marker corner']['chance_noise_maps']:.0%}), other border "
                f"{peaks['other border']['share']:.0%} ({peaks['other border']['chance_noise_maps']:.0%}); "
                f"marker painted out: AP false positives "
                f"{mk['false_positives_with_marker']} → {mk['false_positives_marker_painted_out']}; border masked: "
                f"{bd['still_positive_when_border_masked']}/{bd['false_positives']} false and "
                f"{bd['true_positives_still_positive']}/{bd['true_positives']} true positives stay positive")
    _common.output(title, rows, figures, args.json)


if __name__ == "__main__":
    main()
