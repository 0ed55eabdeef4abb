"""Label-free performance estimates: ours (`cxr.estimate`) beside NannyML's CBPE on the same synthetic data.

    /tmp/peers/bin/python bench/estimate_peers.py [--quick] [--json]

NannyML is a peer to measure against, never a dependency: run this in a separate virtual environment
that has it (`python3 -m venv /tmp/peers && /tmp/peers/bin/pip install nannyml statsmodels -c PINS`, PINS
holding this project's numpy / scipy / scikit-learn / pandas versions; nannyml 0.13.1 imports statsmodels
without declaring it). Without NannyML the script still runs ours and says why the peer is missing.

The world is the one of tests/cxr/test_estimate.py: negatives score Beta(2, 6), positives Beta(5, 2.5),
so P(y | s) at the calibration prevalence 0.15 is known in closed form. Both methods get the same
calibration split (3,000 studies: CBPE's reference data) and the same windows of 200 studies whose score
mix differs (positive-component share 0.05–0.40) while P(y | s) stays put; with `shift` the window's labels
follow logit P(y | s) + 1.5 instead (readers calling the finding more often: concept shift). Per window:
realised recall and FPR at t = 0.5, ours (point, 95 % interval), CBPE's (point, its band: value ± 3
sampling errors, NannyML's default), and the expected value under the true P(y | s). Figures: for each
method, the share of windows whose realised value lies in its interval, and the mean |estimate − realised|.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML phones home unless told not to

import numpy as np
from _common import output, parser
from scipy.stats import beta as beta_dist

from cxr.estimate import estimate, fit_calibration_map

NEG, POS, PI0, T = (2.0, 6.0), (5.0, 2.5), 0.15, 0.5
N_CAL, N_WIN = 3000, 200


def p_true(s, shift: float = 0.0):
    f1, f0 = beta_dist.pdf(s, *POS), beta_dist.pdf(s, *NEG)
    p = PI0 * f1 / (PI0 * f1 + (1 - PI0) * f0)
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + shift))) if shift else p


def draw(rng, n: int, mix: float, shift: float = 0.0):
    comp = rng.random(n) < mix
    s = np.where(comp, rng.beta(*POS, n), rng.beta(*NEG, n))
    return s, (rng.random(n) < p_true(s, shift)).astype(int)


def nannyml_cbpe(cal_s, cal_y, windows):
    """CBPE recall and specificity per window (chunk = window), or the reason it could not run."""
    try:
        import nannyml as nml
        import pandas as pd
    except Exception as exc:  # the peer is optional: say exactly why it is missing
        return None, f"{type(exc).__name__}: {exc}", None
    ref = pd.DataFrame({"score": cal_s, "pred": (cal_s >= T).astype(int), "label": cal_y})
    ana = pd.DataFrame({"score": np.concatenate([w[0] for w in windows]),
                        "pred": np.concatenate([(w[0] >= T).astype(int) for w in windows])})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = nml.CBPE(metrics=["recall", "specificity"], y_pred_proba="score", y_pred="pred", y_true="label",
                           problem_type="classification_binary", chunk_size=N_WIN).fit(ref)
            df = est.estimate(ana).filter(period="analysis").to_df()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}", nml.__version__
    cols = {}
    for metric in ("recall", "specificity"):
        cols[metric] = [df[(metric, k)].to_numpy(float) for k in
                        ("value", "lower_confidence_boundary", "upper_confidence_boundary")]
    return cols, None, nml.__version__


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n_windows = 8 if args.quick else 40
    rng = np.random.default_rng(2024)
    cal_s, cal_y = draw(rng, N_CAL, PI0)
    cmap = fit_calibration_map(cal_s, cal_y, seed=1)
    rows, figures = [], {}
    for shift in (0.0, 1.5):
        windows = [(*draw(rng, N_WIN, mix, shift), mix) for mix in rng.uniform(0.05, 0.40, n_windows)]
        nml_cols, why, version = nannyml_cbpe(cal_s, cal_y, windows)
        figures["nannyml"] = version
        if why:
            figures["nannyml_error"] = why
        hits = {k: [] for k in ("ours_recall", "ours_fpr", "cbpe_recall", "cbpe_fpr")}
        errs = {k: [] for k in hits}
        widths = {k: [] for k in hits}
        for i, (s, y, mix) in enumerate(windows):
            called, pos = s >= T, y == 1
            real_r, real_f = (called & pos).sum() / pos.sum(), (called & ~pos).sum() / (~pos).sum()
            pt = p_true(s, shift)  # the labels' own law: what a perfect estimate would say
            e = estimate(cmap, s, T, pathology="synthetic", seed=i)
            row = {"shift": shift, "window": i, "mix": round(float(mix), 3), "valid": e.valid,
                   "realised_recall": real_r, "true_p_recall": float((pt * called).sum() / pt.sum()),
                   "ours_recall": e.recall, "ours_recall_ci": e.recall_ci, "realised_fpr": real_f,
                   "ours_fpr": e.fpr, "ours_fpr_ci": e.fpr_ci}
            if e.valid:
                for m, real in (("recall", real_r), ("fpr", real_f)):
                    ci, val = getattr(e, f"{m}_ci"), getattr(e, m)
                    hits[f"ours_{m}"].append(ci[0] <= real <= ci[1])
                    errs[f"ours_{m}"].append(abs(val - real))
                    widths[f"ours_{m}"].append(ci[1] - ci[0])
            if nml_cols:
                r, lo, hi = (c[i] for c in nml_cols["recall"])
                sp, splo, sphi = (c[i] for c in nml_cols["specificity"])
                row |= {"cbpe_recall": r, "cbpe_recall_band": (lo, hi), "cbpe_fpr": 1 - sp,
                        "cbpe_fpr_band": (1 - sphi, 1 - splo)}
                peer = (("recall", real_r, r, (lo, hi)), ("fpr", real_f, 1 - sp, (1 - sphi, 1 - splo)))
                for m, real, val, band in peer:
                    hits[f"cbpe_{m}"].append(band[0] <= real <= band[1])
                    errs[f"cbpe_{m}"].append(abs(val - real))
                    widths[f"cbpe_{m}"].append(band[1] - band[0])
            rows.append(row)
        tag = "no_shift" if shift == 0 else "concept_shift"
        figures[tag] = {k: {"realised_in_interval": float(np.mean(v)) if v else None,
                            "mean_abs_error": float(np.mean(errs[k])) if errs[k] else None,
                            "mean_width": float(np.mean(widths[k])) if widths[k] else None, "windows": len(v)}
                        for k, v in hits.items()}
    pairs = [(r["ours_recall"], r["cbpe_recall"], r["ours_fpr"], r["cbpe_fpr"]) for r in rows
             if r.get("cbpe_recall") is not None and r["ours_recall"] is not None]
    if pairs:
        d = np.abs(np.array([[a - b, c - e] for a, b, c, e in pairs]))
        figures["max_abs_point_difference"] = {"recall": float(d[:, 0].max()), "fpr": float(d[:, 1].max())}
    figures["versions"] = {m.__name__: m.__version__ for m in _modules()}
    shown = rows if args.json else [_short(r) for r in rows]
    output("label-free estimates: cxr.estimate vs NannyML CBPE", shown, figures, args.json)


def _modules():
    import numpy
    import pandas
    import scipy
    import sklearn

    return numpy, scipy, sklearn, pandas


def _short(r: dict) -> dict:
    def cell(v, ci):
        return "-" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    return {"shift": r["shift"], "win": r["window"], "mix": r["mix"], "recall": round(float(r["realised_recall"]), 3),
            "ours": cell(r["ours_recall"], r["ours_recall_ci"]),
            "CBPE": cell(r.get("cbpe_recall"), r.get("cbpe_recall_band")), "fpr": round(float(r["realised_fpr"]), 3),
            "ours ": cell(r["ours_fpr"], r["ours_fpr_ci"]), "CBPE ": cell(r.get("cbpe_fpr"), r.get("cbpe_fpr_band"))}


if __name__ == "__main__":
    main()
