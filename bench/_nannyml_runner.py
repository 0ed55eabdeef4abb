"""NannyML's CBPE on the windows bench/drift.py hands over; run in a venv that has NannyML (a peer, never a dependency).

    /tmp/peers/bin/python bench/_nannyml_runner.py IN.npz OUT.json

IN.npz holds `tasks` (names "group|pathology") and per task t: `t.ref_scores`, `t.ref_labels` (the calibration
split's scores and 0/1 labels: CBPE's reference data), `t.threshold` (the version's operating point: y_pred =
score >= threshold), `t.scores` (the windows, one after another) and `t.window` (their size: one chunk per
window). CBPE runs with its defaults (`calibration="isotonic"`, fitted on the reference when its scores need
it) for recall and specificity; OUT.json holds, per task, the estimated recall and FPR (1 - specificity) per
window, and NannyML's band (value ± 3 sampling errors, its default) for each.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML phones home unless told not to

import numpy as np
import pandas as pd


def main() -> None:
    import nannyml as nml

    warnings.simplefilter("ignore")
    z = np.load(sys.argv[1], allow_pickle=False)
    out, t0 = {}, time.perf_counter()
    for task in [str(x) for x in z["tasks"]]:
        t = float(z[f"{task}.threshold"])
        rs, ry, ws = z[f"{task}.ref_scores"], z[f"{task}.ref_labels"], z[f"{task}.scores"]
        size = int(z[f"{task}.window"])
        ref = pd.DataFrame({"score": rs, "pred": (rs >= t).astype(int), "label": ry.astype(int)})
        ana = pd.DataFrame({"score": ws, "pred": (ws >= t).astype(int)})
        try:
            est = nml.CBPE(metrics=["recall", "specificity"], y_pred_proba="score", y_pred="pred", y_true="label",
                           problem_type="classification_binary", chunk_size=size).fit(ref)
            df = est.estimate(ana).filter(period="analysis").to_df()
        except Exception as exc:  # the peer's own refusal is a result: say it
            out[task] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        out[task] = _columns(df)
    with open(sys.argv[2], "w") as fh:
        json.dump({"nannyml": nml.__version__, "pandas": pd.__version__, "tasks": out,
                   "seconds": round(time.perf_counter() - t0, 2)}, fh)


def _columns(df: pd.DataFrame) -> dict:
    def col(m: str, k: str) -> list[float]:
        return df[(m, k)].to_numpy(float).tolist()

    return {"recall": col("recall", "value"), "recall_band": [col("recall", "lower_confidence_boundary"),
                                                              col("recall", "upper_confidence_boundary")],
            "fpr": [1 - v for v in col("specificity", "value")],
            "fpr_band": [[1 - v for v in col("specificity", "upper_confidence_boundary")],
                         [1 - v for v in col("specificity", "lower_confidence_boundary")]]}


if __name__ == "__main__":
    main()
