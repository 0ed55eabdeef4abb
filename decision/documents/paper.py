"""The paper's figures for a registry: label exclusivity, polarized channels, treatments, AUROC history.

Two users: `report.html` (the demo's, `decision/documents/registry_html.py`), which gets the channel figures
through `channel_figures(export, home)` — they need the production weights, which the export only
names by digest — and `decide analyze figures`, which writes every figure as a PNG file. The
treatment and AUROC-history figures need only the export.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cxr.channels import polarized_channels
from cxr.labelstats import nih_reference_stats
from cxr.weights import from_bytes
from decision.documents.plots import auroc_history_plot, channel_figure, jaccard_heatmap, treatment_plot

log = logging.getLogger(__name__)


def production_versions(export: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each distinct version holding a `production` alias, labelled with where it serves (all sites first)."""
    versions = {v["id"]: v for v in export["versions"]}
    held: dict[int, list[str]] = {}
    aliases = sorted((a for a in export.get("aliases", []) if a["alias"] == "production"),
                     key=lambda a: (a.get("site", "") != "", a.get("site", "")))
    for a in aliases:
        held.setdefault(a["version_id"], []).append(f"production@{a['site']}" if a.get("site") else "production")
    return [(f"{versions[vid]['model']}:{versions[vid]['version']} ({', '.join(where)})", versions[vid])
            for vid, where in held.items() if vid in versions]


def channel_figures(export: dict[str, Any], home: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    """The Jaccard heatmap of the reference labels, then one polarized-channel figure per production version.

    Returns (caption, PNG, data) triples; a version whose blob cannot be read is skipped with a warning.
    """
    from registry import blobs

    stats = nih_reference_stats()
    out: list[tuple[str, bytes, dict[str, Any]]] = [
        (f"Pairwise Jaccard of the labels in {stats.source} ({stats.n:,} films)", jaccard_heatmap(stats),
         {"source": stats.source})]
    for label, v in production_versions(export):
        try:
            w = from_bytes(blobs.get_bytes(v["weights_digest"], home), source=label)
        except Exception as exc:  # the report must not fail for one figure
            log.warning("channel figure for %s skipped: %s", label, exc)
            continue
        an = polarized_channels(w.state["classifier.weight"].numpy(), w.spec.pathologies, stats)
        caption = (f"{label}: {sum(an.counts.values())} most polarized classifier channels — "
                   + ", ".join(f"{k} {n}" for k, n in an.counts.items()) + " (the paper: 48 / 41 / 11 / 0)")
        out.append((caption, channel_figure(an, stats, title=label), {"version": label, "counts": an.counts}))
    return out


def paper_figures(out_dir: Path, version: str = "cxr@production") -> dict[str, Path]:
    """Write jaccard.png, channels.png, treatments.png and auroc-history.png (those with something to draw)."""
    from cxr.files import atomic_write
    from decision.scoring import load_version
    from registry.export import export_all
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        export = export_all(s)
    loaded = load_version(version)
    stats = nih_reference_stats()
    an = polarized_channels(loaded.weights.state["classifier.weight"].numpy(), loaded.weights.spec.pathologies, stats)
    pngs = {"jaccard": jaccard_heatmap(stats),
            "channels": channel_figure(an, stats, title=f"{loaded.ref}: polarized channels"),
            "treatments": treatment_plot(export), "auroc-history": auroc_history_plot(export)}
    written = {}
    for name, png in pngs.items():
        if png is not None:
            written[name] = Path(out_dir) / f"{name}.png"
            atomic_write(written[name], png)
    return written
