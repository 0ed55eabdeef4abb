"""Evidently's default data-drift checks on the windows bench/drift.py hands over; run in a venv that has Evidently.

    /tmp/peers-evidently/bin/python bench/_evidently_runner.py IN.npz OUT.json

Evidently is a peer to measure against, never a dependency of this project: this file imports nothing of
ours and only numpy, pandas and evidently. IN.npz holds `names` (the P score columns), `ref_scores`
(n × P: the calibration split's scores, the product's drift reference), `ref_features` (n × F: the same
studies' pooled features), `ref_sample` (m × F: the rows the product's MMD uses), `groups` and, per group g,
`g.scores`, `g.features` and `g.offsets` (window i is rows offsets[i]:offsets[i + 1]), and `crosscheck`
(whether to run the Report itself on the first window).

What runs is what Evidently 0.7's defaults run:

* `DataDriftPreset()` on the P score columns: per column the default test of
  `evidently.legacy.calculations.stattests.registry.get_stattest` (a reference of more than 1,000 rows:
  Wasserstein distance normed by the reference's sd, drift at >= 0.1; up to 1,000 rows: KS, p < 0.05), and
  dataset drift when the share of drifted columns is >= `drift_share` (0.5). The columns are judged here
  through the same stat-test objects the preset calls; the first window is also run through
  `Report([DataDriftPreset()])` itself and the two are compared (`crosscheck`). The Report is not run on
  every window because it renders its plots (plotly) whether asked or not: seconds per window.
* `EmbeddingsDrift` on the pooled features: its default method, `model(bootstrap=<reference rows < 1000>)`
  — a domain classifier (SGD logistic regression, 50/50 split), drift when its ROC AUC > 0.55, or with the
  bootstrap above the 95th percentile of 100 random-label AUCs. Called directly (the same
  `ModelDriftMethod` object the metric builds): the metric itself also fits a t-SNE for its plot, over a
  minute per window. Two references: the whole calibration split (n rows: AUC > 0.55) and the product's
  m-row sample (m < 1000: the bootstrap rule).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry (iterative-telemetry) stays off
os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "1")
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

import numpy as np
import pandas as pd


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    import evidently
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    from evidently.presets import DataDriftPreset

    warnings.simplefilter("ignore")  # SGDClassifier convergence chatter
    z = np.load(src, allow_pickle=False)
    names = [str(n) for n in z["names"]]
    feat_cols = [f"f{j}" for j in range(z["ref_features"].shape[1])]
    ref_s = pd.DataFrame(z["ref_scores"], columns=names)
    ref_f = pd.DataFrame(z["ref_features"], columns=feat_cols)
    ref_m = pd.DataFrame(z["ref_sample"], columns=feat_cols)
    drift_share = DataDriftPreset().drift_share
    emb_full = model(bootstrap=len(ref_f) < 1000)  # what EmbeddingsDriftMetric.calculate builds by default
    emb_sample = model(bootstrap=len(ref_m) < 1000)

    def columns(cur: pd.DataFrame) -> list[tuple[str, float, bool]]:
        out = []
        for c in names:
            test = get_stattest(ref_s[c], cur[c], ColumnType.Numerical, None)
            res = test(ref_s[c], cur[c], ColumnType.Numerical, None)
            out.append((test.name, float(res.drift_score), bool(res.drifted)))
        return out

    groups, t0 = {}, time.perf_counter()
    for g in [str(x) for x in z["groups"]]:
        scores, feats, off = z[f"{g}.scores"], z[f"{g}.features"], z[f"{g}.offsets"]
        rows = []
        for i in range(len(off) - 1):
            cur_s = pd.DataFrame(scores[off[i]:off[i + 1]], columns=names)
            cur_f = pd.DataFrame(feats[off[i]:off[i + 1]], columns=feat_cols)
            cols = columns(cur_s)
            drifted = sum(d for _, _, d in cols)
            auc_f, hit_f, _ = emb_full(cur_f.copy(), ref_f.copy())
            auc_m, hit_m, _ = emb_sample(cur_f.copy(), ref_m.copy())
            rows.append({"drifted_columns": int(drifted), "dataset_drift": bool(drifted / len(names) >= drift_share),
                         "embedding_auc": float(auc_f), "embedding_drift": bool(hit_f),
                         "embedding_sample_auc": float(auc_m), "embedding_sample_drift": bool(hit_m),
                         "column_test": cols[0][0]})
        groups[g] = rows
    seconds = time.perf_counter() - t0
    n_windows = sum(len(v) for v in groups.values())

    crosscheck = None
    first = next((g for g in groups if groups[g]), None) if bool(z["crosscheck"]) else None
    if first is not None:  # the Report itself on one window: the same columns drift, the same dataset verdict
        from evidently import DataDefinition, Dataset, Report

        off = z[f"{first}.offsets"]
        cur_s = pd.DataFrame(z[f"{first}.scores"][off[0]:off[1]], columns=names)
        dd = DataDefinition(numerical_columns=names)
        t = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur_s, data_definition=dd),
                                               Dataset.from_pandas(ref_s, data_definition=dd))
        report_s = time.perf_counter() - t
        metrics = snap.dict()["metrics"]
        count = next(m["value"]["count"] for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
        values = [m["value"] for m in metrics if m["metric_name"].startswith("ValueDrift")]
        direct = columns(cur_s)
        crosscheck = {"window": f"{first}[0]", "report_drifted_columns": int(count),
                      "direct_drifted_columns": groups[first][0]["drifted_columns"],
                      "max_abs_score_difference": float(max(abs(v - d[1]) for v, d in zip(values, direct,
                                                                                          strict=True))),
                      "agree": int(count) == groups[first][0]["drifted_columns"], "report_seconds": round(report_s, 2)}
    out = {"evidently": evidently.__version__, "pandas": pd.__version__, "numpy": np.__version__,
           "drift_share": drift_share, "embedding_reference_rows": [len(ref_f), len(ref_m)],
           "embedding_bootstrap": [len(ref_f) < 1000, len(ref_m) < 1000], "groups": groups,
           "crosscheck": crosscheck, "seconds_per_window": round(seconds / max(n_windows, 1), 4)}
    with open(dst, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
