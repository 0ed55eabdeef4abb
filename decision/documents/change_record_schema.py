"""The JSON Schema (draft 2020-12) of a change record (`decision.documents.change_record`).

Written here, next to the code that builds the record, and published as
`docs/schemas/change-record.schema.json` and by `decide schema change-record`; a test keeps the
published file equal to `change_record_schema()` and validates real records against it. Every object is
closed (`additionalProperties: false`), except the free-form policy sections, run parameters and
evaluation-set entries, so that a field added to the record without the schema fails the test.
"""

from __future__ import annotations

from typing import Any

__all__ = ["change_record_schema"]

_NUM: dict[str, Any] = {"type": ["number", "null"]}
_INT: dict[str, Any] = {"type": ["integer", "null"]}
_STR: dict[str, Any] = {"type": ["string", "null"]}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_CHECKS: dict[str, Any] = {"type": "array", "items": {"$ref": "#/$defs/check"}}
_DIGEST: dict[str, Any] = {"$ref": "#/$defs/digest"}
_DIGEST_OR_NULL: dict[str, Any] = {"anyOf": [_DIGEST, {"type": "null"}]}
_DIFF: dict[str, Any] = {"type": ["number", "null"], "minimum": -1, "maximum": 1}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(props) if required is None else required, "properties": props,
            "additionalProperties": False}


def _array(items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **kw}


