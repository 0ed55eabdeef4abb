"""The report's plots, drawn with matplotlib (Agg, no global pyplot state) into PNG bytes.

Each function takes the registry export (`registry.export.export_all`) and returns PNG bytes, or
None when there is nothing to draw: per-pathology AUROC with 95% CIs across the versions that
held `production`, the surgery K-sweeps, and the lineage graph. The paper's figures: the label
Jaccard heatmap and the polarized-channel figure (legitimacy bars beside the paper's, the Jaccard vs
channel-usage mirror) take label statistics and a channel analysis (`cxr.labelstats`,
`cxr.channels`); the per-pathology treatment recommendations and the version AUROC history take
the export.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

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


# -- the paper's figures ------------------------------------------------------------------------

CATEGORY_COLOURS = {"Perfect": "#1b5e20", "Legitimate": "#66bb6a", "Mixed": "#f9a825", "Conflict": "#c62828",
                    "Unknown": "#90a4ae"}
OUTCOME_COLOURS = {"accepted": "#2e7d32", "rejected": "#c62828", "failed": "#6d4c41", "abandoned": "#8d6e63",
                   "held": "#f9a825", "awaiting approval": "#ffb300", "not run": "#eceff1", "not applicable": "#ffffff"}


def jaccard_heatmap(stats: Any) -> bytes:
    """Pairwise Jaccard of a `cxr.labelstats.LabelStats`, annotated (the diagonal left blank)."""
    import numpy as np

    jac = np.array(stats.jaccard, dtype=float)
    np.fill_diagonal(jac, np.nan)
    n = len(stats.names)
    fig = Figure(figsize=(1.2 + 0.55 * n, 0.9 + 0.5 * n))
    ax = fig.add_subplot()
    finite = jac[np.isfinite(jac)]
    im = ax.imshow(jac, cmap="viridis", vmin=0, vmax=max(float(finite.max()) if finite.size else 1.0, 1e-6))
    for i in range(n):
        for j in range(n):
            if np.isfinite(jac[i, j]):
                ax.text(j, i, f"{jac[i, j]:.3f}".lstrip("0") if jac[i, j] < 1 else "1", ha="center", va="center",
                        fontsize=5.5, color="white" if jac[i, j] < 0.6 * np.nanmax(jac) else "black")
    ax.set_xticks(range(n), stats.names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), stats.names, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04, label="Jaccard = both / either")
    ax.set_title(f"label co-occurrence over {stats.n:,} films — {stats.source}", fontsize=9)
    return _png(fig)


def channel_figure(analysis: Any, stats: Any, *, title: str = "polarized channels") -> bytes:
    """Left: polarized-channel legitimacy bars beside the paper's. Right: the Jaccard vs channel-usage mirror —
    per pathology pair linked by a polarized channel (sorted by Jaccard), the pair's Jaccard up, the number of
    channels linking it down."""
    from cxr.channels import PAPER_COUNTS
    from cxr.labelstats import CATEGORIES, category

    fig = Figure(figsize=(12, 4.4))
    gs = fig.add_gridspec(2, 2, width_ratios=[1, 2.6], height_ratios=[1, 1], hspace=0.05, wspace=0.18)
    ax = fig.add_subplot(gs[:, 0])
    ours = [analysis.counts.get(k, 0) for k in CATEGORIES]
    total = max(sum(ours), 1)
    xs = range(len(CATEGORIES))
    ax.bar([x - 0.2 for x in xs], [100 * v / total for v in ours], width=0.4, label=f"this model ({sum(ours)})",
           color=[CATEGORY_COLOURS[k] for k in CATEGORIES])
    ax.bar([x + 0.2 for x in xs], [PAPER_COUNTS[k] for k in CATEGORIES], width=0.4, label="paper (DenseNet121, 100)",
           color="none", edgecolor="#37474f", hatch="//")
    for x, v in zip(xs, ours, strict=True):
        ax.text(x - 0.2, 100 * v / total + 1, str(v), ha="center", fontsize=7)
    ax.set_xticks(list(xs), [f"{k}\n{r}" for k, r in zip(CATEGORIES, ("J=0", "J<0.1", "J<0.3", "J≥0.3"),
                                                             strict=True)], fontsize=7)
    ax.set_ylabel("% of polarized channels")
    ax.set_title("legitimacy by label exclusivity", fontsize=9)
    ax.legend(fontsize=7)
    pairs = sorted(analysis.usage.items(), key=lambda kv: (stats.get(*kv[0]) or 0.0, -kv[1]))
    top, bottom = fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1])
    if pairs:
        js = [stats.get(a, b) or 0.0 for (a, b), _ in pairs]
        cols = [CATEGORY_COLOURS[category(stats.get(a, b))] for (a, b), _ in pairs]
        top.bar(range(len(pairs)), js, color=cols)
        for y in (0.1, 0.3):
            top.axhline(y, color="#78909c", lw=0.7, ls="--")
        bottom.bar(range(len(pairs)), [n for _, n in pairs], color="#546e7a")
        bottom.invert_yaxis()
        bottom.set_xticks(range(len(pairs)), [f"{a[:10]}–{b[:10]}" for (a, b), _ in pairs], rotation=70,
                          ha="right", fontsize=5.5)
    top.set_xticks([])
    top.set_ylabel("Jaccard", fontsize=8)
    bottom.set_ylabel("channels", fontsize=8)
    top.set_title("Jaccard of each linked pair (up) vs polarized channels using it (down)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def treatment_plot(export: dict[str, Any]) -> bytes | None:
    """Per-pathology treatment recommendations: for each decision (pathology at site, kind), the planner's
    ladder left to right, each rung coloured by what happened to it."""
    reports = {r["id"]: r for r in export["reports"]}
    runs: dict[int, dict[str, str]] = defaultdict(dict)
    for r in export["runs"]:
        runs[r["decision_id"]][r["treatment"]] = r["outcome"]
    rows = []
    for d in export["decisions"]:
        rep = reports.get(d["report_ids"][0]) if d["report_ids"] else None
        if rep is None:
            continue
        ladder = sorted(d["candidates"], key=lambda c: c["rank"])
        cells = []
        for c in ladder:
            waiting = d["status"] == "awaiting_approval" and c["treatment"] == d["chosen"]
            state = runs[d["id"]].get(c["treatment"]) or ("awaiting approval" if waiting else "not run")
            if not c["applicable"]:
                state = "not applicable"
            cells.append((c["treatment"].replace("_", " "), state))
        rows.append((f"{rep['pathology']} @ {rep['site']} ({rep['kind'].replace('_', ' ')}) #{d['id']}", cells))
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r[0])[:24]
    width = max(len(c) for _, c in rows)
    fig = Figure(figsize=(3.2 + 1.55 * width, 0.9 + 0.34 * len(rows)))
    ax = fig.add_subplot()
    for i, (_label, cells) in enumerate(rows):
        for j, (name, state) in enumerate(cells):
            ax.add_patch(Rectangle((j, i), 0.96, 0.9, facecolor=OUTCOME_COLOURS.get(state, "#cfd8dc"),
                                   edgecolor="#90a4ae", lw=0.5))
            ax.text(j + 0.48, i + 0.45, name, ha="center", va="center", fontsize=6,
                    color="white" if state in ("accepted", "rejected", "failed") else "#263238")
    ax.set_xlim(0, width)
    ax.set_ylim(len(rows), 0)
    ax.set_yticks([i + 0.45 for i in range(len(rows))], [r[0] for r in rows], fontsize=7)
    ax.set_xticks([j + 0.48 for j in range(width)], [f"{j + 1}." for j in range(width)], fontsize=7)
    ax.set_xlabel("the planner's order (cheapest expected cost ÷ p(success) first)", fontsize=8)
    for state in ("accepted", "rejected", "awaiting approval", "not run", "not applicable"):
        ax.scatter([], [], marker="s", color=OUTCOME_COLOURS[state], edgecolors="#90a4ae", label=state)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(rows)), ncol=5)
    ax.set_title("per-pathology treatment recommendations and outcomes", fontsize=9)
    return _png(fig)


def auroc_history_plot(export: dict[str, Any]) -> bytes | None:
    """AUROC (95% CI band) per pathology across the versions that held production, one panel per evaluation set;
    pathologies that had an error report in colour, the others in grey."""
    chain = production_chain(export)
    refs = {v["id"]: f"{v['model']}:{v['version']}" for v in export["versions"]}
    datasets = {d["id"]: d["name"] for d in export["datasets"]}
    reported = {r["pathology"] for r in export["reports"]}
    by_ds: dict[int, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for e in export["evaluations"]:
        if e["version_id"] in chain and e["auroc"] is not None:
            by_ds[e["dataset_id"]][e["pathology"]][e["version_id"]] = e
    if not by_ds or len(chain) < 1:
        return None
    panels = sorted(by_ds)[:4]
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    palette = matplotlib.colormaps["tab20"]
    colours = {p: palette(i % 20) for i, p in enumerate(sorted({p for d in by_ds.values() for p in d}))}
    for k, ds_id in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for p, per_version in sorted(by_ds[ds_id].items()):
            xs = [i for i, v in enumerate(chain) if v in per_version]
            es = [per_version[chain[i]] for i in xs]
            ys = [e["auroc"] for e in es]
            hot = p in reported
            ax.plot(xs, ys, marker="o", ms=3, lw=1.4 if hot else 0.7, color=colours[p] if hot else "#b0bec5",
                    label=p if hot else None, zorder=3 if hot else 1)
            moved = max(ys) - min(ys) > 0.005  # a band only where the AUROC moved: the others would hide it
            if hot and moved and all(e["auroc_lo"] is not None for e in es):
                ax.fill_between(xs, [e["auroc_lo"] for e in es], [e["auroc_hi"] for e in es], alpha=0.18,
                                color=colours[p])
        ax.set_xticks(range(len(chain)), [refs[v] for v in chain], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
        ax.set_title(datasets.get(ds_id, str(ds_id)), fontsize=9)
        if k == 0:
            ax.set_ylabel("AUROC (band: 95% DeLong CI where it moved)")
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=6, loc="lower left")
    fig.suptitle("version AUROC history (versions that held production, in order)", fontsize=10)
    return _png(fig)


def drift_plot(export: dict[str, Any]) -> bytes | None:
    """Each site's unlabelled windows over time (`decide monitor drift`): the strongest drift evidence
    (−log10 of the smallest Holm-adjusted p; the dashed line is the policy's alpha, a red marker a shifted
    window) and the share of studies outside the reference."""
    windows = [w for w in export.get("unlabelled_windows", []) if (w.get("tests") or {}).get("tested")]
    if not windows:
        return None
    import math

    fig = Figure(figsize=(8.5, 4.6))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    palette = matplotlib.colormaps["tab10"]
    sites = sorted({w["site"] for w in windows})
    starts = sorted({str(w["window_start"])[:10] for w in windows})
    for i, site in enumerate(sites):
        mine = sorted((w for w in windows if w["site"] == site), key=lambda w: str(w["window_start"]))
        xs = [starts.index(str(w["window_start"])[:10]) for w in mine]
        ys = [-math.log10(max(min(t["p_adjusted"] for t in w["tests"]["tests"]), 1e-300)) for w in mine]
        top.plot(xs, ys, color=palette(i % 10), marker="o", lw=1, label=site)
        top.scatter([x for x, w in zip(xs, mine, strict=True) if w["shifted"]],
                    [y for y, w in zip(ys, mine, strict=True) if w["shifted"]], color="#c62828", zorder=3, s=30)
        bottom.plot(xs, [(w.get("ood") or {}).get("share") or 0.0 for w in mine], color=palette(i % 10),
                    marker="o", lw=1)
    alpha = windows[0].get("alpha", 0.05)
    top.axhline(-math.log10(alpha), ls="--", color="#455a64", lw=0.8)
    top.set_ylabel("−log10 smallest adjusted p")
    top.legend(fontsize=7)
    bottom.set_ylabel("share outside\nthe reference")
    bottom.set_ylim(0, 1.02)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_xticks(range(len(starts)), starts, fontsize=7)
    fig.suptitle("unlabelled windows per site (red: shifted at the policy's alpha)", fontsize=10)
    return _png(fig)
