"""Per-study OOD (cxr/ood.py): share of films flagged, in-distribution and outside, per detector, side by side.

    python bench/ood.py [--quick] [--json] [--weights BLOB] [--cache DIR] [--threads N]

A compact phantom DenseNet (trained here on site-a phantoms the way the demo trains its baseline, or
the safetensors weights blob of a registered version with --weights, e.g. a demo home's production
blob) is given a per-study OOD reference fitted on the site-a calibration split (pooled features and
the model-ready images' intensity histograms). Reported at false-alarm rates 0.01 and 0.05: the share
flagged of phantom site-a evaluation films (goal <= 5 %), of the real NIH sample films in
../shared/data/nih-sample (goal >= 95 %; read in place, never copied), and of the site-a evaluation
films inverted (a MONOCHROME1 film read without inversion) and rotated by 90 degrees (goal >= 90 %
each); site-b and site-e (other hospitals' phantoms) for information. Rows: the feature detector
alone, the intensity detector alone, relative Mahalanobis (Ren et al. 2021; classes = view AP/PA)
as a measured alternative, and what ships — `assess_studies` (both distance tests at rate / 2 each,
plus the sanity and metadata checks). Shares carry 95 % Wilson intervals. Nothing here is tuned on
the films it reports on: the detectors' settings are fixed in cxr/ood.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import _common
import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.covariance import LedoitWolf

from cxr.data import phantom_dataset
from cxr.features import head_logits, sigmoid
from cxr.images import center_crop_resize, list_films, read_film
from cxr.ood import OodReference, assess_studies, conformal_rank, intensity_histogram, split_calibration
from cxr.phantom import PhantomConfig

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-sample" / "images"
RATES = (0.01, 0.05)
SHORT = {"site-a evaluation": "a-eval", "inverted": "inverted", "rotated 90": "rot90", "NIH real": "NIH",
         "site-b": "site-b", "site-e": "site-e"}


def model_from(args, n_train: int, epochs: int, cache):
    """(torch module, spec) from --weights, else trained on site-a phantoms (the demo's recipe, seeded)."""
    if args.weights:
        from cxr.quantize import runnable
        from cxr.weights import from_bytes

        w = from_bytes(Path(args.weights).read_bytes(), source=args.weights)
        return runnable(w), w.spec, f"weights {Path(args.weights).name[:12]}"
    from cxr.spec import preset
    from cxr.train import TrainConfig, train

    spec = preset("compact")
    train_set = phantom_dataset(PhantomConfig(site="site-a", split="train", n=n_train, resolution=spec.resolution),
                                cache_dir=cache)
    model = train(spec, train_set, TrainConfig(epochs=epochs, seed=args.seed, threads=args.threads)).model
    return model, spec, f"compact trained here ({n_train} site-a films, {epochs} epochs)"


def score(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, pooled features) of model-ready images (N, 1, R, R), in batches."""
    probs, feats = [], []
    model.eval()
    for i in range(0, len(x), 256):
        with torch.inference_mode():
            f = model.pooled(torch.from_numpy(np.ascontiguousarray(x[i:i + 256], dtype=np.float32))).numpy()
        w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
        probs.append(sigmoid(head_logits(f, w, b)))
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


def relative_mahalanobis(feats: np.ndarray, classes: np.ndarray, seed: int):
    """Ren et al.'s RMD: min_c MD_c(x)^2 - MD_0(x)^2 (shared within-class covariance, same split);
    returns (score function, sorted held-out scores)."""
    fit, held = split_calibration(len(feats), seed=seed)
    x, c = feats[fit], classes[fit]
    means = [x[c == v].mean(axis=0) for v in np.unique(c)]
    within = LedoitWolf(assume_centered=True).fit(np.concatenate([x[c == v] - m for v, m in
                                                                  zip(np.unique(c), means, strict=True)]))
    glob = LedoitWolf().fit(x)

    def md2(z, m, p):
        d = z - m
        return np.einsum("ij,ij->i", d @ p, d)

    def fn(z):
        z = np.asarray(z, dtype=np.float64)
        return np.min([md2(z, m, within.precision_) for m in means], axis=0) - md2(z, glob.location_, glob.precision_)

    return fn, np.sort(fn(feats[held]))


def share(flags) -> dict:
    flags = np.asarray(flags, dtype=bool)
    ci = binomtest(int(flags.sum()), flags.size).proportion_ci(method="wilson")
    return {"share": round(float(flags.mean()), 4), "lo": round(float(ci.low), 4), "hi": round(float(ci.high), 4),
            "n": int(flags.size)}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--weights", help="a version's safetensors weights blob (default: train a compact model here)")
    p.add_argument("--cache", help="phantom cache folder (read, and written when missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine torch's own default ran 10x slower)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    n_train, epochs, n_cal, n_eval, n_other = (2000, 2, 1000, 500, 300) if args.quick else (8000, 5, 2000, 2000, 1000)
    stages = {}
    model, spec, source = model_from(args, n_train, epochs, args.cache)
    res = spec.resolution
    stages["model"] = round(time.perf_counter() - t0, 1)

    def phantom(site, split, n):
        ds = phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=res), cache_dir=args.cache)
        return ds, ds.images(np.arange(len(ds)))

    cal_ds, cal = phantom("site-a", "calibration", n_cal)
    _, ev = phantom("site-a", "evaluation", n_eval)
    sets = {"site-a evaluation": ev, "inverted": -ev, "rotated 90": np.ascontiguousarray(np.rot90(ev, 1, axes=(2, 3)))}
    films = [read_film(f) for f in list_films(NIH)] if NIH.is_dir() else []
    if films:
        sets["NIH real"] = np.stack([center_crop_resize(f.pixels, res) for f in films])
    sets["site-b"] = phantom("site-b", "evaluation", n_other)[1]
    sets["site-e"] = phantom("site-e", "evaluation", n_other)[1]
    stages["films"] = round(time.perf_counter() - t0 - sum(stages.values()), 1)
    _, cal_feats = score(model, cal)
    scored = {name: score(model, x) for name, x in sets.items()}
    stages["scoring"] = round(time.perf_counter() - t0 - sum(stages.values()), 1)
    t_fit = time.perf_counter()
    ref = OodReference.fit(cal_feats, cal[:, 0], seed=args.seed)
    fit_s = time.perf_counter() - t_fit
    views = np.array([v == "AP" for v in cal_ds.views], dtype=int)
    rmd, rmd_held = relative_mahalanobis(cal_feats.astype(np.float64), views, args.seed)
    hist = {name: ref.intensity.distance(np.stack([intensity_histogram(im) for im in x[:, 0]]))
            for name, x in sets.items()}
    rows, shipped = [], {}
    for rate in RATES:
        rmd_cut = rmd_held[conformal_rank(rmd_held.size, rate) - 1]
        variants = {
            "features alone": lambda n, r=rate: ref.features.distance(scored[n][1]) > ref.features.cutoff(r),
            "intensity alone": lambda n, r=rate: hist[n] > ref.intensity.cutoff(r),
            "relative Mahalanobis (AP/PA)": lambda n, c=rmd_cut: rmd(scored[n][1]) > c,
            "shipped: assess_studies": lambda n, r=rate: [a.outside for a in assess_studies(
                ref, scored[n][1], images=list(sets[n][:, 0]), probabilities=scored[n][0], rate=r)],
        }
        for variant, flagged in variants.items():
            row = {"rate": rate, "detector": variant}
            for name in sets:
                s = share(flagged(name))
                row[SHORT[name]] = s["share"]
                if variant.startswith("shipped"):
                    shipped[f"{name} @ {rate}"] = s
            rows.append(row)
    degenerate = {name: int(sum(a.degenerate for a in assess_studies(ref, scored[name][1], images=list(x[:, 0]))))
                  for name, x in sets.items()}
    fault = ev[:32] / 1024.0  # pixels left in [-1, 1]: torchxrayvision#89's fault
    fault_flags = assess_studies(ref, score(model, fault)[1], probabilities=score(model, fault)[0])
    goals = {}
    for rate in RATES:
        g = {"site-a evaluation <= 5 %": shipped[f"site-a evaluation @ {rate}"]["share"] <= 0.05,
             "inverted >= 90 %": shipped[f"inverted @ {rate}"]["share"] >= 0.90,
             "rotated 90 >= 90 %": shipped[f"rotated 90 @ {rate}"]["share"] >= 0.90}
        if films:
            g["NIH real >= 95 %"] = shipped[f"NIH real @ {rate}"]["share"] >= 0.95
        goals[str(rate)] = g
    figures = {
        "model": source, "features": int(cal_feats.shape[1]), "calibration": n_cal,
        "held_out": int(ref.features.held_out.size), "shrinkage_features": round(ref.features.shrinkage, 4),
        "shrinkage_intensity": round(ref.intensity.shrinkage, 4), "fit_seconds": round(fit_s, 3),
        "nih_films": len(films), "degenerate_flagged": degenerate,
        "all_same_output_batch_flagged": all(a.degenerate for a in fault_flags),
        "shipped (share, 95 % Wilson lo/hi)": shipped, "goals": goals, "seconds_by_stage": stages,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _common.output("per-study OOD: share flagged [95 % Wilson]", rows, figures, args.json)


if __name__ == "__main__":
    main()
