"""The change record as one self-contained HTML page (`decide record VERSION --out FILE`).

The record's content is `decision.documents.change_record.change_record` (plain JSON values); this module only
lays it out, section by section in the record's order: trigger, change, protocol, verification (overall, per
subgroup with the forest plots), approvals, impact vs the parent and vs the authorised baseline,
sequestration, version control and the audit events with their hashes. As in the clinical report
(`clinical_html`): nothing to fetch (plots are PNG data URIs), one column that prints, every value from the
data escaped, and the load script of `report.html` that records whether every image decoded
(`#image-check`), which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.files import atomic_write
from decision.documents.forest import record_forests
from decision.documents.registry_html import SCRIPT

__all__ = ["record_page", "write_record"]

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;padding:1em;max-width:1000px;
color:#263238;font-size:15px;line-height:1.45}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;border-bottom:1px solid #cfd8dc;margin-top:1.6em}
h3{font-size:1.02em;margin:.8em 0 .2em}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.82em;margin:.4em 0}
td,th{border:1px solid #cfd8dc;padding:.2em .45em;text-align:left;vertical-align:top}th{background:#eceff1}
img{max-width:100%;height:auto;border:1px solid #eceff1}code{font-size:.85em;word-break:break-all}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}.muted{color:#78909c}
.note{background:#eceff1;border-left:4px solid #546e7a;padding:.4em .6em;margin:.4em 0}
@media print{body{max-width:none;font-size:10pt}table,figure{break-inside:avoid}#image-check{display:none}}
"""


