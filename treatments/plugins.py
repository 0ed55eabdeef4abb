"""Plugin discovery: one door for built-in and third-party treatments.

Every treatment, ours included, is an entry point in the group
`cxr_decide.treatments` (see pyproject.toml). An entry point may name a class
(instantiated without arguments) or an instance. Each is checked against the
`Treatment` protocol when it loads; a broken plugin is reported, not fatal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from cxr.kinds import IssueKind
from treatments.base import Treatment

log = logging.getLogger(__name__)
GROUP = "cxr_decide.treatments"


@dataclass
class LoadedTreatments:
    treatments: dict[str, Treatment] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def check_treatment(obj: object) -> str | None:
    """Why `obj` is not a valid treatment, or None."""
    if not isinstance(obj, Treatment):
        missing = [a for a in ("name", "fixes", "head_only", "applicable", "apply") if not hasattr(obj, a)]
        return f"does not implement the Treatment protocol (missing {', '.join(missing)})"
    if not isinstance(obj.name, str) or not obj.name.isidentifier():
        return "name must be a snake_case identifier"
    unknown = set(obj.fixes) - set(IssueKind)
    if unknown:
        return f"fixes unknown issue kinds {sorted(unknown)}"
    return None


def load_treatments() -> LoadedTreatments:
    """Load every registered treatment; return them by name plus any load errors."""
    out = LoadedTreatments()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            inst = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # a third-party plugin may fail in any way
            out.errors[ep.name] = f"failed to load {ep.value}: {exc}"
            log.warning("treatment plugin %s failed to load: %s", ep.name, exc)
            continue
        why = check_treatment(inst)
        if why:
            out.errors[ep.name] = why
            log.warning("treatment plugin %s rejected: %s", ep.name, why)
            continue
        if inst.name in out.treatments:
            out.errors[ep.name] = f"duplicate treatment name {inst.name!r}"
            continue
        out.treatments[inst.name] = inst
    return out