def _sections() -> dict[str, Any]:
    report = _obj({"id": {"type": "integer"}, "site": {"type": "string"}, "pathology": {"type": "string"},
                   "kind": {"type": "string"}, "metric": {"type": "string"}, "value": {"type": "number"},
                   "target": {"type": "number"}, "window_start": _TIME, "window_end": _TIME,
                   "counts": {"type": "object", "additionalProperties": {"type": "integer"}}, "source": _STR,
                   "subgroup": {}}, required=["id", "site", "pathology", "kind", "metric", "value", "target"])
    overall = _obj({"dataset": {"type": "string"}, "dataset_id": {"type": "integer"}, "pathology": {"type": "string"},
                    "target": {"type": "boolean"}, "auroc": _NUM, "auroc_lo": _NUM, "auroc_hi": _NUM,
                    "sensitivity": _NUM, "specificity": _NUM, "ppv": _NUM, "threshold": _NUM,
                    "n_pos": {"type": "integer"}, "n_neg": {"type": "integer"}, "parent_auroc": _NUM,
                    "delta_auroc": _NUM, "parent_sensitivity": _NUM, "delta_sensitivity": _NUM,
                    "parent_specificity": _NUM, "delta_specificity": _NUM})
    group = _obj({"dataset": {"type": "string"}, "dataset_id": {"type": "integer"}, "pathology": {"type": "string"},
                  "attribute": {"type": "string"}, "group": {"type": "string"}, "n_pos": {"type": "integer"},
                  "n_neg": {"type": "integer"}, "judgeable": {"type": "boolean"}, "reason": _STR,
                  **{k: _NUM for k in ("auroc", "auroc_lo", "auroc_hi", "recall", "recall_lo", "recall_hi", "fpr",
                                       "fpr_lo", "fpr_hi", "parent_recall", "margin")},
                  "recall_lost": _INT, "recall_gained": _INT,
                  **{k: _DIFF for k in ("delta_auroc", "delta_auroc_lo", "delta_auroc_hi", "delta_recall",
                                        "delta_recall_lo", "delta_recall_hi")}})
    gate = _obj({"passed": {"type": "boolean"}, "summary": {"type": "string"}, "scope": _STR, "site": _STR,
                 "needs_approval": {"type": ["boolean", "null"]}})
    declared = _obj({"gate": {"type": "object", "required": ["alpha", "noninferiority_margin", "cumulative_margin"]},
                     "subgroups": {"type": "object"}, "slos": {"type": "object"}})
    return {
        "format": {"const": "cxr-decide/change-record-1"},
        "version": _obj({"id": {"type": "integer"}, "ref": {"type": "string", "pattern": "^.+:[0-9]+$"},
                         "model": {"type": "string"}, "number": {"type": "integer", "minimum": 1},
                         "status": {"type": "string"}, "created_at": _TIME, "created_by": {"type": "string"},
                         "notes": {"type": "string"}}),
        "promotions": _array(_obj({"alias": {"const": "production"}, "site": {"type": "string"}, "from": _STR,
                                   "at": _TIME, "actor": {"type": "string"}, "reason": {"type": "string"}}),
                             minItems=1),
        "trigger": _obj({"kind": {"enum": ["reports", "registration"]}, "decision_id": _INT,
                         "rationale": {"type": "string"}, "reports": _array(report)}),
        "change": _obj({"treatment": _STR, "run_id": _INT, "parameters": {"type": "object"},
                        "trainable_parameters": _INT, "wall_seconds": _NUM, "weights_changed": {"type": "boolean"},
                        "tensors_touched": {"type": ["array", "null"], "items": {"type": "string"}},
                        "tensors_total": {"type": "integer", "minimum": 0},
                        "operating_points": _array(_obj({"site": {"type": "string"}, "pathology": {"type": "string"},
                                                         "before": _NUM, "after": _NUM})),
                        "notes": {"type": "string"}}),
        "protocol": _obj({
            "policy_digest": _DIGEST_OR_NULL, "declared_at": _STR, "run_started_at": _STR,
            "policy_verified": {"type": "boolean"}, "policy_at_hand_digest": _DIGEST_OR_NULL,
            "declared": {"anyOf": [{"type": "null"}, declared]}, "feasibility_bounds": {"type": ["object", "null"]},
            "rules": _array(_obj({"rule": {"type": "string"}, "checks": {"type": "integer", "minimum": 1},
                                  "binding": {"type": "integer"}, "failed": {"type": "integer"},
                                  "limits": _array({"type": "number"})})),
            "data": _array(_obj({"id": {"type": "integer"}, "name": {"type": "string"}, "role": {"type": "string"},
                                 "digest": {"type": "string"}, "size": {"type": "integer"},
                                 "site": {"type": "string"}}))}),
        "verification": _obj({
            "gate": {"anyOf": [{"type": "null"}, gate]},
            "level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "targets": _array({"type": "string"}), "checks": _CHECKS, "subgroup_checks": _CHECKS,
            "overall": _array(overall), "subgroups": _array(group)}),
        "approvals": _array(_obj({"actor": {"type": "string"}, "at": _TIME, "verdict": {"type": "string"},
                                  "reason": {"type": "string"}})),
        "impact": _obj({"parent": _STR, "parent_checks": _CHECKS,
                        "authorised_baseline": {"type": ["object", "null"], "additionalProperties": {
                            "type": "object", "required": ["version_id", "ref", "kind", "actor", "reason"]}},
                        "baseline_checks": _CHECKS}),
        "sequestration": _obj({"training_patients": _INT,
                               "evaluation_sets": _array({"type": "object", "required": [
                                   "dataset_id", "dataset", "patients", "patients_digest", "overlap"],
                                   "properties": {"overlap": {"type": "integer", "minimum": 0},
                                                  "patients_digest": _DIGEST}}),
                               "checks": _CHECKS}),
        "version_control": _obj({"parent": _STR, "parent_id": _INT, "spec_digest": _DIGEST, "weights_digest": _DIGEST,
                                 "backbone_digest": {"type": "string"}, "tensors_digest": {"type": "string"},
                                 "code_version": {"type": "string"}, "decision_id": _INT, "run_id": _INT,
                                 "policy_digest": _DIGEST_OR_NULL}),
        "audit": _obj({"chain": _obj({"ok": {"type": ["boolean", "null"]}, "checked": _INT, "first_bad_seq": _INT,
                                      "reason": _STR}),
                       "events": _array(_obj({"seq": {"type": "integer", "minimum": 1}, "at": _TIME,
                                              "actor": {"type": "string"}, "action": {"type": "string"},
                                              "entity": {"type": "string"}, "hash": _DIGEST,
                                              "prev_hash": {"type": "string"}}), minItems=1)}),
    }


def change_record_schema() -> dict[str, Any]:
    """The JSON Schema of one change record, as a plain dict."""
    check = _obj({"name": {"type": "string"}, "passed": {"type": "boolean"}, "binding": {"type": ["boolean", "null"]},
                  "value": _NUM, "limit": _NUM, "flag": _STR, "detail": _STR})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://cxr-decide.invalid/schemas/change-record.schema.json",
        "title": "cxr-decide change record",
        "description": "The change record of one promoted version: `decide record VERSION --json`, and each item "
                       "of `change_records` in `decide export` (decision/documents/change_record.py).",
        "$defs": {"check": check, "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        **_obj(_sections()),
    }
