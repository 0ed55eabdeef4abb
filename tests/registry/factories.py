"""Small builders for registry tests (plain functions over a session)."""

from __future__ import annotations

import json
from datetime import timedelta

from registry import blobs, repo
from tests import dates

PATHOLOGIES = ["Atelectasis", "Effusion", "Cardiomegaly"]
SPEC = json.dumps({"family": "xrv-densenet", "growth_rate": 4, "pathologies": PATHOLOGIES})


def version(session, model="cxr", *, parent_id=None, payload=b"weights-1", thresholds=None, tensors=None,
            evaluations=None, spec=SPEC, pathologies=PATHOLOGIES, **kw):
    """Register a version whose 'weights' are `payload` (stored as a blob)."""
    ref = blobs.put_bytes(payload)
    return repo.register_version(
        session, model, spec_json=spec, weights_digest=ref.digest, blob=ref, backbone_digest="b" * 64,
        tensors_digest="c" * 64, tensor_digests=tensors or {"w": "1", "classifier.weight": "2"},
        pathologies=pathologies, parameter_count=1000, thresholds=thresholds or {}, parent_id=parent_id,
        evaluations=evaluations, **kw,
    )


def eval_rows(pathologies=PATHOLOGIES, auroc=0.8):
    return [{"pathology": p, "auroc": auroc, "auroc_lo": auroc - 0.05, "auroc_hi": min(1.0, auroc + 0.05),
             "sensitivity": 0.7, "specificity": 0.9, "ppv": 0.5, "f1": 0.6, "threshold": 0.4, "n_pos": 30,
             "n_neg": 300} for p in pathologies]


def report(model="cxr", version=1, *, pathology="Effusion", site="site-a", day=0, **kw):
    start = dates.day(day)
    base = {
        "model": model, "version": version, "pathology": pathology, "kind": "false_positives", "metric": "fpr",
        "value": 0.3, "target": 0.1, "site": site, "window_start": start.isoformat(),
        "window_end": (start + timedelta(days=1)).isoformat(), "counts": {"tp": 5, "fp": 30, "tn": 60, "fn": 5},
        "cases": [{"image_id": "img-1", "score": 0.9, "label": 0}], "source": "monitor", "notes": "",
    }
    base.update(kw)
    return base
