"""The error report: its schema (pydantic), strict validation with reasons, JSON Lines parsing, ingest.

A report is the engine's input, so a bad one must be refused before it can
cause a treatment — and the sender must learn why. Every refusal is an
`InvalidInput` (exit 2) naming the line, the field and the reason, on one line:

* types are strict ("3" is not 3, true is not 1), unknown fields are refused;
* `metric` comes from a fixed vocabulary and must belong to the report's `kind`
  (`METRICS`); rate metrics and AUROC lie in [0, 1], footprint figures are
  non-negative and bounded; NaN and infinities are refused;
* counts are non-negative integers ≤ 2³¹−1 (every integer column of the registry
  is a 32-bit INTEGER on PostgreSQL: a bigger number would fail in the driver,
  and no window holds two billion studies), and when the metric is a rate of
  them (fpr = fp / (fp + tn), recall = tp / (tp + fn), …) `value` must equal that
  rate up to the rounding its own decimals show (at most ±0.05);
* identifiers (`model`, `site`, `source`: letters, digits, `._-`; `pathology`:
  printable text) carry no control, bidi-override or path characters — they
  reach terminals, file names and the HTML report — and are length-capped;
* the window is ordered (start before end), after 1970 and not in the future;
* `subgroup` ("" = the whole site, else e.g. "view=AP" or "sex=F&age_band=65+") is canonical: known
  attributes (sex, age_band, view) in that order, known values (`cxr.subgroup_key`).

The registry then checks what only it can know: the version exists, the
pathology is one of its outputs, and a report with the same key (version, site,
subgroup, pathology, kind, window) is either identical (a no-op) or refused, naming the
stored report and the fields that differ. A file is all-or-nothing: one bad line
refuses the whole file and nothing is written. `decide schema report` prints
the JSON Schema.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy.orm import Session

from cxr import clock
from cxr.errors import InvalidInput, NotFound
from cxr.kinds import METRICS, IssueKind, metrics_of
from cxr.subgroup_key import check_subgroup
from registry import repo
from registry.entities import IngestResult

MAX_LINE_BYTES = 1_000_000
MAX_CASES = 500
#: the largest count or version number the registry stores (PostgreSQL INTEGER)
MAX_INT = 2**31 - 1
#: a window may end this much after the receiving clock's "now" (clocks differ a little)
CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
#: how far `value` may sit from the rate its counts give, at most (one decimal's rounding)
MAX_ROUNDING = 0.05


# -- text: what may reach a terminal, a file name or the HTML report ---------------------------------
_BAD_CATEGORIES = {
    "Cc": "a control character", "Cf": "a format (bidi/invisible) character", "Cs": "a lone surrogate",
    "Co": "a private-use character", "Cn": "an unassigned code point", "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def show(text: str, limit: int = 40) -> str:
    """A short, escaped rendering of untrusted text for an error message (never multi-line)."""
    return ascii(text[:limit]) + ("…" if len(text) > limit else "")


def _bad_char(text: str, *, allowed_controls: str = "", path_chars: bool = True) -> str | None:
    """Why `text` may not be shown or used as it is (first offending character), or None."""
    for i, ch in enumerate(text):
        if ch in allowed_controls:
            continue
        cat = unicodedata.category(ch)
        if cat in _BAD_CATEGORIES:
            return f"contains {_BAD_CATEGORIES[cat]} (U+{ord(ch):04X}) at position {i}"
        if cat == "Zs" and ch != " ":
            return f"contains an unusual space (U+{ord(ch):04X}) at position {i}"
        if path_chars and ch in "/\\":
            return f"contains a path separator {ch!r} at position {i}"
    return None


def check_name(text: str) -> str:
    """A model, site or source name: starts with a letter or digit; letters, digits, `.`, `_`, `-`."""
    if why := _bad_char(text):
        raise ValueError(why)
    if not text[:1].isascii() or not text[:1].isalnum():
        raise ValueError(f"must start with a letter or digit, got {show(text)}")
    if stray := next((c for c in text if c not in _NAME_CHARS), None):
        raise ValueError(f"may hold only letters, digits, '.', '_' and '-'; {show(stray)} in {show(text)}")
    return text


def check_label(text: str) -> str:
    """A pathology name: printable text without path separators, not padded with spaces."""
    if why := _bad_char(text):
        raise ValueError(why)
    if text != text.strip() or text in {".", ".."}:
        raise ValueError(f"must not start or end with a space or be a path component, got {show(text)}")
    return text


Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]


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
    label: Annotated[int, Field(strict=True, ge=0, le=1)] | None = None

    @field_validator("image_id")
    @classmethod
    def _printable_id(cls, v: str) -> str:
        if why := _bad_char(v, path_chars=False):
            raise ValueError(why)
        return v


class ErrorReport(BaseModel):
    """What went wrong with one pathology of one model version, at one site, in one window."""

    model_config = ConfigDict(extra="forbid", title="ErrorReport")

    model: Annotated[str, Field(strict=True, min_length=1, max_length=128, description="Model name")]
    version: Annotated[int, Field(strict=True, ge=1, le=MAX_INT, description="Version number of that model")]
    pathology: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    kind: IssueKind
    metric: Annotated[str, Field(strict=True, min_length=1, max_length=32, json_schema_extra={"enum": list(METRICS)},
                                 description="one of the kind's metrics: " + "; ".join(
                                     f"{k.value}: {', '.join(metrics_of(k.value))}" for k in IssueKind))]
    value: Finite
    target: Finite
    site: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    subgroup: Annotated[str, Field(strict=True, max_length=128, description=(
        "the patients of the site it is about: '' (all), else attribute=value pairs joined by '&' in the order "
        "sex, age_band, view, e.g. 'view=AP', 'sex=F&age_band=65+' (sex F|M; view AP|PA|LL|LATERAL; age_band "
        "<N, N-M or N+)"))] = ""
    window_start: AwareDatetime
    window_end: AwareDatetime
    counts: Counts
    cases: Annotated[list[Case], Field(default_factory=list, max_length=MAX_CASES)]
    source: Annotated[str | None, Field(strict=True, min_length=1, max_length=32, description="monitor, jsonl…")] = None
    notes: Annotated[str, Field(strict=True, max_length=2000)] = ""

    @field_validator("model", "site", "source")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return v if v is None else check_name(v)

    @field_validator("subgroup")
    @classmethod
    def _subgroup(cls, v: str) -> str:
        return check_subgroup(v)

    @field_validator("pathology")
    @classmethod
    def _pathology(cls, v: str) -> str:
        return check_label(v)

    @field_validator("metric")
    @classmethod
    def _metric_of_kind(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        rule = METRICS.get(v)
        if rule is None or (kind is not None and rule.kind != kind.value):
            allowed = metrics_of(kind.value) if kind is not None else sorted(METRICS)
            what = f"a {kind.value} report" if kind is not None else "a report"
            raise ValueError(f"{show(v)} is not a metric of {what}; use one of: {', '.join(allowed)}")
        return v

    @field_validator("value", "target")
    @classmethod
    def _in_range(cls, v: float, info: ValidationInfo) -> float:
        rule = METRICS.get(info.data.get("metric", ""))
        if rule is not None and not rule.lo <= v <= rule.hi:
            raise ValueError(f"{v!r} is outside [{rule.lo:g}, {rule.hi:g}] for {info.data['metric']}")
        return v

    @field_validator("window_start", "window_end", mode="before")
    @classmethod
    def _timestamp_text(cls, v: Any) -> Any:
        # Lax datetime parsing would read a number as seconds since 1970: a window is written out.
        if isinstance(v, bool | int | float):
            raise ValueError("expected an ISO 8601 date-time with a timezone, e.g. 2026-03-02T00:00:00Z")
        return v

    @field_validator("window_start")
    @classmethod
    def _not_ancient(cls, v: datetime) -> datetime:
        if v < EARLIEST:
            raise ValueError(f"{v.isoformat()} is before 1970")
        return v

    @field_validator("window_end")
    @classmethod
    def _ordered_and_past(cls, v: datetime, info: ValidationInfo) -> datetime:
        start = info.data.get("window_start")
        if start is not None and not start < v:
            raise ValueError(f"window_end {v.isoformat()} is not after window_start {start.isoformat()}")
        if v > clock.now() + CLOCK_SKEW:
            raise ValueError(f"{v.isoformat()} is in the future")
        return v

    @field_validator("counts")
    @classmethod
    def _counts_match_value(cls, v: Counts, info: ValidationInfo) -> Counts:
        rule = METRICS.get(info.data.get("metric", ""))
        value = info.data.get("value")
        if rule is None or rule.rate is None or value is None:
            return v
        num, den = rule.rate
        n = sum(getattr(v, k) for k in den)
        if n == 0:  # the counts cannot give this rate: nothing to compare
            return v
        rate = getattr(v, num) / n
        tol = rounding_of(value)
        if abs(value - rate) > tol + 1e-9:
            raise ValueError(f"{info.data['metric']} {value!r} contradicts the counts: {num} / "
                             f"({' + '.join(den)}) = {getattr(v, num)} / {n} = {rate:.6g} (allowed rounding ±{tol:g})")
        return v

    @field_validator("notes")
    @classmethod
    def _printable_notes(cls, v: str) -> str:
        if why := _bad_char(v, allowed_controls="\t\n", path_chars=False):
            raise ValueError(why)
        return v


def rounding_of(value: float) -> float:
    """Half a unit of the last decimal `value` is written with, at most MAX_ROUNDING (0.3 → 0.05, 0.52 → 0.005)."""
    exponent = Decimal(repr(float(value))).as_tuple().exponent
    if not isinstance(exponent, int):  # pragma: no cover - value is finite
        return MAX_ROUNDING
    return min(MAX_ROUNDING, 0.5 * 10.0 ** exponent)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one report line (what `decide schema report` prints)."""
    return ErrorReport.model_json_schema()


