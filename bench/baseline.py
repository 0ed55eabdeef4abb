"""The compact baseline on the phantom: wall time (data generation included), AUROC, site-b error.

Cold run: a fresh cache, so phantom rendering is timed too. Reports the mean
evaluation AUROC over the 14 NIH pathologies at site-a, every pathology's
AUROC with its number of positives, and the Cardiomegaly false-positive rate
at site-a vs site-b at the Youden threshold chosen on site-a's calibration split.

    python bench/baseline.py [--quick] [--json] [--n-train 8000] [--n-eval 2000] [--epochs 5]
"""

from __future__ import annotations

import tempfile
import time

import _common
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from cxr.data import phantom_dataset
from cxr.infer import predict_probs
from cxr.phantom import PhantomConfig
from cxr.spec import NIH_PATHOLOGIES, preset
from cxr.train import TrainConfig, train
from cxr.weights import tensors_digest


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n_train, args.n_eval, args.epochs = 1500, 600, 2
    spec = preset("compact")
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        mk = lambda site, split, n: phantom_dataset(  # noqa: E731
            PhantomConfig(site=site, split=split, n=n, resolution=spec.resolution, seed=args.seed), cache_dir=cache
        )
        tr = mk("site-a", "train", args.n_train)
        t_data = time.perf_counter() - t0
        res = train(spec, tr, TrainConfig(epochs=args.epochs, seed=args.seed))
        t_train_total = time.perf_counter() - t0
        cal, ev, evb = mk("site-a", "calibration", args.n_eval), mk("site-a", "evaluation", args.n_eval), mk(
            "site-b", "evaluation", args.n_eval
        )
        pc, pe, pb = (predict_probs(res.model, d) for d in (cal, ev, evb))
    rows, aucs = [], []
    for j, name in enumerate(NIH_PATHOLOGIES):
        y = ev.labels[:, j]
        auc = float(roc_auc_score(y, pe[:, j])) if 0 < y.sum() < len(y) else float("nan")
        aucs.append(auc)
        rows.append({"pathology": name, "eval_positives": int(y.sum()), "auroc": round(auc, 4)})
    j = NIH_PATHOLOGIES.index("Cardiomegaly")
    fpr, tpr, th = roc_curve(cal.labels[:, j], pc[:, j])
    t = float(th[np.argmax(tpr - fpr)])

    def fp_rate(ds, probs):
        y = ds.labels[:, j]
        return float(((probs[:, j] >= t) & (y == 0)).sum() / (y == 0).sum())

    fa, fb = fp_rate(ev, pe), fp_rate(evb, pb)
    eligible = [r["auroc"] for r in rows if r["eval_positives"] >= 20]
    figures = {
        "n_train": len(tr),
        "n_eval": len(ev),
        "epochs": args.epochs,
        "data_generation_s": round(t_data, 1),
        "train_wall_s_including_data": round(t_train_total, 1),
        "train_images_per_s": round(float(np.mean([h["images_per_s"] for h in res.history])), 1),
        "mean_auroc_site_a_14": round(float(np.nanmean(aucs)), 4),
        "min_auroc_with_20_positives": round(float(min(eligible)), 4) if eligible else None,
        "cardiomegaly_threshold_youden_site_a": round(t, 4),
        "cardiomegaly_fpr_site_a": round(fa, 4),
        "cardiomegaly_fpr_site_b": round(fb, 4),
        "fpr_ratio_b_over_a": round(fb / fa, 2) if fa > 0 else None,
        "weights_sha256": tensors_digest(res.model.state_dict()),
        "dataset_digest": tr.digest(),
    }
    _common.output("compact baseline on the phantom", rows, figures, args.json)


if __name__ == "__main__":
    main()
