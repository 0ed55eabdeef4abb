"""Per-subgroup forest plots: how a promoted version changed each group of patients against its parent.

One figure per evaluation set and target pathology, one row per group (sex, age band, view, site and
the declared intersections), two panels: the AUROC difference vs the parent with its interval from the
paired DeLong standard error, and the recall difference at the operating points from the discordant
positives (`decision.documents.change_record` says how each interval is made). A dashed line marks the
subgroup margin −m on the AUROC panel. Groups too small to judge are drawn hollow and grey, never
dropped. Drawn with matplotlib's Agg canvas into PNG bytes; matplotlib is imported only when a figure is
drawn, so that importing this module stays light.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from decision.documents.change_record import promoted_version_ids, subgroup_deltas

__all__ = ["forest_png", "record_forests", "subgroup_forests"]

_OK, _SMALL = "#263238", "#90a4ae"


def _label(r: dict[str, Any]) -> str:
    return f"{r['attribute']} = {r['group']} ({r['n_pos']}+)"


def forest_png(rows: Sequence[dict[str, Any]], title: str, *, level: float = 0.95) -> bytes | None:
    """A forest plot of `rows` (`change_record.subgroup_deltas` rows of one set and pathology) as PNG bytes;
    None when no row has a paired comparison with the parent to draw."""
    rows = [r for r in rows if r.get("delta_auroc") is not None or r.get("delta_recall") is not None]
    if not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 1.2 + 0.32 * len(rows)))
    ax_auc, ax_rec = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ys = list(range(len(rows)))[::-1]
    for ax, key, name in ((ax_auc, "delta_auroc", "ΔAUROC vs parent"), (ax_rec, "delta_recall", "Δrecall vs parent")):
        for y, r in zip(ys, rows, strict=True):
            d = r.get(key)
            if d is None:
                continue
            lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
            colour = _OK if r["judgeable"] else _SMALL
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y, y], color=colour, lw=1.4)
            ax.plot([d], [y], marker="s" if r["judgeable"] else "o", ms=5, color=colour,
                    markerfacecolor=colour if r["judgeable"] else "white")
        ax.axvline(0.0, color="#546e7a", lw=0.8)
        ax.set_xlabel(f"{name} ({level:.0%} interval)", fontsize=8)
        ax.set_yticks(ys, [_label(r) for r in rows] if ax is ax_auc else [""] * len(rows), fontsize=7)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    margin = next((r["margin"] for r in rows if r.get("margin") is not None), None)
    if margin is not None:
        ax_auc.axvline(-margin, color="#c62828", lw=0.8, ls="--", label=f"−margin {margin:.3f}")
        ax_auc.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _by_set(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["pathology"]), []).append(r)
    return out


def record_forests(record: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(caption, PNG) per evaluation set and target pathology of a change record (`change_record.change_record`)."""
    ver = record["verification"]
    parent = record["impact"]["parent"]
    out = []
    for (dataset, pathology), rows in _by_set(ver["subgroups"]).items():
        caption = f"{record['version']['ref']} vs {parent}: {pathology} per subgroup on {dataset}"
        png = forest_png(rows, caption, level=ver["level"])
        if png is not None:
            out.append((caption, png))
    return out


def subgroup_forests(export: dict[str, Any]) -> list[tuple[str, bytes]]:
    """For the demo's report: (caption, PNG) per promoted candidate evaluated per subgroup, on the evaluation
    set(s) of its report's site (all sets when none is the site's), its report's pathologies."""
    versions = {v["id"]: v for v in export["versions"]}
    datasets = {d["name"]: (d.get("source") or {}).get("site") or "" for d in export["datasets"]}
    decisions = {d["id"]: d for d in export["decisions"]}
    reports = {r["id"]: r for r in export["reports"]}
    out = []
    for vid in promoted_version_ids(export):
        v = versions[vid]
        parent = versions.get(v["parent_id"]) if v.get("parent_id") is not None else None
        rows = subgroup_deltas(export, vid)
        if parent is None or not rows:
            continue
        d = decisions.get(v.get("decision_id"))
        sites = {reports[i]["site"] for i in (d or {}).get("report_ids", []) if i in reports}
        here = [r for r in rows if datasets.get(r["dataset"]) in sites] or rows
        for (dataset, pathology), group_rows in _by_set(here).items():
            caption = (f"{v['model']}:{v['version']} vs {parent['model']}:{parent['version']}: {pathology} per "
                       f"subgroup on {dataset}")
            png = forest_png(group_rows, caption)
            if png is not None:
                out.append((caption, png))
    return out
