"""bench/drift.py's peers and scoring: Evidently and NannyML run in their own venvs on the same windows
(bench/_evidently_runner.py, bench/_nannyml_runner.py, arrays handed over as .npz), and how many estimates
fall inside the realised value's exact interval (ours and CBPE's alike)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import binomtest

if TYPE_CHECKING:
    from _drift_data import Films
    from drift import Monitor


def rate(flags) -> dict:
    """The share of `flags` set, with its 95 % Wilson interval."""
    f = np.asarray(flags, dtype=bool)
    ci = binomtest(int(f.sum()), f.size).proportion_ci(method="wilson")
    return {"k": int(f.sum()), "n": int(f.size), "rate": round(float(f.mean()), 4),
            "wilson": [round(float(ci.low), 4), round(float(ci.high), 4)]}


# ---------------------------------------------------------------- 2: Evidently


def evidently(python: str | None, ref, cal_feats: np.ndarray, groups: dict[str, list[np.ndarray]],
              pools: dict[str, Films], crosscheck: bool) -> dict:
    if not python:
        return {"run": False, "why": "not run: no --evidently-python given"}
    arrays = {"names": np.array([str(n) for n in ref.pathologies]), "ref_scores": ref.drift.scores,
              "ref_features": cal_feats, "ref_sample": ref.drift.features, "groups": np.array(list(groups)),
              "crosscheck": np.array(crosscheck)}
    for g, wins in groups.items():
        f = pools[g.split("/")[0]]
        idx = np.concatenate(wins) if wins else np.empty(0, dtype=int)
        arrays[f"{g}.scores"], arrays[f"{g}.features"] = f.probs[idx], f.feats[idx]
        arrays[f"{g}.offsets"] = np.cumsum([0, *[len(w) for w in wins]])
    out = _peer(python, "_evidently_runner.py", arrays)
    if "why" in out:
        return {"run": False, "why": out["why"]}
    res = {"run": True, **{k: out[k] for k in out if k != "groups"}, "groups": {}}
    for g, rows in out["groups"].items():
        res["groups"][g] = {
            "preset (>= 50 % of score columns drift)": rate([r["dataset_drift"] for r in rows]),
            "embeddings (AUC > 0.55, calibration split)": rate([r["embedding_drift"] for r in rows]),
            "embeddings (bootstrap, product's sample)": rate([r["embedding_sample_drift"] for r in rows]),
            "preset or embeddings": rate([r["dataset_drift"] or r["embedding_drift"] for r in rows]),
            "any score column drifts": rate([r["drifted_columns"] > 0 for r in rows]),
            "mean drifted columns": round(float(np.mean([r["drifted_columns"] for r in rows])), 2),
            "column test": rows[0]["column_test"] if rows else None}
    return res




def _realised(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(method="exact")  # Clopper-Pearson, computed by scipy
    return float(ci.low), float(ci.high)



def coverage(records: list[dict], rk: str, fk: str) -> dict:
    """Share of pairs whose estimated recall and FPR both lie in the realised value's Clopper-Pearson 95 % interval
    (pairs without a realised recall or FPR, or without an estimate, are left out and counted)."""
    hits, rec_in, fpr_in, errs, by = 0, 0, 0, [], {}
    usable = [r for r in records if r[rk] is not None and r["counts"][1] > 0 and r["counts"][3] > 0]
    for r in usable:
        tp, npos, fp, nneg = r["counts"]
        ok_r = (lambda ci: ci[0] <= r[rk] <= ci[1])(_realised(tp, npos))
        ok_f = (lambda ci: ci[0] <= r[fk] <= ci[1])(_realised(fp, nneg))
        hits, rec_in, fpr_in = hits + (ok_r and ok_f), rec_in + ok_r, fpr_in + ok_f
        errs.append((abs(r[rk] - tp / npos), abs(r[fk] - fp / nneg)))
        b = by.setdefault(r["pathology"], [0, 0])
        b[0], b[1] = b[0] + 1, b[1] + (ok_r and ok_f)
    n = len(usable)
    return {"pairs": n, "left_out": len(records) - n, "inside_both": round(hits / n, 4) if n else None,
            "inside_recall": round(rec_in / n, 4) if n else None, "inside_fpr": round(fpr_in / n, 4) if n else None,
            "mean_abs_error": np.round(np.mean(errs, axis=0), 4).tolist() if errs else None,
            "by_pathology": {k: f"{v[1]}/{v[0]}" for k, v in sorted(by.items())}}




def nannyml(python: str | None, mon: Monitor, cal_probs, cal_labels, runs: dict[str, tuple[Films, list, list]]) -> dict:
    """NannyML's CBPE (bench/_nannyml_runner.py) on the same windows and operating points; coverage as ours."""
    if not python:
        return {"run": False, "why": "not run: no --nannyml-python given"}
    arrays, tasks = {}, []
    for g, (f, wins, _) in runs.items():
        for name, t in mon.cols.items():
            j = mon.names.index(name)
            known = ~np.isnan(cal_labels[:, j])
            task = f"{g}|{name}"
            tasks.append(task)
            arrays |= {f"{task}.ref_scores": cal_probs[known, j], f"{task}.ref_labels": cal_labels[known, j],
                       f"{task}.threshold": np.array(t), f"{task}.scores": f.probs[np.concatenate(wins), j],
                       f"{task}.window": np.array(len(wins[0]))}
    arrays["tasks"] = np.array(tasks)
    out = _peer(python, "_nannyml_runner.py", arrays)
    if "why" in out:
        return {"run": False, "why": out["why"]}
    res = {"run": True, "nannyml": out["nannyml"], "pandas": out["pandas"], "seconds": out["seconds"], "groups": {}}
    for g, (_, _, records) in runs.items():
        got, failed = [], {}
        for r in records:
            est = out["tasks"].get(f"{g}|{r['pathology']}", {})
            if "error" in est:
                failed[r["pathology"]] = est["error"]
                continue
            i = r["window"]
            got.append({**r, "cbpe_recall": _num(est["recall"][i]), "cbpe_fpr": _num(est["fpr"][i])})
        res["groups"][g] = {"CBPE (all pairs)": coverage(got, "cbpe_recall", "cbpe_fpr"),
                            "CBPE (pairs where ours is valid)": coverage([r for r in got if r["valid"]], "cbpe_recall",
                                                                          "cbpe_fpr"),
                            "failed": failed}
    return res


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _peer(python: str, runner: str, arrays: dict) -> dict:
    """Run a peer's runner in its own venv on arrays handed over as a temporary .npz; its JSON, or {"why": …}."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", **arrays)
        try:
            proc = subprocess.run([python, str(Path(__file__).with_name(runner)), str(Path(tmp) / "in.npz"),
                                   str(Path(tmp) / "out.json")], capture_output=True, text=True, timeout=3000)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"why": f"not run: {type(exc).__name__}: {exc}"}
        if proc.returncode != 0:
            return {"why": "not run: " + (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        return json.loads((Path(tmp) / "out.json").read_text())
