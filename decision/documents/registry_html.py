"""A self-contained HTML report of the registry, for people who will not run a command line.

One file, no network: the plots are PNGs embedded as data URIs (matplotlib, see
`decision/documents/plots.py`), the tables are plain HTML, every value from the data is escaped.
A small inline script checks, once the page has loaded, that every plot image decoded
(`data-loaded-width` on each image, a summary in `#image-check`), so a headless browser can prove
the plots show.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from cxr.files import atomic_write
from decision.documents.forest import subgroup_forests
from decision.documents.plots import (
    auroc_history_plot,
    auroc_plots,
    drift_plot,
    ksweep_plot,
    lineage_plot,
    production_chain,
    treatment_plot,
)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#263238}
h1{margin-bottom:0}h2{border-bottom:1px solid #cfd8dc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
td,th{border:1px solid #cfd8dc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eceff1}.ok{color:#2e7d32}.bad{color:#c62828}.muted{color:#78909c}
img{max-width:100%;border:1px solid #eceff1}.up{color:#2e7d32}.down{color:#c62828}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (im) {
    im.setAttribute('data-loaded-width', String(im.naturalWidth));
    if (im.complete && im.naturalWidth > 0) { ok += 1; }
  });
  var out = document.getElementById('image-check');
  out.textContent = ok + '/' + imgs.length + ' images loaded';
  out.setAttribute('data-ok', String(ok)); out.setAttribute('data-total', String(imgs.length));
});
"""


