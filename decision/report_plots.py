"""The report's plots, drawn with matplotlib (Agg, no global pyplot state) into PNG bytes.

Each function takes the registry export (`registry.export.export_all`) and returns PNG bytes, or
None when there is nothing to draw: per-pathology AUROC with 95% CIs across the versions that
held `production`, the surgery K-sweeps, and the lineage graph.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STATUS_COLOURS = {"production": "#2e7d32", "archived": "#90a4ae", "rejected": "#c62828", "candidate": "#f9a825"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def production_chain(export: dict[str, Any]) -> list[int]:
    """Version ids that held `production`, in the order they got it (baseline first)."""
    ids = {(v["model"], v["version"]): v["id"] for v in export["versions"]}
    chain: list[int] = []
    for move in export.get("alias_history", []):
        if move["alias"] != "production":
            continue
        vid = ids.get((move["model"], move["to_version"]))
        if vid is not None and vid not in chain:
            chain.append(vid)
    return chain


def auroc_plots(export: dict[str, Any]) -> list[tuple[str, bytes]]:
    """One figure per evaluation data set: AUROC and its 95% CI per pathology, one series per production version."""
    chain = production_chain(export)
    refs = {v["id"]: f"{v['model']}:{v['version']}" for v in export["versions"]}
    datasets = {d["id"]: d["name"] for d in export["datasets"]}
    by_ds: dict[int, dict[int, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for e in export["evaluations"]:
        if e["version_id"] in chain and e["auroc"] is not None:
            by_ds[e["dataset_id"]][e["version_id"]][e["pathology"]] = e
    out = []
    for ds_id, versions in sorted(by_ds.items()):
        paths = sorted({p for rows in versions.values() for p in rows})
        shown = [v for v in chain if v in versions]
        fig = Figure(figsize=(max(7.0, 0.55 * len(paths)), 4.2))
        ax = fig.add_subplot()
        width = 0.8 / max(len(shown), 1)
        for k, vid in enumerate(shown):
            xs, ys, lo, hi = [], [], [], []
            for i, p in enumerate(paths):
                e = versions[vid].get(p)
                if e is None:
                    continue
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(e["auroc"])
                lo.append(e["auroc"] - (e["auroc_lo"] if e["auroc_lo"] is not None else e["auroc"]))
                hi.append((e["auroc_hi"] if e["auroc_hi"] is not None else e["auroc"]) - e["auroc"])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=3, capsize=2, label=refs[vid])
        ax.set_xticks(range(len(paths)), paths, rotation=55, ha="right", fontsize=8)
        ax.set_ylim(0.3, 1.0)
        ax.set_ylabel("AUROC (95% DeLong CI)")
        ax.set_title(f"{datasets.get(ds_id, ds_id)}: versions that held production")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=min(4, len(shown)), loc="lower left")
        out.append((datasets.get(ds_id, str(ds_id)), _png(fig)))
    return out


def ksweep_plot(export: dict[str, Any]) -> bytes | None:
    """FPR at the site and true positives lost vs K, for every surgery run that recorded a sweep."""
    reports = {r["id"]: r for r in export["reports"]}
    decisions = {d["id"]: d for d in export["decisions"]}
    sweeps = []
    for run in export["runs"]:
        sweep = (run.get("artifacts") or {}).get("k_sweep")
        if not sweep:
            continue
        d = decisions.get(run["decision_id"])
        rep = reports.get(d["report_ids"][0]) if d and d["report_ids"] else None
        label = f"run {run['id']}" + (f": {rep['pathology']} at {rep['site']}" if rep else "")
        sweeps.append((label, sweep))
    if not sweeps:
        return None
    fig = Figure(figsize=(9, 3.6))
    ax_fpr, ax_tp = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, sweep in sweeps[:12]:
        ks = [r["k"] for r in sweep]
        ax_fpr.plot(ks, [r["fpr"] for r in sweep], marker="o", ms=3, label=label)
        ax_tp.plot(ks, [r["tp_loss"] for r in sweep], marker="o", ms=3, label=label)
    ax_fpr.set(xscale="log", xlabel="K (channels zeroed)", ylabel="calibration FPR at the site",
               title="false-positive rate vs K")
    ax_tp.set(xscale="log", xlabel="K (channels zeroed)", ylabel="true positives lost", title="TP loss vs K")
    ax_tp.legend(fontsize=6)
    for ax in (ax_fpr, ax_tp):
        ax.grid(alpha=0.3)
    return _png(fig)


def lineage_plot(export: dict[str, Any]) -> bytes | None:
    """Versions as nodes by generation, coloured by status; edges labelled with the producing treatment."""
    versions = {v["id"]: v for v in export["versions"]}
    if not versions:
        return None
    runs = {r["id"]: r for r in export["runs"]}
    depth: dict[int, int] = {}

    def gen(vid: int) -> int:
        if vid not in depth:
            parent = versions[vid]["parent_id"]
            depth[vid] = 0 if parent is None or parent not in versions else gen(parent) + 1
        return depth[vid]

    rows: dict[int, int] = defaultdict(int)
    pos = {}
    for vid in sorted(versions):
        g = gen(vid)
        pos[vid] = (g, -rows[g])
        rows[g] += 1
    tall = max(rows.values())
    fig = Figure(figsize=(max(6.0, 1.9 * (max(depth.values()) + 1)), max(2.5, 0.38 * tall)))
    ax = fig.add_subplot()
    for vid, v in versions.items():
        parent = v["parent_id"]
        if parent in pos:
            (x0, y0), (x1, y1) = pos[parent], pos[vid]
            ax.plot([x0, x1], [y0, y1], color="#b0bec5", lw=0.8, zorder=1)
            how = runs.get(v["treatment_run_id"], {}).get("treatment", "")
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, how.replace("_", " "), fontsize=5, color="#546e7a",
                    ha="center", va="bottom")
    for vid, (x, y) in pos.items():
        v = versions[vid]
        ax.scatter([x], [y], s=60, color=STATUS_COLOURS.get(v["status"], "#607d8b"), zorder=2)
        ax.text(x + 0.06, y, f"{v['model']}:{v['version']}", fontsize=6, va="center")
    for status, colour in STATUS_COLOURS.items():
        ax.scatter([], [], color=colour, label=status)
    ax.legend(fontsize=6, loc="upper right")
    ax.set_axis_off()
    ax.set_title("lineage (left to right: generations)")
    return _png(fig)