def _e(x: Any) -> str:
    return html.escape("—" if x is None else str(x))


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _d(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def _ci(x: float | None, lo: float | None, hi: float | None, signed: bool = False) -> str:
    fmt = _d if signed else _f
    return "—" if x is None else f"{fmt(x)} [{fmt(lo)}, {fmt(hi)}]"


def _img(png: bytes, alt: str, ident: str) -> str:
    return (f'<img class="plot" id="{_e(ident)}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _verdict(passed: bool | None, binding: bool | None = True) -> str:
    if passed is None:
        return "—"
    word = "<span class='ok'>passed</span>" if passed else "<span class='bad'>failed</span>"
    return word + ("" if binding or binding is None else " <span class='muted'>(not binding)</span>")


def _checks(checks: Sequence[dict[str, Any]]) -> str:
    return _table(["check", "verdict", "value", "limit", "detail"],
                  [[_e(c["name"]), _verdict(c["passed"], c.get("binding")), _f(c.get("value"), 4),
                    _f(c.get("limit"), 4), _e(c.get("detail"))] for c in checks])


def _kv(d: dict[str, Any] | None) -> str:
    if not d:
        return "<p class='muted'>none</p>"
    return _table(["field", "value"], [[_e(k), f"<code>{_e(json.dumps(v) if isinstance(v, dict | list) else v)}"
                                       "</code>"] for k, v in d.items()])


def _trigger(r: dict[str, Any]) -> str:
    t = r["trigger"]
    rows = [[_e(x["id"]), _e(x["site"]), _e(x["pathology"]) + (f" <span class='muted'>({_e(x['subgroup'])})</span>"
                                                                if x.get("subgroup") else ""),
             _e(x["kind"]), f"{_e(x['metric'])} {_f(x['value'])}", _f(x["target"]),
             f"{_e(str(x['window_start'])[:10])} → {_e(str(x['window_end'])[:10])}", _e(x.get("source"))]
            for x in t["reports"]]
    return ("<h2 id='trigger'>What triggered it</h2>"
            + (_table(["report", "site", "pathology", "kind", "measured", "target", "window", "source"], rows)
               if rows else "<p>No error report: the version was registered and promoted by a person.</p>")
            + (f"<p>decision {_e(t['decision_id'])}: {_e(t['rationale'])}</p>" if t["decision_id"] is not None else ""))


def _change(r: dict[str, Any]) -> str:
    c = r["change"]
    touched = c["tensors_touched"]
    if touched is None:
        tensors = "tensors touched: not recorded (no parent, or no per-tensor digests)"
    elif not touched:
        tensors = f"tensors touched: none of {c['tensors_total']} (the weights are the parent's)"
    else:
        shown = ", ".join(touched[:40]) + (f" and {len(touched) - 40} more" if len(touched) > 40 else "")
        tensors = f"tensors touched: {len(touched)} of {c['tensors_total']}: {shown}"
    ops = [[_e("all sites" if o["site"] == "*" else o["site"]), _e(o["pathology"]), _f(o["before"], 4),
            _f(o["after"], 4)] for o in c["operating_points"]]
    return ("<h2 id='change'>What changed</h2>"
            f"<p>treatment <b>{_e(c['treatment'] or 'none (registration)')}</b>"
            + (f" (run {_e(c['run_id'])}, {_f(c['wall_seconds'], 2)} s)" if c["run_id"] is not None else "")
            + f" · trainable parameters {_e(c['trainable_parameters'])} · weights "
            + ("changed" if c["weights_changed"] else "unchanged") + "</p>"
            + f"<p>parameters: <code>{_e(json.dumps(c['parameters'], sort_keys=True))}</code></p>"
            + f"<p class='muted'>{_e(tensors)}</p>"
            + "<h3>Operating points, before → after</h3>"
            + _table(["site", "pathology", "before", "after"], ops)
            + (f"<p class='muted'>{_e(c['notes'])}</p>" if c["notes"] else ""))


def _protocol(r: dict[str, Any]) -> str:
    p = r["protocol"]
    if p["policy_digest"] is None:
        head = "<p>No decision: no policy governed this registration.</p>"
    elif p["policy_verified"]:
        head = (f"<p>policy <code>{_e(p['policy_digest'])}</code>, recorded with the decision at "
                f"{_e(p['declared_at'])}, before the run started ({_e(p['run_started_at'])}). The policy at hand has "
                "this digest, so its acceptance criteria below are the ones declared.</p>")
    else:
        head = (f"<p>policy <code>{_e(p['policy_digest'])}</code>, recorded with the decision at "
                f"{_e(p['declared_at'])}, before the run started ({_e(p['run_started_at'])}).</p><p class='note'>The "
                f"policy at hand has another digest (<code>{_e(p['policy_at_hand_digest'])}</code>): its sections are "
                "not quoted; the limits each rule was held to are those the gate's checks recorded.</p>")
    declared = p["declared"] or {}
    parts = ["<h2 id='protocol'>The protocol followed</h2>", head]
    if declared:
        parts += ["<h3>Gate (as declared)</h3>", _kv(declared.get("gate")),
                  "<h3>Subgroups (as declared)</h3>", _kv(declared.get("subgroups")),
                  "<h3>SLOs of the target pathologies</h3>", _kv(declared.get("slos"))]
    if p["feasibility_bounds"]:
        parts += ["<h3>Bounds the planner checked before the run</h3>", _kv(p["feasibility_bounds"])]
    parts += ["<h3>Acceptance rules applied (from the gate's checks)</h3>",
              _table(["rule", "checks", "binding", "failed", "limits"],
                     [[_e(x["rule"]), _e(x["checks"]), _e(x["binding"]),
                       f"<span class='bad'>{x['failed']}</span>" if x["failed"] else "0",
                       _e(", ".join(f"{v:g}" for v in x["limits"]) or "—")] for x in p["rules"]]),
              "<h3>Data</h3>",
              _table(["id", "data set", "role", "site", "size", "sha256"],
                     [[_e(d["id"]), _e(d["name"]), _e(d["role"]), _e(d["site"] or "—"), _e(d["size"]),
                       f"<code>{_e(d['digest'])}</code>"] for d in p["data"]])]
    return "".join(parts)


def _overall(v: dict[str, Any]) -> str:
    out = []
    for ds in dict.fromkeys(x["dataset"] for x in v["overall"]):
        rows = [[("<b>" + _e(x["pathology"]) + "</b>") if x["target"] else _e(x["pathology"]),
                 _ci(x["auroc"], x["auroc_lo"], x["auroc_hi"]), _d(x["delta_auroc"]), _f(x["sensitivity"]),
                 _d(x["delta_sensitivity"]), _f(x["specificity"]), _d(x["delta_specificity"]), _f(x["threshold"], 4),
                 f"{_e(x['n_pos'])}/{_e(x['n_neg'])}"] for x in v["overall"] if x["dataset"] == ds]
        out.append(f"<h3>{_e(ds)}</h3>" + _table(["pathology", "AUROC [CI]", "Δ vs parent", "sensitivity", "Δ",
                                                  "specificity", "Δ", "threshold", "pos/neg"], rows))
    return "".join(out) or "<p class='muted'>no evaluation recorded</p>"


def _subgroups(r: dict[str, Any], forests: Sequence[tuple[str, bytes]]) -> str:
    v = r["verification"]
    checks: dict[tuple[str, str], bool] = {}  # (set, "P|attribute=group") -> every test of the group passed
    for c in v["subgroup_checks"]:
        head, _, ds = c["name"].partition("@")
        key = (ds, head.split("[", 1)[-1].rstrip("]"))
        checks[key] = checks.get(key, True) and c["passed"]
    parts = [f"<h3>Per subgroup: {_e(', '.join(v['targets']) or 'no target pathology')}</h3>",
             f"<p class='muted'>Differences vs the parent with {v['level']:.0%} intervals: ΔAUROC from the paired "
             "DeLong SE, Δrecall from the discordant positives (Wald, paired). Hollow grey: too small to judge "
             "(kept, never dropped).</p>"]
    parts += [f"<figure>{_img(png, cap, f'forest-{i}')}<figcaption class='muted'>{_e(cap)}</figcaption></figure>"
              for i, (cap, png) in enumerate(forests)]
    if not forests:
        parts.append("<p class='muted'>no per-subgroup comparison with a parent to draw</p>")
    rows = []
    for g in v["subgroups"]:
        verdict = checks.get((g["dataset"], f"{g['pathology']}|{g['attribute']}={g['group']}"))
        rows.append([_e(g["dataset"]), _e(g["pathology"]), _e(g["attribute"]), _e(g["group"]),
                     f"{_e(g['n_pos'])}/{_e(g['n_neg'])}", _ci(g["auroc"], g["auroc_lo"], g["auroc_hi"]),
                     _ci(g["recall"], g["recall_lo"], g["recall_hi"]), _ci(g["fpr"], g["fpr_lo"], g["fpr_hi"]),
                     _ci(g["delta_auroc"], g["delta_auroc_lo"], g["delta_auroc_hi"], True),
                     _ci(g["delta_recall"], g["delta_recall_lo"], g["delta_recall_hi"], True),
                     _verdict(verdict) if verdict is not None else _e(g["reason"] or "not in the gate's family")])
    parts.append(_table(["set", "pathology", "attribute", "group", "pos/neg", "AUROC [CI]", "recall [exact CI]",
                         "FPR [exact CI]", "ΔAUROC", "Δrecall", "subgroup gate"], rows))
    parts.append("<h3>Subgroup gate checks</h3>" + _checks(v["subgroup_checks"]))
    return "".join(parts)


def _verification(r: dict[str, Any], forests: Sequence[tuple[str, bytes]]) -> str:
    v = r["verification"]
    gate = v["gate"]
    head = ("<p>no gate verdict: the version was not produced by a treatment run</p>" if gate is None else
            f"<p>gate: {_verdict(gate['passed'])} · scope {_e(gate['scope'])}"
            + (f" ({_e(gate['site'])})" if gate.get("site") else "")
            + (" · held for a person's approval" if gate.get("needs_approval") else "")
            + f"</p><p class='muted'>{_e(gate['summary'])}</p>")
    return ("<h2 id='verification'>Verification</h2>" + head + "<h3>Target checks</h3>" + _checks(v["checks"])
            + "<h3>Overall, per evaluation set</h3>" + _overall(v) + _subgroups(r, forests))


def _impact(r: dict[str, Any]) -> str:
    imp = r["impact"]
    base = imp["authorised_baseline"] or {}
    grants = _table(["site", "authorised baseline", "how", "by", "reason"],
                    [[_e(site), _e(b.get("ref")), _e(b.get("kind")), _e(b.get("actor")), _e(b.get("reason"))]
                     for site, b in base.items()])
    failed_p = sum(not c["passed"] for c in imp["parent_checks"])
    failed_b = sum(not c["passed"] for c in imp["baseline_checks"])
    return ("<h2 id='impact'>Impact</h2>"
            + f"<h3>vs the parent {_e(imp['parent'])}</h3>"
            + f"<p>{len(imp['parent_checks'])} checks, {failed_p} failed</p>"
            + f"<details><summary>every check</summary>{_checks(imp['parent_checks'])}</details>"
            + "<h3>vs the authorised baseline (no margin creep)</h3>" + grants
            + f"<p>{len(imp['baseline_checks'])} checks, {failed_b} failed</p>"
            + f"<details><summary>every check</summary>{_checks(imp['baseline_checks'])}</details>")


def _sequestration(r: dict[str, Any]) -> str:
    s = r["sequestration"]
    rows = [[_e(x.get("dataset")), _e(x.get("patients")), _e(x.get("overlap")),
             f"<code>{_e(x.get('patients_digest'))}</code>"] for x in s["evaluation_sets"]]
    return ("<h2 id='sequestration'>Sequestered test data</h2>"
            + (f"<p>the treatment was handed {_e(s['training_patients'])} patients (recorded as sha256 digests)</p>"
               if s["training_patients"] is not None else "<p class='muted'>no treatment run</p>")
            + _table(["evaluation set", "patients", "overlap with training", "patient-set digest"], rows)
            + _checks(s["checks"]))


def _footer(r: dict[str, Any]) -> str:
    vc = r["version_control"]
    audit = r["audit"]
    chain = audit["chain"]
    state = (f"<span class='ok'>intact ({_e(chain.get('checked'))} events)</span>" if chain.get("ok")
             else f"<span class='bad'>broken at seq {_e(chain.get('first_bad_seq'))}: {_e(chain.get('reason'))}</span>")
    return ("<h2 id='approvals'>Approvals</h2>"
            + _table(["who", "when", "verdict", "reason"],
                     [[_e(a["actor"]), _e(a["at"]), _e(a["verdict"]), _e(a["reason"])] for a in r["approvals"]])
            + "<h3>Promotions</h3>"
            + _table(["alias", "site", "from", "when", "by", "reason"],
                     [[_e(p["alias"]), _e(p["site"] or "all"), _e(p["from"]), _e(p["at"]), _e(p["actor"]),
                       _e(p["reason"])] for p in r["promotions"]])
            + "<h2 id='version-control'>Version control</h2>" + _kv(vc)
            + f"<h2 id='audit'>Audit chain</h2><p>chain when this record was written: {state}</p>"
            + _table(["seq", "at", "actor", "action", "entity", "hash"],
                     [[_e(e["seq"]), _e(e["at"]), _e(e["actor"]), _e(e["action"]), _e(e["entity"]),
                       f"<code>{_e(e['hash'])}</code>"] for e in audit["events"]]))


def record_page(record: dict[str, Any], forests: Sequence[tuple[str, bytes]] | None = None) -> str:
    """The whole page for `record`; `forests` defaults to `forest.record_forests(record)`."""
    forests = record_forests(record) if forests is None else forests
    v = record["version"]
    prom = "; ".join(f"production{'@' + p['site'] if p['site'] else ''} from {p['from'] or '—'} at {p['at']} by "
                     f"{p['actor']}" for p in record["promotions"])
    head = (f"<h1>Change record: {_e(v['ref'])}</h1><p>{_e(prom)}</p>"
            f"<p class='muted'>{_e(record['format'])} · status {_e(v['status'])} · registered {_e(v['created_at'])} "
            f"by {_e(v['created_by'])}</p><p id='image-check' class='muted'>images not checked yet</p>")
    body = (head + _trigger(record) + _change(record) + _protocol(record) + _verification(record, forests)
            + _impact(record) + _sequestration(record) + _footer(record))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Change record {_e(v['ref'])}</title><style>{CSS}</style></head><body>{body}"
            f"<script>{SCRIPT}</script></body></html>")


def write_record(record: dict[str, Any], out: Path) -> Path:
    """Write `record`'s page to `out` (atomically) and return the path."""
    atomic_write(Path(out), record_page(record).encode("utf-8"))
    return Path(out)
