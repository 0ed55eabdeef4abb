"""The per-study clinical report as HTML: one self-contained page per study, plus an index for a batch.

Images are inline PNG data URIs (nothing to fetch: the page can be mailed, archived, opened on a
ward phone). The layout is one column that fits a phone's width, wide tables scroll inside their
own box, and print rules keep each finding on one page and drop the on-screen checks. Every value
from data is escaped. Like `report.html`, each page carries a small script that records whether
every image decoded (`#image-check`), which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.files import atomic_write
from decision.documents.clinical import DISCLAIMER, UNIFORM_BORDER_MASS, FindingView, StudyView, VersionView
from decision.documents.registry_html import SCRIPT
from decision.scoring import pct

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1em;max-width:900px;
color:#263238;font-size:16px;line-height:1.45}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.15em;border-bottom:1px solid #cfd8dc;margin-top:1.6em}
h3{font-size:1.05em;margin:.2em 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:.4em 0;min-width:60%}
td,th{border:1px solid #cfd8dc;padding:.25em .45em;text-align:left;vertical-align:top}th{background:#eceff1}
img{max-width:100%;height:auto;border:1px solid #eceff1}
.finding{border:1px solid #cfd8dc;border-radius:6px;padding:.6em;margin:.8em 0;display:flex;flex-wrap:wrap;gap:1em}
.finding figure{margin:0;flex:0 1 340px}.finding .facts{flex:1 1 260px;min-width:0}
.pos{color:#c62828;font-weight:600}.down{color:#ef6c00;font-weight:600}.muted{color:#78909c}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:.4em .6em;margin:.4em 0}
.ood{background:#ffebee;border:2px solid #c62828;border-radius:6px;padding:.6em .8em;margin:.6em 0}
.ood h2{border:0;margin:.1em 0;color:#b71c1c}.ood ul{margin:.3em 0}
.disclaimer{background:#eceff1;border-left:4px solid #546e7a;padding:.6em;margin-top:1.5em}
footer{margin-top:2em;font-size:.9em}
@media print{body{max-width:none;font-size:11pt}.finding,figure,table,.disclaimer{break-inside:avoid}
#image-check,.noprint{display:none}a{color:inherit;text-decoration:none}}
"""


def _e(x: Any) -> str:
    return html.escape("—" if x is None else str(x))


def _img(png: bytes, alt: str, ident: str) -> str:
    return (f'<img class="plot" id="{_e(ident)}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _page(title: str, body: str) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}"
            f"<script>{SCRIPT}</script></body></html>")


def _channels(f: FindingView) -> str:
    if not f.channels:
        return "<p class='muted'>no channel adds to this logit</p>"
    rows = []
    for c in f.channels:
        pol = c.get("polarized")
        if pol:
            j = "—" if pol["jaccard"] is None else f"{pol['jaccard']:.4f}"
            against = (f"polarized: for {_e(pol['for'])}, against {_e(pol['against'])} "
                       f"(J = {_e(j)}, {_e(pol['category'])})")
        else:
            against = "<span class='muted'>not among the most polarized</span>"
        share = "—" if c["share"] is None else f"{c['share']:.0%}"
        rows.append([_e(c["channel"]), f"{c['contribution']:+.3f}", share, against])
    return _table(["channel", "adds to the logit", "share", "also"], rows)


def _finding(f: FindingView, k: int, version: VersionView) -> str:
    call = ("<span class='down'>positive, down-weighted</span>" if f.call == "down-weighted"
            else "<span class='pos'>positive</span>")
    facts = [f"<h3>{_e(f.pathology)}: {call}</h3>",
             f"<p>probability <b>{_p(f.probability)}</b> against the operating point {_p(f.threshold)} of "
             f"{_e(version.ref)} (odds {f.odds_ratio:.1f}× the operating point's)</p>"]
    if f.region is not None:
        facts.append(f"<p>region: <b>{_e(f.region.name)}</b> <span class='muted'>(map peak at x = "
                     f"{f.region.x:.2f}, y = {f.region.y:.2f}; {f.region.border_mass:.0%} of the map on the film "
                     f"border, {UNIFORM_BORDER_MASS:.0%} for a uniform map)</span></p>")
    if f.probability_border_masked is not None:
        facts.append(f"<p>shortcut check: with the film's border masked out the probability is "
                     f"<b>{_p(f.probability_border_masked)}</b> (operating point {_p(f.threshold)})</p>")
    if f.exclusion:
        x = f.exclusion
        facts.append(f"<p class='warn'>down-weighted: {_e(x['because'])} is far more certain "
                     f"(odds {x['because_odds_ratio_over_threshold']:.1f}× its operating point vs "
                     f"{x['odds_ratio_over_threshold']:.1f}×) and the two labels are mutually exclusive "
                     f"(Jaccard {x['jaccard']:.4f}); this finding is kept because its own call is not marginal.</p>")
    facts += [f"<p class='warn'>⚠ {_e(w)}</p>" for w in f.warnings]
    facts.append("<p>classifier channels adding most to this finding:</p>" + _channels(f))
    fig = (f"<figure>{_img(f.overlay_png, f'Grad-CAM of {f.pathology}', f'overlay-{k}')}"
           f"<figcaption class='muted'>Grad-CAM: where the {_e(f.pathology)} score comes from</figcaption></figure>"
           if f.overlay_png else "")
    return f"<div class='finding'>{fig}<div class='facts'>{''.join(facts)}</div></div>"