def _e(x: Any) -> str:
    return html.escape("—" if x is None else str(x))


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _img(png: bytes, alt: str, ident: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img class="plot" id="{_e(ident)}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "—"
    d = b - a
    cls = "up" if d > 1e-9 else "down" if d < -1e-9 else "muted"
    return f'<span class="{cls}">{d:+.3f}</span>'


def _versions_section(export: dict[str, Any]) -> str:
    evals: dict[tuple[int, int, str], dict] = {(e["version_id"], e["dataset_id"], e["pathology"]): e
                                               for e in export["evaluations"]}
    datasets = {d["id"]: d["name"] for d in export["datasets"]}
    versions = {v["id"]: v for v in export["versions"]}
    parts = []
    for vid in production_chain(export):
        v = versions[vid]
        parent = versions.get(v["parent_id"])
        title = f"{v['model']}:{v['version']}" + (f" (parent {parent['model']}:{parent['version']})" if parent else "")
        parts.append(f"<h3>{_e(title)} — {_e(v['status'])}</h3><p class='muted'>{_e(v['notes'])}</p>")
        for ds_id in sorted({k[1] for k in evals if k[0] == vid}):
            rows = []
            for p in v["pathologies"]:
                e = evals.get((vid, ds_id, p))
                if e is None or e["auroc"] is None:
                    continue
                pe = evals.get((parent["id"], ds_id, p)) if parent else None
                rows.append([_e(p), f"{_f(e['auroc'])} [{_f(e['auroc_lo'])}, {_f(e['auroc_hi'])}]",
                             _delta(pe["auroc"], e["auroc"]) if pe else "—", _f(e["sensitivity"]),
                             _delta(pe["sensitivity"], e["sensitivity"]) if pe else "—", _f(e["specificity"]),
                             _delta(pe["specificity"], e["specificity"]) if pe else "—", _f(e["ppv"]),
                             _f(e["threshold"], 4), f"{e['n_pos']}/{e['n_neg']}"])
            parts.append(f"<p><b>{_e(datasets.get(ds_id, ds_id))}</b></p>" + _table(
                ["pathology", "AUROC [95% CI]", "Δ vs parent", "sensitivity", "Δ", "specificity", "Δ", "PPV",
                 "threshold", "pos/neg"], rows))
    return "".join(parts)


def _decisions_section(export: dict[str, Any]) -> str:
    runs_by_decision: dict[int, list[dict]] = {}
    for r in export["runs"]:
        runs_by_decision.setdefault(r["decision_id"], []).append(r)
    parts = []
    for d in export["decisions"]:
        cand = [[_e(c["rank"]), _e(c["treatment"]), "yes" if c["applicable"] else "no", _f(c["expected_cost"], 2),
                 _f(c["p_success"], 2), _f(c["score"], 2), "needed" if c["needs_approval"] else "",
                 "" if c["applicable"] else _e(c["reason"])] for c in d["candidates"]]
        runs = [[_e(r["treatment"]), _e(r["outcome"]), _f(r["wall_seconds"], 3), _e(r["trainable_parameters"]),
                 _e(r["output_version_id"]), _e((r.get("metrics") or {}).get("gate", {}).get("summary")
                                               or r["error_text"])] for r in runs_by_decision.get(d["id"], [])]
        parts.append(
            f"<h3>decision {d['id']} (reports {_e(', '.join(map(str, d['report_ids'])))}): {_e(d['status'])}</h3>"
            f"<p>{_e(d['rationale'])}</p>"
            + _table(["#", "treatment", "applicable", "expected cost", "p(success)", "cost/p", "approval", "reason"],
                     cand)
            + (_table(["run", "outcome", "wall s", "trainable", "output version", "gate / error"], runs)
               if runs else ""))
    return "".join(parts)


def write_report(export: dict[str, Any], out_path: Path, *, title: str = "cxr-decide report",
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the report for `export` to `out_path` and return it.

    `extra` may hold `timings` (name → seconds), `acceptance` (the demo's final checks),
    `summary_lines` (free text lines shown under the title), `case_figures` ((caption, PNG)
    pairs: Grad-CAM grids of a report's cases, from `decision.documents.case_maps`) and `channel_figures`
    ((caption, PNG, …) tuples: label exclusivity and polarized channels, from
    `decision.documents.paper.channel_figures`).
    """
    extra = extra or {}
    audit = export.get("audit_verification") or {}
    prod = ", ".join(f"{a['model']}:{a['version']}" for a in export.get("aliases", []) if a["alias"] == "production")
    head = [f"<h1>{_e(title)}</h1>",
            f"<p>production: {_e(prod or 'none')} · "
            f"{len(export['versions'])} versions · {len(export['reports'])} reports · "
            f"{len(export['decisions'])} decisions · {len(export['runs'])} treatment runs · audit chain "
            + (f"<span class='ok'>intact ({audit.get('checked')} events)</span>" if audit.get("ok")
               else f"<span class='bad'>broken: {_e(audit.get('reason'))}</span>") + "</p>",
            "<p id='image-check' class='muted'>images not checked yet</p>"]
    head += [f"<p>{_e(line)}</p>" for line in extra.get("summary_lines", [])]
    if extra.get("timings"):
        head.append("<p class='muted'>" + " · ".join(f"{_e(k)} {v}" for k, v in extra["timings"].items()) + "</p>")
    if extra.get("acceptance"):
        head.append("<details><summary>final checks</summary><pre>"
                    + _e(json.dumps(extra["acceptance"], indent=1, default=str)) + "</pre></details>")
    body = ["<h2>Per-pathology AUROC across versions</h2>"]
    plots = auroc_plots(export)
    body += [_img(png, f"AUROC per pathology on {name}", f"auroc-{i}") for i, (name, png) in enumerate(plots)]
    if not plots:
        body.append("<p class='muted'>no evaluations yet</p>")
    history = auroc_history_plot(export)
    body.append("<h2>Version AUROC history</h2>" + (_img(history, "AUROC history across versions", "auroc-history")
                                                    if history else "<p class='muted'>no evaluations yet</p>"))
    treatments = treatment_plot(export)
    body.append("<h2>Per-pathology treatment recommendations</h2><p class='muted'>For each decision, the planner's "
                "ladder (cheapest expected cost ÷ p(success) first) and what became of each rung.</p>"
                + (_img(treatments, "treatment recommendations per pathology", "treatments") if treatments
                   else "<p class='muted'>no decision yet</p>"))
    if extra.get("channel_figures") is not None:
        body.append("<h2>Label exclusivity and polarized channels</h2><p class='muted'>Channels that vote for one "
                    "pathology and against another, classified by the pair's Jaccard in NIH's labels: Perfect "
                    "(J = 0), Legitimate (J &lt; 0.1), Mixed (J &lt; 0.3), Conflict (J ≥ 0.3). Mostly exclusive "
                    "pairs means bipolar axes, not confusion.</p>")
        figs = extra["channel_figures"]
        body += [f"<figure>{_img(fig[1], fig[0], f'channels-{i}')}<figcaption>{_e(fig[0])}</figcaption></figure>"
                 for i, fig in enumerate(figs)]
        if not figs:
            body.append("<p class='muted'>no production version to analyse</p>")
    body.append("<h2>Surgery K-sweep</h2>")
    sweep = ksweep_plot(export)
    body.append(_img(sweep, "surgery K-sweep", "k-sweep") if sweep else
                "<p class='muted'>no surgical correction has recorded a K-sweep yet</p>")
    if extra.get("case_figures") is not None:
        body.append("<h2>Case evidence: Grad-CAM of the worst false positives</h2>"
                    "<p class='muted'>Where the model looks on the films a report named, under each version; "
                    "a fix that only moves the threshold leaves the map alone.</p>")
        figs = extra["case_figures"]
        body += [f"<figure>{_img(png, caption, f'cases-{i}')}<figcaption>{_e(caption)}</figcaption></figure>"
                 for i, (caption, png) in enumerate(figs)]
        if not figs:
            body.append("<p class='muted'>no report with case evidence whose films are registered</p>")
    forests = subgroup_forests(export)  # one per promoted candidate evaluated per subgroup
    body.append("<h2>Per-subgroup change vs parent</h2><p class='muted'>Each promoted candidate's report pathology "
                "at its site, per group: ΔAUROC and Δrecall vs its parent with 95% intervals; hollow grey: too "
                "small to judge. `decide record VERSION` writes the whole change record.</p>"
                + ("".join(f"<figure>{_img(png, cap, f'forest-{i}')}<figcaption>{_e(cap)}</figcaption></figure>"
                           for i, (cap, png) in enumerate(forests)) or
                   "<p class='muted'>no promoted candidate evaluated per subgroup</p>"))
    body.append("<h2>Monitoring without labels</h2>" + _label_free_section(export))
    body.append("<h2>Lineage</h2>")
    lineage = lineage_plot(export)
    body.append(_img(lineage, "lineage graph", "lineage") if lineage else "<p class='muted'>no versions</p>")
    body.append("<h2>Error reports</h2>" + _table(
        ["id", "version", "site", "pathology", "kind", "measured", "target", "window", "status"],
        [[_e(r["id"]), f"{_e(r['model'])}:{_e(r['version'])}", _e(r["site"]), _e(r["pathology"]), _e(r["kind"]),
          f"{_e(r['metric'])} {_f(r['value'])}", _f(r["target"]), _e(str(r["window_start"])[:10]), _e(r["status"])]
         for r in export["reports"]]))
    body.append("<h2>Decisions</h2>" + (_decisions_section(export) or "<p class='muted'>none</p>"))
    body.append("<h2>Versions that held production, with metric deltas</h2>" + _versions_section(export))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(head)}{''.join(body)}<script>{SCRIPT}</script></body></html>")
    out = Path(out_path)
    atomic_write(out, page.encode("utf-8"))
    return out


def _label_free_section(export: dict[str, Any]) -> str:
    """Each site's unlabelled windows (drift evidence, OOD share, the report filed) and, where labels came,
    each label-free estimate against what was realised."""
    windows = export.get("unlabelled_windows", [])
    if not windows:
        return "<p class='muted'>no unlabelled window judged yet (`decide monitor run --unlabelled`)</p>"
    plot = drift_plot(export)
    out = [_img(plot, "unlabelled windows per site", "drift") if plot else ""]
    out.append(_table(["window", "site", "studies", "shift", "summary", "outside the reference", "report",
                       "labels vs estimate"],
                      [[_e(str(w["window_start"])[:10]), _e(w["site"]), _e(w["n_studies"]),
                        "<span class='bad'>shifted</span>" if w["shifted"] else "no",
                        _e((w.get("tests") or {}).get("summary", ""))[:300], _f((w.get("ood") or {}).get("share")),
                        _e(w.get("report_id") or ""), _e((w.get("realised") or {}).get("summary", "no labels yet"))]
                       for w in windows]))
    rows = []
    for w in windows:
        for name, r in ((w.get("realised") or {}).get("pathologies") or {}).items():
            for m in ("recall", "fpr"):
                if r.get(m):
                    ci = r[m]["realised_ci"]
                    rows.append([_e(str(w["window_start"])[:10]), _e(w["site"]), _e(name), m, _f(r[m]["estimate"]),
                                 f"{_f(r[m]['realised'])} [{_f(ci[0])}, {_f(ci[1])}]", _f(r[m]["error"]),
                                 "<span class='bad'>contradicted</span>" if r["contradicted"] else "agrees"])
    if rows:
        out.append("<p class='muted'>Label-free estimates (made before the labels) against the labels that came "
                   "later: realised value with its 95% Clopper–Pearson interval; Holm over each window's "
                   "pathologies decides whether the labels contradict the estimate.</p>")
        out.append(_table(["window", "site", "pathology", "metric", "estimate", "realised [95%]", "error", "verdict"],
                          rows))
    return "".join(out)
