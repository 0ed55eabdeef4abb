"""The subgroup an error report is about, as one canonical text: "view=AP", "sex=F&age_band=65+", "" (the whole site).

One vocabulary for the monitor that files a subgroup report (`decision.subgroup_monitor`), the report's
validation (`decision.error_reports`), the calibration treatment that picks the subgroup's rows and the
gate that judges the subgroup's target (`decision.gate_subgroup_target`). Pure Python (no numpy): report
validation runs in `decide ingest`, which must start without numerical libraries.

**Form.** `attribute=value` pairs joined by `&`, attributes in the fixed order `sex`, `age_band`, `view`,
each at most once, no spaces. The site is not an attribute here: it is the report's own `site` field.
Values: `sex` F or M; `view` AP, PA, LL or LATERAL; `age_band` a band as `decision.subgroups` names it from
the policy's edges: `<40` (age < 40), `40-64` (40 <= age < 65), `65+` (age >= 65). A band names its own
range, so a film's membership needs no policy. The empty text is the whole site. Anything else — an
unknown attribute or value, "unknown", a repeated attribute, another order — is refused with the reason.
"""

from __future__ import annotations

import math
import re

__all__ = ["ATTRIBUTES", "SEXES", "VIEWS", "canonical", "check_subgroup", "describe", "from_group", "matches",
           "parse"]

ATTRIBUTES = ("sex", "age_band", "view")
SEXES = ("F", "M")
VIEWS = ("AP", "PA", "LL", "LATERAL")
MAX_LENGTH = 128
_BAND = re.compile(r"<(\d{1,3})|(\d{1,3})-(\d{1,3})|(\d{1,3})\+")


def _band_range(text: str) -> tuple[float, float] | None:
    """[lo, hi) in years of an age band label, or None when `text` is not one."""
    m = _BAND.fullmatch(text)
    if m is None:
        return None
    if m.group(1) is not None:
        return 0.0, float(m.group(1))
    if m.group(4) is not None:
        return float(m.group(4)), math.inf
    lo, hi = int(m.group(2)), int(m.group(3))
    return (float(lo), float(hi + 1)) if lo <= hi else None


def _check_value(attribute: str, value: str) -> None:
    if attribute == "sex" and value not in SEXES:
        raise ValueError(f"sex must be one of {', '.join(SEXES)}, got {value!r}")
    if attribute == "view" and value not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {value!r}")
    if attribute == "age_band" and _band_range(value) is None:
        raise ValueError(f"age_band must be a band such as <40, 40-64 or 65+, got {value!r}")


def parse(text: str) -> dict[str, str]:
    """The attribute -> value pairs of a subgroup text ({} for ""); `ValueError` with the reason if invalid."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    if text == "":
        return {}
    if len(text) > MAX_LENGTH:
        raise ValueError(f"longer than {MAX_LENGTH} characters")
    out: dict[str, str] = {}
    for part in text.split("&"):
        attribute, eq, value = part.partition("=")
        if not eq or not attribute or not value:
            raise ValueError(f"{part[:40]!r} is not attribute=value (e.g. view=AP, sex=F&age_band=65+)")
        if attribute == "site":
            raise ValueError("the site is the report's own `site` field, not a subgroup attribute")
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute[:40]!r}; use {', '.join(ATTRIBUTES)}")
        if attribute in out:
            raise ValueError(f"{attribute} is given twice")
        _check_value(attribute, value)
        out[attribute] = value
    return out


def canonical(pairs: dict[str, str]) -> str:
    """The canonical text of attribute -> value pairs (attributes in `ATTRIBUTES` order); validated."""
    text = "&".join(f"{a}={pairs[a]}" for a in ATTRIBUTES if a in pairs)
    unknown = sorted(set(pairs) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute {unknown[0]!r}; use {', '.join(ATTRIBUTES)}")
    parse(text)
    return text


def check_subgroup(text: str) -> str:
    """`text` if it is a canonical subgroup (module doc), else `ValueError` naming what is wrong."""
    want = canonical(parse(text))
    if want != text:
        raise ValueError(f"write it as {want!r} (attributes in the order {', '.join(ATTRIBUTES)})")
    return text


def from_group(attribute: str, group: str) -> str | None:
    """The canonical text of a `decision.subgroups` group ("sex & age_band", "F & 65+" -> "sex=F&age_band=65+");
    the `site` part is dropped (a report names its site). None when a part is not a valid value ("unknown")."""
    names, values = attribute.split(" & "), group.split(" & ")
    if len(names) != len(values):
        return None
    pairs = {a: v for a, v in zip(names, values, strict=True) if a != "site"}
    try:
        return canonical(pairs) if pairs else None
    except ValueError:
        return None


def matches(pairs: dict[str, str], *, sex: str, age: float, view: str) -> bool:
    """Whether one film (its sex, age in years — NaN unknown — and view) belongs to the parsed subgroup."""
    if "sex" in pairs and sex != pairs["sex"]:
        return False
    if "view" in pairs and view != pairs["view"]:
        return False
    if "age_band" in pairs:
        lo, hi = _band_range(pairs["age_band"]) or (math.inf, math.inf)
        if age is None or math.isnan(age) or not lo <= age < hi:
            return False
    return True


def describe(text: str) -> str:
    """Plain words for a subgroup: "view=AP" -> "AP films", "sex=F&age_band=65+" -> "films of women aged 65+"."""
    pairs = parse(text)
    if not pairs:
        return "all films"
    noun = f"{pairs['view']} films" if "view" in pairs else "films"
    who = {"F": "women", "M": "men"}.get(pairs.get("sex", ""), "")
    age = f"aged {pairs['age_band']}" if "age_band" in pairs else ""
    if who or age:
        noun += " of " + " ".join(x for x in (who or "patients", age) if x)
    return noun
