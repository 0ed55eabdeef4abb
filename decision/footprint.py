"""The monitor's footprint check: file a `footprint` report when a version runs slower than its budget here.

Latency is a property of a version *on a machine*, so it is measured where the
version runs (this process's CPU, its flags recorded with the figure), at the
batch size the budget speaks of, side by side with nothing else, median of
repeats. Over budget → an `ErrorReport` of kind `footprint`, metric
`latency_ms`, value = the measured ms/image, target = the budget, which the
engine then treats like any other report (the footprint treatments measure
their candidates at the same batch size: keep the policy's `latency_batch`
equal to the budget's).

A footprint report must name a pathology (the report schema is per pathology);
it names the version's first output, and the measurement, batch and CPU go in
its notes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from cxr.kinds import IssueKind
from decision.catalog import Catalog
from decision.error_reports import ErrorReport, ingest, parse_report
from registry import repo
from registry.entities import IngestResult, VersionEntity


def measure_version_latency(cat: Catalog, version: VersionEntity, *, batch: int = 8, repeats: int = 5,
                            threads: int | None = None) -> dict[str, Any]:
    """Median ms/image of a registered version at `batch` on this CPU (torch or ONNX Runtime), with the CPU facts."""
    from cxr.footprint import measure_latency, ort_runner, torch_runner

    w = cat.weights(version)
    m = cat.model(w)
    runner = ort_runner(m.session) if hasattr(m, "session") else torch_runner(m)
    s = w.spec
    got = measure_latency({"v": runner}, (s.in_channels, s.resolution, s.resolution), (batch,), repeats=repeats,
                          threads=threads)
    return {"value": got["ms_per_image"]["v"][batch], "batch": batch, "cpu": got["cpu"], "repeats": repeats}


def latency_report(version: VersionEntity, measured: dict[str, Any], budget_ms: float, *, site: str,
                   window_start: datetime, window_end: datetime) -> ErrorReport | None:
    """The footprint report for `version` when `measured["value"]` ms/image exceeds `budget_ms`, else None."""
    if measured["value"] <= budget_ms:
        return None
    named = [p for p in version.pathologies if p]
    cpu = measured.get("cpu", {})
    notes = (f"{measured['value']:.2f} ms/image at batch {measured['batch']} on {cpu.get('cpu', '?')} "
             f"({cpu.get('threads', '?')} threads, flags {' '.join(cpu.get('flags', []))}); budget {budget_ms:g}")
    return parse_report({
        "model": version.model, "version": version.version, "pathology": named[0], "kind": IssueKind.footprint,
        "metric": "latency_ms", "value": round(float(measured["value"]), 4), "target": float(budget_ms),
        "site": site, "window_start": window_start, "window_end": window_end,
        "counts": {"tp": 0, "fp": 0, "tn": 0, "fn": 0}, "source": "monitor", "notes": notes[:2000],
    })


def check_latency(session: Session, cat: Catalog, ref: str, budget_ms: float, *, site: str,
                  window_start: datetime, window_end: datetime, batch: int = 8, repeats: int = 5
                  ) -> tuple[dict[str, Any], IngestResult | None]:
    """Measure version `ref` here and, over `budget_ms`, ingest a footprint report (caller's transaction).

    Returns (the measurement, the ingest result or None when within budget).
    """
    version = repo.resolve_version(session, ref)
    measured = measure_version_latency(cat, version, batch=batch, repeats=repeats)
    report = latency_report(version, measured, budget_ms, site=site, window_start=window_start,
                            window_end=window_end)
    return measured, (ingest(session, [report], default_source="monitor") if report is not None else None)