def _footer(v: VersionView) -> str:
    rows = [[_e(e["dataset"]), _e(e["pathology"]),
             "—" if e["auroc"] is None else f"{e['auroc']:.3f} [{_p(e['auroc_lo'])}, {_p(e['auroc_hi'])}]",
             _p(e["sensitivity"]), _p(e["specificity"]), _p(e["threshold"]), f"{e['n_pos']}/{e['n_neg']}"]
            for e in v.evaluations]
    evals = (_table(["evaluation set", "pathology", "AUROC [95% CI]", "sensitivity", "specificity", "threshold",
                     "pos/neg"], rows) if rows else "<p class='muted'>no evaluation is recorded for this version</p>")
    lineage = "".join(f"<li>{_e(step)}</li>" for step in v.lineage)
    return (f"<footer><h2>Model</h2><p><b>{_e(v.ref)}</b>" + (f" at site {_e(v.site)}" if v.site else "")
            + f" · {v.parameter_count:,} parameters · registered {_e(v.created_at)}</p>"
            + (f"<p class='muted'>{_e(v.notes)}</p>" if v.notes else "")
            + f"<p>lineage (newest first):</p><ol>{lineage}</ol>"
            + f"<details><summary>evaluation of {_e(v.ref)} with 95% DeLong intervals</summary>{evals}</details>"
            + f"<p class='muted'>exclusion rule: {_e(v.rule)} Reference label statistics: {_e(v.reference)}.</p>"
            + f"<p class='disclaimer' id='disclaimer'>{_e(DISCLAIMER)}</p></footer>")


def _ood(study: StudyView, version: VersionView) -> str:
    """The top of the page, before any finding: a banner when the study lies outside what the version was
    validated on (its findings withheld, or shown but possibly meaningless), else one line saying what was
    checked, or that nothing could be."""
    v = study.ood
    if v is None:
        return ""
    note = f"<p class='muted'>{_e(v.note)}</p>" if v.note else ""
    if not v.outside:
        if not v.checked:
            return f"<p class='muted' id='ood-note'>Not checked against what {_e(version.ref)} was validated on.</p>" \
                + note
        a = v.assessment
        return (f"<p class='muted' id='ood-note'>Within what {_e(version.ref)} was validated on: feature distance "
                f"{a.distance:.3g} ≤ cut-off {a.cutoff:.3g} at a {pct(a.rate)} per-study false-alarm rate.</p>" + note)
    reasons = "".join(f"<li>{_e(r)}</li>" for r in v.plain_reasons())
    if study.withheld:
        header = set(v.assessment.flags) & {"not_radiograph", "not_chest", "not_frontal"}
        why = ("the model was validated on frontal chest radiographs, and the DICOM header does not say this study "
               "is one" if header else "the input is degenerate: whatever the model outputs for it says nothing "
               "about the patient")
        then = f"<p><b>No finding is shown</b>: {why}.</p>"
    else:
        then = "<p><b>The findings below may be meaningless.</b></p>"
    rate = (f"<p class='muted'>Films like those {_e(v.reference)} was calibrated on are flagged by its distance "
            f"checks at most {pct(v.assessment.rate)} of the time.</p>" if v.checked else "")
    return (f"<section class='ood' id='ood-banner' role='alert'><h2>Caution: outside the model's validation</h2>"
            f"<p>This film lies outside what {_e(version.ref)} was validated on:</p><ul>{reasons}</ul>"
            f"{then}{rate}{note}</section>")


