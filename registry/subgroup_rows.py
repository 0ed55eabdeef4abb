"""Validation of the per-subgroup results stored with an evaluation row (`evaluations.subgroups`, JSON).

The registry does not compute them (`decision/subgroups.py` does); it refuses what it could not show or
export faithfully: anything but a list of objects that each name an `attribute` and a `group`, and any
number that is not finite (JSON has no NaN; "undefined" is null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cxr.errors import InvalidInput

__all__ = ["check_subgroups"]


def _value(v: Any, field: str) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str | int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidInput(f"{v} is not finite (store an undefined value as null)", field=field)
        return v
    try:  # numpy scalars
        return _value(v.item(), field)
    except AttributeError:
        raise InvalidInput(f"unsupported value {v!r}", field=field) from None


def check_subgroups(value: Any, field: str) -> list[dict[str, Any]] | None:
    """`value` as plain JSON (a list of flat dicts with `attribute` and `group`), or None; raises `InvalidInput`."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise InvalidInput("expected a list of subgroup results", field=field)
    out = []
    for i, g in enumerate(value):
        if not isinstance(g, Mapping) or not isinstance(g.get("attribute"), str) or not isinstance(g.get("group"), str):
            raise InvalidInput("each subgroup result names its attribute and group", field=f"{field}[{i}]")
        out.append({str(k): _value(v, f"{field}[{i}].{k}") for k, v in g.items()})
    return out
