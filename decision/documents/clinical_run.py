"""`decide findings`: from films (or an error report's cases) to clinical-report pages on disk.

Two ways in. Files: read every film (`cxr.images.read_batch`; an unreadable one stops the batch
unless `keep_going`), score them with a registered version. An error report: its listed cases
(image ids) are looked up in the site's registered feedback sets (`decision.documents.case_maps.find_films`)
and explained under the version the report is about, unless another is asked for. One study
gives one page; several give one page each and an index. Returns plain JSON-ready data.

Every study is first checked against what the version was validated on (`decision.scoring.ood_check`: the
version's reference statistics at the policy's per-study rate, `rate`): its page opens with a banner when it
lies outside, and a study that is no chest film (DICOM header) or is degenerate gets no findings at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr.errors import InvalidInput
from cxr.images import read_batch
from cxr.labelstats import nih_reference_stats
from decision.documents.clinical import StudyView, build_studies, version_view
from decision.documents.clinical_html import write_batch, write_study
from decision.scoring import LoadedVersion, expand_inputs, load_version, ood_check, policy_ood_rate, refuse_failures

SINGLE_DEFAULT, BATCH_DEFAULT = Path("clinical-report.html"), Path("clinical-reports")


def _write(studies: list[StudyView], loaded: LoadedVersion, out: Path | None, title: str,
           failures: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    stats = nih_reference_stats()
    vv = version_view(loaded, stats)
    if len(studies) == 1 and not failures and (out is None or out.suffix.lower() in (".html", ".htm")):
        target = write_study(studies[0], vv, out or SINGLE_DEFAULT)
        pages = [target]
    else:
        if out is not None and out.suffix.lower() in (".html", ".htm"):
            raise InvalidInput("several studies need a folder for --out (one page each plus index.html)", field="out")
        target, pages = write_batch(studies, vv, out or BATCH_DEFAULT, title=title, failures=failures)
    return {"version": loaded.ref, "site": loaded.site, "out": str(target), "pages": [str(p) for p in pages],
            "studies": [s.summary() for s in studies], "failed": [list(f) for f in failures],
            "rule": vv.rule, "reference": vv.reference}


def report_films(films: Sequence[str | Path], *, version: str = "cxr@production", site: str | None = None,
                 out: Path | None = None, keep_going: bool = False, rate: float | None = None) -> dict[str, Any]:
    """Report on film files (folders expand to their image files). Raises `InvalidInput` for unreadable films
    unless `keep_going` (then they are listed under `failed`). `rate`: the per-study OOD false-alarm rate
    (default: the policy's `label_free.ood_rate`)."""
    loaded = load_version(version, site=site)
    batch = read_batch(expand_inputs(films), loaded.weights.spec.resolution)
    refuse_failures(batch, keep_going)
    stats = nih_reference_stats()
    check = ood_check(loaded, policy_ood_rate() if rate is None else rate)
    studies = build_studies(loaded, batch.images, [Path(p).stem for p in batch.paths], batch.paths,
                            [f.describe() for f in batch.films], stats, film_pixels=[f.pixels for f in batch.films],
                            ood=check, metadata=[f.info if f.format == "DICOM" else None for f in batch.films])
    return _write(studies, loaded, out, f"Clinical reports: {len(studies)} studies", batch.failures)


def report_from_error_report(report_id: int, *, version: str | None = None, site: str | None = None,
                             out: Path | None = None, max_cases: int = 10, rate: float | None = None
                             ) -> dict[str, Any]:
    """Report on the first `max_cases` films an error report lists as cases (its worst first), under the
    report's version (or `version`); `rate` as in `report_films`."""
    from decision.catalog import Catalog
    from decision.documents.case_maps import find_films
    from registry import repo
    from registry.session import session_scope
    from registry.settings import get_settings

    with session_scope(read_only=True) as s:
        rep = repo.get_report(s, report_id)
    if not rep.cases:
        raise InvalidInput(f"error report {report_id} lists no cases", field="from_report")
    loaded = load_version(version or f"{rep.model}:{rep.version}", site=site or rep.site)
    cases = rep.cases[:max_cases]
    ids, films = find_films(Catalog(get_settings().home_dir), None, rep.site, [c["image_id"] for c in cases])
    if not ids:
        raise InvalidInput(f"none of report {report_id}'s first {len(cases)} cases is in a registered feedback set "
                           f"of {rep.site}", field="from_report")
    if films.shape[-1] != loaded.weights.spec.resolution:
        raise InvalidInput(f"the films are {films.shape[-1]} px, {loaded.ref} expects "
                           f"{loaded.weights.spec.resolution} px", field="version")
    label = {c["image_id"]: c.get("label") for c in rep.cases}
    sources = [f"case of error report {report_id} ({rep.pathology} {rep.kind.value} at {rep.site}); label "
               f"{label.get(i, '—')}" for i in ids]
    studies = build_studies(loaded, films, ids, sources, [f"registered film, {films.shape[-1]} px"] * len(ids),
                            nih_reference_stats(), ood=ood_check(loaded, policy_ood_rate() if rate is None else rate))
    missing = [c["image_id"] for c in cases if c["image_id"] not in set(ids)]
    title = f"Error report {report_id}: {rep.pathology} {rep.kind.value} at {rep.site} — {len(studies)} cases"
    res = _write(studies, loaded, out if out is not None else Path(f"report-{report_id}-cases"), title)
    res["not_found"] = missing
    res["cases_listed"] = len(rep.cases)
    return res