def study_page(study: StudyView, version: VersionView, *, index_href: str | None = None) -> str:
    """One study as a complete HTML page: the OOD banner first, then the film, the findings and the footer."""
    head = [f"<p class='noprint'><a href='{_e(index_href)}'>← all studies</a></p>" if index_href else "",
            f"<h1>Study {_e(study.study_id)}</h1>",
            f"<p class='muted'>{_e(study.source)} · {_e(study.film)} · scored by {_e(version.ref)}"
            + (f" at {_e(version.site)}" if version.site else "") + f" · Grad-CAM at {_e(study.layer)}</p>",
            _ood(study, version),
            "<p id='image-check' class='muted'>images not checked yet</p>",
            f"<figure>{_img(study.image_png, 'the film', 'film')}<figcaption class='muted'>the film as read "
            "(center crop)</figcaption></figure>"]
    if study.withheld:
        return _page(f"Study {study.study_id} — {version.ref}", "".join(head) + _footer(version))
    body = ["<h2>Findings</h2>"]
    if study.findings:
        body += [_finding(f, k, version) for k, f in enumerate(study.findings)]
    else:
        body.append("<p>No finding reaches its operating point.</p>")
    body.append("<h2>Excluded: a mutually exclusive finding is far more certain</h2>")
    if study.excluded:
        rows = []
        for f in study.excluded:
            x = f.exclusion or {}
            rows.append([_e(f.pathology), _p(f.probability), _p(f.threshold), _e(x.get("because")),
                         f"{x['jaccard']:.4f}", f"{x['odds_ratio_over_threshold']:.1f} vs "
                         f"{x['because_odds_ratio_over_threshold']:.1f}"])
        body.append(_table(["finding", "probability", "operating point", "excluded because", "Jaccard",
                            "odds over operating point: this vs the other"], rows))
    else:
        body.append("<p class='muted'>none</p>")
    body.append(f"<p class='muted'>{_e(version.rule)}</p>")
    body.append("<h2>All other pathologies</h2>" + _table(["pathology", "probability", "operating point", "call"], [
        [_e(f.pathology), _p(f.probability), _p(f.threshold), _e(f.call)] for f in study.others]))
    return _page(f"Study {study.study_id} — {version.ref}", "".join(head) + "".join(body) + _footer(version))


def _slug(text: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return safe.strip("._")[:80] or "study"


def write_study(study: StudyView, version: VersionView, out: Path) -> Path:
    """Write one study's page to `out`."""
    atomic_write(Path(out), study_page(study, version).encode("utf-8"))
    return Path(out)


def write_batch(studies: Sequence[StudyView], version: VersionView, out_dir: Path, *, title: str,
                failures: Sequence[tuple[str, str]] = ()) -> tuple[Path, list[Path]]:
    """One page per study plus `index.html` (a table: study, positive findings, warnings). Returns (index, pages)."""
    out_dir = Path(out_dir)
    pages, rows, used = [], [], set()
    for s in studies:
        name = _slug(s.study_id)
        while f"{name}.html" in used:
            name += "_"
        used.add(f"{name}.html")
        page = out_dir / f"{name}.html"
        atomic_write(page, study_page(s, version, index_href="index.html").encode("utf-8"))
        pages.append(page)
        calls = ", ".join(f"{f.pathology} {f.probability:.2f}" + (" (down-weighted)" if f.call == "down-weighted"
                                                                   else "") for f in s.findings) or "none"
        outside = "—" if s.ood is None else ("not checked" if not s.ood.outside and not s.ood.checked else
                                             "; ".join(s.ood.short_reasons()) or "no")
        rows.append([f"<a href='{_e(page.name)}'>{_e(s.study_id)}</a>", _e(s.withheld or calls), _e(outside),
                     _e(", ".join(f.pathology for f in s.excluded) or "—"), _e(len(s.warnings) or "—")])
    body = [f"<h1>{_e(title)}</h1>", f"<p class='muted'>{len(studies)} studies scored by {_e(version.ref)}"
            + (f" at {_e(version.site)}" if version.site else "") + "</p>",
            "<p id='image-check' class='muted'>images not checked yet</p>",
            _table(["study", "positive findings", f"outside what {version.ref} was validated on", "excluded",
                    "warnings"], rows)]
    if failures:
        body.append("<h2>Not read</h2>" + _table(["file", "reason"], [[_e(f), _e(r)] for f, r in failures]))
    body.append(f"<p class='disclaimer' id='disclaimer'>{_e(DISCLAIMER)}</p>")
    index = out_dir / "index.html"
    atomic_write(index, _page(title, "".join(body)).encode("utf-8"))
    return index, pages
