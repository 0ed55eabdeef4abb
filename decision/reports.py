"""The error report: its schema (pydantic), JSON Lines parsing, and ingest into the registry.

A report is the engine's input, so a bad one must be refused before it can
cause a treatment: unknown fields, wrong types (strict: "3" is not 3), NaN or
infinite metrics, negative counts, a window that ends before it starts, naive
timestamps, oversize text. The registry then checks what only it can know:
the version exists and the pathology is one of its outputs. A file is
all-or-nothing: one bad line refuses the whole file, naming the line and the
field, and nothing is written. `decide schema report` prints the JSON Schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.orm import Session

from cxr.errors import InvalidInput, NotFound
from registry import repo
from registry.entities import IngestResult, ReportKind

MAX_LINE_BYTES = 1_000_000
MAX_CASES = 500

Count = Annotated[int, Field(strict=True, ge=0)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=64)]


class Counts(BaseModel):
    """The confusion counts of the window (at the version's thresholds)."""

    model_config = ConfigDict(extra="forbid")

    tp: Count
    fp: Count
    tn: Count
    fn: Count


class Case(BaseModel):
    """One image as evidence: its id, the model's score, and the label if known."""

    model_config = ConfigDict(extra="forbid")

    image_id: Annotated[str, Field(strict=True, min_length=1, max_length=128)]
    score: Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
    label: Literal[0, 1] | None = None


class ErrorReport(BaseModel):
    """What went wrong with one pathology of one model version, at one site, in one window."""

    model_config = ConfigDict(extra="forbid", title="ErrorReport")

    model: Annotated[str, Field(strict=True, min_length=1, max_length=128, description="Model name")]
    version: Annotated[int, Field(strict=True, ge=1, description="Version number of that model")]
    pathology: Name
    kind: ReportKind
    metric: Annotated[str, Field(strict=True, min_length=1, max_length=32, description="e.g. fpr, recall, auroc, ece")]
    value: Finite
    target: Finite
    site: Name
    window_start: AwareDatetime
    window_end: AwareDatetime
    counts: Counts
    cases: Annotated[list[Case], Field(default_factory=list, max_length=MAX_CASES)]
    source: Annotated[str | None, Field(strict=True, min_length=1, max_length=32, description="monitor, jsonl…")] = None
    notes: Annotated[str, Field(strict=True, max_length=2000)] = ""

    @model_validator(mode="after")
    def _window_in_order(self) -> ErrorReport:
        if self.window_start > self.window_end:
            raise ValueError("window_start is after window_end")
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one report line (what `decide schema report` prints)."""
    return ErrorReport.model_json_schema()


def _reason(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "report"
    msg = err["msg"].removeprefix("Value error, ")
    return field, msg


def parse_report(data: str | bytes | dict[str, Any], *, where: str = "") -> ErrorReport:
    """Validate one report (a JSON text or a dict); `InvalidInput` names the field."""
    try:
        if isinstance(data, dict):
            return ErrorReport.model_validate(data)
        return ErrorReport.model_validate_json(data)
    except ValidationError as exc:
        field, msg = _reason(exc)
        raise InvalidInput(msg, field=f"{where}{field}") from None


def parse_lines(lines: Iterable[str | bytes]) -> tuple[list[ErrorReport], list[int]]:
    """Parse JSON Lines (blank lines skipped); refuse the whole input at the first bad line."""
    reports: list[ErrorReport] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_BYTES:
            raise InvalidInput(f"longer than {MAX_LINE_BYTES} bytes", field=f"line {n}")
        if not line.strip():
            continue
        reports.append(parse_report(line, where=f"line {n}: "))
        numbers.append(n)
    return reports, numbers


def read_jsonl(path: str | Path) -> tuple[list[ErrorReport], list[int]]:
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such file", field=str(p))
    with p.open("rb") as f:
        return parse_lines(f)


def ingest(session: Session, reports: Sequence[ErrorReport], *, lines: Sequence[int] | None = None,
           default_source: str = "api", actor: str | None = None) -> IngestResult:
    """Store validated reports in the caller's transaction (idempotent per report key).

    Raises `InvalidInput` naming the line (when `lines` is given) and field for an
    unknown version or a pathology the version does not output; nothing is written then.
    """
    rows = []
    for r in reports:
        d = r.model_dump()
        d["cases"] = [c.model_dump() for c in r.cases]
        d["source"] = d["source"] or default_source
        rows.append(d)
    return repo.ingest_reports(session, rows, lines=lines, actor=actor)


def ingest_file(session: Session, path: str | Path, *, actor: str | None = None) -> IngestResult:
    """Validate every line of a JSONL file, then ingest them all in the caller's transaction."""
    reports, numbers = read_jsonl(path)
    return ingest(session, reports, lines=numbers, default_source="jsonl", actor=actor)
