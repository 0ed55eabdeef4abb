"""The change record of a promoted version: one document that says what changed, why, and why it was safe.

The audit trail holds every event, but a reviewer asking "what changed in cxr:21 and why was it safe?"
needs one document. Its sections follow what a predetermined change control plan asks of each
modification (FDA, AI-enabled device software functions): the trigger, the change, the protocol with the
acceptance criteria declared before the run, the verification (overall and per subgroup, with
intervals), the approvals, the impact against the parent and against the site's authorised baseline,
the sequestration of the test data, and the version-control fields — tied to the audit chain by the
hashes of the events that recorded it.

Everything is read from the registry export (`registry.export.export_all`, plain JSON values): this
module is pure (an export in, a JSON-ready dict out), imports nothing heavy, and the same record is
what `decide record` renders as HTML (`decision.documents.change_record_html`) and what `decide export`
carries under `change_records` (schema: `docs/schemas/change-record.schema.json`).

"Promoted" means the version was moved to `production` at least once, at any site (the alias history).
The root version, registered and promoted by a person, has a record too: its trigger is its registration.

**The protocol as declared.** The decision that chose the treatment records the digest of the policy it
was made under before the treatment ran. When the policy at hand has that digest (the caller passes it),
its gate, subgroup and SLO sections are quoted as the declared acceptance criteria (`policy_verified`);
otherwise only the digest is, and the criteria are those the gate's checks recorded with their limits.

**Intervals** of the per-subgroup differences vs the parent, at `level` (the evaluation's own 1 - alpha):
ΔAUROC ± z·SE with the paired DeLong SE the evaluation stored; Δrecall = (gained - lost)/n₊ from the
discordant positives, with the Wald interval of a paired difference of proportions,
SE = √((b + c) - (c - b)²/n₊)/n₊ (b lost, c gained). Both are clipped to [-1, 1], where a difference lives.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from cxr.errors import InvalidInput

__all__ = ["FORMAT", "change_record", "change_records", "policy_facts", "promoted_version_ids", "subgroup_deltas"]

FORMAT = "cxr-decide/change-record-1"
#: check families (the name before "[" or "@") and the section of the record they belong to
_IMPACT_PARENT = ("noninferiority", "slo_kept")
_SUBGROUP = ("subgroup_noninferiority", "subgroup_recall", "subgroup_family")


def _family(name: str) -> str:
    return name.split("@", 1)[0].split("[", 1)[0]


def _ref(v: dict[str, Any]) -> str:
    return f"{v['model']}:{v['version']}"


def promoted_version_ids(export: dict[str, Any]) -> list[int]:
    """Ids of the versions that were moved to `production` (any site) at least once, in version order."""
    ids = {(v["model"], v["version"]): v["id"] for v in export["versions"]}
    moved = {ids.get((m["model"], m["to_version"])) for m in export.get("alias_history", [])
             if m["alias"] == "production"}
    return sorted(i for i in moved if i is not None)


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _interval(x: float | None, se: float | None, z: float) -> tuple[float | None, float | None]:
    if x is None or se is None or not math.isfinite(se):
        return None, None
    return max(x - z * se, -1.0), min(x + z * se, 1.0)


def _recall_delta(g: dict[str, Any], z: float) -> tuple[float | None, float | None, float | None]:
    """(Δrecall, lo, hi) from the discordant positives (module docstring); None without a paired comparison."""
    b, c, n = g.get("recall_lost"), g.get("recall_gained"), g.get("n_pos") or 0
    if b is None or c is None or n == 0:
        return None, None, None
    d = (c - b) / n
    se = math.sqrt(max((b + c) - (c - b) ** 2 / n, 0.0)) / n
    return d, max(d - z * se, -1.0), min(d + z * se, 1.0)


def policy_facts(policy: Any) -> dict[str, Any]:
    """A `policies.Policy` as the plain facts a change record quotes: its digest, gate, subgroups and SLOs (per
    pathology the policy names, as in force; `*`: the default for the others)."""
    from policies import policy_digest

    dumped = policy.model_dump(mode="json")
    named = dumped["slos"].get("pathologies") or {}
    slos = {p: policy.slos.for_pathology(p).model_dump(mode="json") for p in named}
    return {"digest": policy_digest(policy), "gate": dumped["gate"], "subgroups": dumped["subgroups"],
            "slos": {**slos, "*": dumped["slos"].get("default")}}


def subgroup_deltas(export: dict[str, Any], version_id: int, pathologies: list[str] | None = None,
                    *, level: float = 0.95) -> list[dict[str, Any]]:
    """Per evaluation set, pathology and group of `version_id`: the group's metrics and its change vs the parent.

    `pathologies`: which (default: the targets of the version's reports). Each row carries the group's AUROC,
    recall and FPR with their stored intervals, whether it is judgeable, and ΔAUROC / Δrecall vs the parent
    with their `level` intervals (module docstring); None where the evaluation holds no paired comparison.
    """
    v = next(x for x in export["versions"] if x["id"] == version_id)
    wanted = pathologies if pathologies is not None else _targets(export, v)
    names = {d["id"]: d["name"] for d in export["datasets"]}
    z = _z(level)
    rows = []
    for e in export["evaluations"]:
        if e["version_id"] != version_id or e["pathology"] not in wanted or not e.get("subgroups"):
            continue
        for g in e["subgroups"]:
            lo, hi = _interval(g.get("delta_auroc"), g.get("se_delta"), z)
            dr, dr_lo, dr_hi = _recall_delta(g, z)
            rows.append({
                "dataset": names.get(e["dataset_id"], str(e["dataset_id"])), "dataset_id": e["dataset_id"],
                "pathology": e["pathology"], "attribute": g["attribute"], "group": g["group"],
                "n_pos": g.get("n_pos"), "n_neg": g.get("n_neg"), "judgeable": bool(g.get("judgeable")),
                "reason": g.get("reason"),
                **{k: g.get(k) for k in ("auroc", "auroc_lo", "auroc_hi", "recall", "recall_lo", "recall_hi",
                                         "fpr", "fpr_lo", "fpr_hi", "parent_recall", "recall_lost", "recall_gained",
                                         "margin")},
                "delta_auroc": g.get("delta_auroc"), "delta_auroc_lo": lo, "delta_auroc_hi": hi,
                "delta_recall": dr, "delta_recall_lo": dr_lo, "delta_recall_hi": dr_hi})
    rows.sort(key=lambda r: (r["dataset_id"], wanted.index(r["pathology"])))
    return rows


def _reports(export: dict[str, Any], v: dict[str, Any]) -> list[dict[str, Any]]:
    if v.get("decision_id") is None:
        return []
    d = next((x for x in export["decisions"] if x["id"] == v["decision_id"]), None)
    by_id = {r["id"]: r for r in export["reports"]}
    return [by_id[i] for i in (d or {}).get("report_ids", []) if i in by_id]


def _targets(export: dict[str, Any], v: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["pathology"] for r in _reports(export, v)))


def _operating_points(v: dict[str, Any], parent: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every operating point that differs from the parent's: all-sites defaults ('*') and each site's own."""
    before_def = (parent or {}).get("thresholds") or {}
    after_def = v.get("thresholds") or {}
    out = [{"site": "*", "pathology": p, "before": before_def.get(p), "after": after_def.get(p)}
           for p in v["pathologies"] if parent is None or before_def.get(p) != after_def.get(p)]
    before_site, after_site = (parent or {}).get("site_thresholds") or {}, v.get("site_thresholds") or {}
    for site in sorted(set(before_site) | set(after_site)):
        b = {**before_def, **before_site.get(site, {})}
        a = {**after_def, **after_site.get(site, {})}
        out += [{"site": site, "pathology": p, "before": b.get(p) if parent else None, "after": a.get(p)}
                for p in v["pathologies"] if parent is None or b.get(p) != a.get(p)]
    return out


def _tensors_touched(v: dict[str, Any], parent: dict[str, Any] | None) -> list[str] | None:
    """Tensor names whose digest differs from the parent's (added and removed ones included); None if unrecorded."""
    after = v.get("tensor_digests") or {}
    before = (parent or {}).get("tensor_digests") or {}
    if parent is None or not after or not before:
        return None
    return sorted(n for n in set(after) | set(before) if after.get(n) != before.get(n))


def _check(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c.get(k) for k in ("name", "passed", "binding", "value", "limit", "flag", "detail")}


def _rules(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per rule family: how many checks, how many binding, the limits they were held to."""
    out: dict[str, dict[str, Any]] = {}
    for c in checks:
        r = out.setdefault(_family(c["name"]), {"rule": _family(c["name"]), "checks": 0, "binding": 0,
                                                "failed": 0, "limits": []})
        r["checks"] += 1
        r["binding"] += bool(c.get("binding", True))
        r["failed"] += not c["passed"] and bool(c.get("binding", True))
        if c.get("limit") is not None and c["limit"] not in r["limits"]:
            r["limits"].append(c["limit"])
    return list(out.values())


def _verification(export: dict[str, Any], v: dict[str, Any], parent: dict[str, Any] | None,
                  targets: list[str]) -> list[dict[str, Any]]:
    names = {d["id"]: d["name"] for d in export["datasets"]}
    parent_evals = {(e["dataset_id"], e["pathology"]): e for e in export["evaluations"]
                    if parent is not None and e["version_id"] == parent["id"]}
    order = {p: i for i, p in enumerate(v["pathologies"])}
    out = []
    for e in sorted((e for e in export["evaluations"] if e["version_id"] == v["id"]),
                    key=lambda e: (e["dataset_id"], e["pathology"] not in targets, order.get(e["pathology"], 0))):
        pe = parent_evals.get((e["dataset_id"], e["pathology"]))
        row = {"dataset": names.get(e["dataset_id"], str(e["dataset_id"])), "dataset_id": e["dataset_id"],
               "pathology": e["pathology"], "target": e["pathology"] in targets,
               **{k: e.get(k) for k in ("auroc", "auroc_lo", "auroc_hi", "sensitivity", "specificity", "ppv",
                                        "threshold", "n_pos", "n_neg")}}
        for k in ("auroc", "sensitivity", "specificity"):
            row[f"parent_{k}"] = pe.get(k) if pe else None
            row[f"delta_{k}"] = (e[k] - pe[k]) if pe and e.get(k) is not None and pe.get(k) is not None else None
        out.append(row)
    return out


def _audit(export: dict[str, Any], v: dict[str, Any], run_id: int | None, report_ids: list[int]) -> dict[str, Any]:
    keys = {("model_version", str(v["id"]))} | {("error_report", str(i)) for i in report_ids}
    if v.get("decision_id") is not None:
        keys.add(("decision", str(v["decision_id"])))
    if run_id is not None:
        keys.add(("treatment_run", str(run_id)))
    ref = _ref(v)
    events = [{"seq": e["seq"], "at": e["at"], "actor": e["actor"], "action": e["action"],
               "entity": f"{e['entity_type']}:{e['entity_id']}", "hash": e["hash"], "prev_hash": e["prev_hash"]}
              for e in export.get("audit_events", [])
              if (e["entity_type"], e["entity_id"]) in keys
              or (e["entity_type"] == "alias" and isinstance(e.get("new"), dict) and e["new"].get("version") == ref)]
    chain = export.get("audit_verification") or {}
    return {"chain": {k: chain.get(k) for k in ("ok", "checked", "first_bad_seq", "reason")}, "events": events}


def _protocol(export: dict[str, Any], v: dict[str, Any], decision: dict[str, Any] | None, run: dict[str, Any] | None,
              checks: list[dict[str, Any]], targets: list[str], policy: dict[str, Any] | None) -> dict[str, Any]:
    digest = decision["policy_digest"] if decision else None
    verified = bool(policy and digest and policy.get("digest") == digest)
    declared = None
    if verified:
        table = policy.get("slos") or {}
        slos = {p: table.get(p) or table.get("*") for p in targets}
        declared = {"gate": policy.get("gate"), "subgroups": policy.get("subgroups"), "slos": slos}
    feasibility = ((decision or {}).get("evidence") or {}).get("calibration_feasibility") or {}
    bounds = {name: f.get("bounds") for name, f in feasibility.items() if isinstance(f, dict) and f.get("bounds")}
    datasets = {d["id"]: d for d in export["datasets"]}
    data = [{"id": d["id"], "name": d["name"], "role": d["role"], "digest": d["digest"], "size": d["size"],
             "site": (d.get("source") or {}).get("site") or ""}
            for d in (datasets[i] for i in v.get("dataset_ids", []) if i in datasets)]
    return {"policy_digest": digest, "declared_at": decision["created_at"] if decision else None,
            "run_started_at": run["started_at"] if run else None, "policy_verified": verified,
            "policy_at_hand_digest": (policy or {}).get("digest"), "declared": declared,
            "feasibility_bounds": bounds or None, "rules": _rules(checks), "data": data}


def change_record(export: dict[str, Any], version_id: int, *, policy: dict[str, Any] | None = None,
                  level: float | None = None) -> dict[str, Any]:
    """The change record of `version_id` as plain JSON values (module docstring; schema in docs/schemas/).

    `policy`: the policy at hand as `policy_facts` gives it; quoted as the declared protocol only when its
    digest is the decision's. `level` of the subgroup differences' intervals: default 1 - the declared
    `gate.alpha` (the evaluation's own level), else 0.95. Raises `InvalidInput` (exit 2) for an unknown version
    or one never promoted.
    """
    versions = {x["id"]: x for x in export["versions"]}
    if version_id not in versions:
        raise InvalidInput(f"no version with id {version_id}", field="version")
    v = versions[version_id]
    ref = _ref(v)
    if version_id not in promoted_version_ids(export):
        raise InvalidInput(f"{ref} was never promoted (it never held production at any site): it has no change "
                           f"record; `decide history {v['model']}` lists the promotions", field="version")
    parent = versions.get(v["parent_id"]) if v.get("parent_id") is not None else None
    run = next((r for r in export["runs"] if r["id"] == v.get("treatment_run_id")), None)
    decision = next((d for d in export["decisions"] if d["id"] == v.get("decision_id")), None)
    reports = _reports(export, v)
    targets = _targets(export, v)
    metrics = (run or {}).get("metrics") or {}
    gate = metrics.get("gate") or {}
    checks = [_check(c) for c in gate.get("checks") or []]
    fam = {c["name"]: _family(c["name"]) for c in checks}
    promotions = [{"alias": m["alias"], "site": m["site"], "from": (f"{m['model']}:{m['from_version']}"
                                                                   if m["from_version"] is not None else None),
                   "at": m["at"], "actor": m["actor"], "reason": m["reason"]}
                  for m in export.get("alias_history", [])
                  if m["alias"] == "production" and m["model"] == v["model"] and m["to_version"] == v["version"]]
    protocol = _protocol(export, v, decision, run, checks, targets, policy)
    if level is None:
        level = 1 - float(protocol["declared"]["gate"]["alpha"]) if protocol["declared"] else 0.95
    seq = metrics.get("sequestration") or {}
    touched = _tensors_touched(v, parent)
    return {
        "format": FORMAT,
        "version": {"id": v["id"], "ref": ref, "model": v["model"], "number": v["version"], "status": v["status"],
                    "created_at": v["created_at"], "created_by": v["created_by"], "notes": v.get("notes") or ""},
        "promotions": promotions,
        "trigger": {
            "kind": "reports" if reports else "registration", "decision_id": v.get("decision_id"),
            "rationale": decision["rationale"] if decision else
            "registered and promoted by a person (no decision: the lineage's root or an override)",
            "reports": [{k: r.get(k) for k in ("id", "site", "pathology", "kind", "metric", "value", "target",
                                               "window_start", "window_end", "counts", "source", "subgroup")}
                        for r in reports]},
        "change": {
            "treatment": run["treatment"] if run else None, "run_id": run["id"] if run else None,
            "parameters": run["parameters"] if run else {}, "trainable_parameters": v.get("trainable_parameters"),
            "wall_seconds": run.get("wall_seconds") if run else None,
            "weights_changed": parent is not None and v["weights_digest"] != parent["weights_digest"],
            "tensors_touched": touched, "tensors_total": len(v.get("tensor_digests") or {}),
            "operating_points": _operating_points(v, parent), "notes": v.get("notes") or ""},
        "protocol": protocol,
        "verification": {
            "gate": ({k: gate.get(k) for k in ("passed", "summary", "scope", "site", "needs_approval")}
                     if gate else None),
            "level": level, "targets": targets,
            "checks": [c for c in checks if fam[c["name"]] not in (*_IMPACT_PARENT, *_SUBGROUP)
                       and not fam[c["name"]].startswith("baseline_") and fam[c["name"]] != "sequestration"],
            "subgroup_checks": [c for c in checks if fam[c["name"]] in _SUBGROUP],
            "overall": _verification(export, v, parent, targets),
            "subgroups": subgroup_deltas(export, v["id"], targets, level=level)},
        "approvals": [{k: a.get(k) for k in ("actor", "at", "verdict", "reason")}
                      for a in (decision or {}).get("approvals", [])],
        "impact": {
            "parent": parent and _ref(parent),
            "parent_checks": [c for c in checks if fam[c["name"]] in _IMPACT_PARENT],
            "authorised_baseline": metrics.get("authorised_baseline"),
            "baseline_checks": [c for c in checks if fam[c["name"]].startswith("baseline_")]},
        "sequestration": {
            "training_patients": seq.get("training_patients"), "evaluation_sets": seq.get("evaluation_sets") or [],
            "checks": [c for c in checks if fam[c["name"]] == "sequestration"]},
        "version_control": {
            "parent": parent and _ref(parent), "parent_id": v.get("parent_id"),
            **{k: v[k] for k in ("spec_digest", "weights_digest", "backbone_digest", "tensors_digest", "code_version")},
            "decision_id": v.get("decision_id"), "run_id": v.get("treatment_run_id"),
            "policy_digest": decision["policy_digest"] if decision else None},
        "audit": _audit(export, v, run["id"] if run else None, [r["id"] for r in reports]),
    }


def change_records(export: dict[str, Any], *, policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The change record of every promoted version of `export`, in version order."""
    return [change_record(export, vid, policy=policy) for vid in promoted_version_ids(export)]
