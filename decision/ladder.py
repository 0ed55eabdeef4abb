"""Ladder statistics: per rung (treatment) and issue kind, how often it was tried, what came of it, and why
it was rejected — the failing gate checks, counted. A pure function over the recorded runs.

The promise of the product is the cheapest *effective* treatment; these numbers say which rungs are
effective in practice and what stops the others (`decide costs`, `bench/ladder.py`). A rejection
reason is a failing check's name without its data set (`noninferiority[Hernia]@eval-site-b` counts as
`noninferiority[Hernia]`) so that the same cause is counted once per run; a treatment that declined
(e.g. surgery found no channel to cut) counts as `declined`, an error as `error`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LadderRow", "ladder_stats", "rejection_reasons"]


@dataclass(frozen=True)
class LadderRow:
    """One rung for one issue kind."""

    treatment: str
    kind: str
    tried: int
    accepted: int  # promoted (by the gate, or by a person after a hold)
    held: int  # passed with a flag and waiting for a person
    rejected: int
    failed: int  # an error, or abandoned by a dead process
    site_scoped: int  # accepted for the report's site only
    reasons: dict[str, int] = field(default_factory=dict)  # rejection reason -> runs

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.tried if self.tried else None

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        return Counter(self.reasons).most_common(n)


def rejection_reasons(outcome: str, metrics: Mapping[str, Any] | None, error_text: str = "") -> list[str]:
    """Why one run did not pass: its failing binding checks (data set stripped), `declined` or `error`."""
    if outcome in ("failed", "abandoned"):
        return ["error"]
    if outcome != "rejected":
        return []
    checks = ((metrics or {}).get("gate") or {}).get("checks")
    if not checks:
        return ["declined" if error_text.startswith("declined") else "rejected"]
    names = {c["name"].split("@")[0] for c in checks if not c.get("passed") and c.get("binding", True)}
    return sorted(names) or ["rejected"]


def ladder_stats(runs: Iterable[Any], kinds: Mapping[int, str]) -> list[LadderRow]:
    """Rows by treatment then kind, from run entities (`treatment`, `outcome`, `metrics`, `error_text`) and
    the issue kind of each run's decision (`kinds[run.id]`, e.g. from `repo.run_kinds`)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        outcome = str(getattr(r.outcome, "value", r.outcome))
        if outcome == "running":
            continue
        row = table.setdefault((r.treatment, kinds.get(r.id, "")), {
            "tried": 0, "accepted": 0, "held": 0, "rejected": 0, "failed": 0, "site_scoped": 0,
            "reasons": Counter()})
        row["tried"] += 1
        if outcome == "accepted":
            row["accepted"] += 1
            if ((r.metrics or {}).get("gate") or {}).get("scope") == "site":
                row["site_scoped"] += 1
        elif outcome == "held":
            row["held"] += 1
        elif outcome == "rejected":
            row["rejected"] += 1
        else:
            row["failed"] += 1
        row["reasons"].update(rejection_reasons(outcome, r.metrics, r.error_text or ""))
    return [LadderRow(t, k, v["tried"], v["accepted"], v["held"], v["rejected"], v["failed"], v["site_scoped"],
                      dict(v["reasons"])) for (t, k), v in sorted(table.items())]