def _loc(parts: Sequence[Any]) -> str:
    out = []
    for p in parts:
        s = str(p)
        out.append(s if s and len(s) <= 40 and all(c in _NAME_CHARS for c in s) else show(s))
    return ".".join(out) or "report"


def _reason(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False, include_input=False)[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (not in `decide schema report`)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    return _loc(err["loc"]), " ".join(msg.split())


def parse_report(data: str | bytes | dict[str, Any], *, where: str = "") -> ErrorReport:
    """Validate one report (a JSON text or a dict); `InvalidInput` names the field and the reason."""
    try:
        if isinstance(data, dict):
            return ErrorReport.model_validate(data)
        return ErrorReport.model_validate_json(data)
    except ValidationError as exc:
        field, msg = _reason(exc)
        raise InvalidInput(msg, field=f"{where}{field}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # input the JSON parser itself chokes on
        raise InvalidInput(f"not a JSON report: {' '.join(str(exc).split())[:200]}", field=f"{where}report") from None


def parse_lines(lines: Iterable[str | bytes]) -> tuple[list[ErrorReport], list[int]]:
    """Parse JSON Lines (blank lines skipped); refuse the whole input at the first bad line."""
    reports: list[ErrorReport] = []
    numbers: list[int] = []
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_BYTES:
            raise InvalidInput(f"longer than {MAX_LINE_BYTES} bytes", field=f"line {n}")
        if n == 1:  # a byte-order mark some editors write
            line = line.removeprefix(b"\xef\xbb\xbf") if isinstance(line, bytes) else line.removeprefix("\ufeff")
        if not line.strip():
            continue
        reports.append(parse_report(line, where=f"line {n}: "))
        numbers.append(n)
    return reports, numbers


def read_jsonl(path: str | Path) -> tuple[list[ErrorReport], list[int]]:
    """Validate every line of a JSONL file; `NotFound` / `InvalidInput` for a missing or unreadable file."""
    p = Path(path)
    if not p.is_file():
        raise NotFound("no such file", field=str(p))
    try:
        with p.open("rb") as f:
            return parse_lines(f)
    except OSError as exc:
        raise InvalidInput(f"cannot read: {exc.strerror or exc}", field=str(p)) from None


def ingest(session: Session, reports: Sequence[ErrorReport], *, lines: Sequence[int] | None = None,
           default_source: str = "api", actor: str | None = None) -> IngestResult:
    """Store validated reports in the caller's transaction (idempotent per report key).

    Raises `InvalidInput` naming the line (when `lines` is given) and field for an
    unknown version, a pathology the version does not output, or a report whose key is
    stored with different content; nothing is written then.
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
