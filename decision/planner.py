"""The planner: which treatment to try first for an error report, and why. A pure function.

`plan(report, treatments, policy, past)` takes plain values and returns a `Plan`;
it reads no database, clock or terminal, so the engine can record its output verbatim
and a test can replay any decision (STYLE.md: pure core, effects at the edges).

Each treatment gets
* an expected cost: the policy's prior cost blended with the measured cost of its past
  runs, (k * prior + sum(measured)) / (k + n), k = `learning.cost_strength` pseudo-runs;
  a run's measured cost is `measured_cost(wall_seconds, trainable_parameters)` (below);
* a probability of success for the report's issue kind: the mean of
  Beta(p0 * k + successes, (1 - p0) * k + failures), p0 the policy prior, k = `prior_strength`;
  a run that ended in an error (succeeded None) counts as a failure, and a run for a report at another
  site than this report's counts `learning.other_sites_weight` of one (partial pooling: what fails at
  one site's shift says less about another's).
Applicable treatments are ordered by ascending cost / p(success): trying independent
alternatives in turn until one works costs sum_i c_i * prod_{j<i} (1 - p_j) in
expectation, and an exchange argument shows this order minimises it.

A treatment the evidence rules out (`TreatmentInfo.skipped`: no operating point can meet the target,
`decision.feasibility`; it failed the same question before and nothing changed since, `decision.retry`)
is not applicable, and the rationale lists it under "Skipped on the evidence" with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies import Policy, policy_digest
from policies.schema import CostModel

__all__ = [
    "Candidate",
    "CostRow",
    "Plan",
    "ReportView",
    "RunStat",
    "TreatmentInfo",
    "empirical_cost_matrix",
    "measured_cost",
    "plan",
]


@dataclass(frozen=True)
class ReportView:
    """What the planner and the gate need of an error report (`value` measured, `target` wanted)."""

    id: str | int
    model: str
    version: str | int
    pathology: str
    kind: str
    metric: str
    value: float | None
    target: float | None
    site: str | None = None
    has_case_evidence: bool = False
    n_cases: int | None = None
    subgroup: str = ""  # "" = the whole site, else e.g. "view=AP" (`cxr.subgroup_key`)


@dataclass(frozen=True)
class TreatmentInfo:
    """An installed treatment plugin as the engine sees it for this report.

    `skipped`: why the evidence rules it out although it applies (no operating point can meet the target,
    `decision.feasibility`; it failed the same question before and nothing changed, `decision.retry`);
    `evidence`: the numbers behind that, recorded with the decision (evidence key -> JSON object).
    """

    name: str
    fixes: frozenset[str]
    applicable: bool = True
    reason: str = ""
    skipped: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStat:
    """One past treatment run; `succeeded` None = ended in an error (a failure whose time still counts)."""

    treatment: str
    kind: str
    succeeded: bool | None
    wall_seconds: float
    trainable_parameters: int | None = None
    site: str | None = None  # the site of the report the run treated


@dataclass(frozen=True)
class Candidate:
    """A treatment with its numbers; `score = expected_cost / p_success` orders the applicable ones."""

    rank: int
    treatment: str
    applicable: bool
    reason: str
    prior_cost: float | None
    empirical_cost: float | None  # mean measured cost of past runs, None without runs
    expected_cost: float | None  # prior blended with the measured runs
    p_success: float | None
    alpha: float | None
    beta: float | None
    score: float | None
    needs_approval: bool
    n_runs: int  # runs of this treatment (all kinds) behind the cost; alpha/beta hold the kind's outcomes


@dataclass(frozen=True)
class Plan:
    """The ordered candidates (applicable first), the one to try now (None: escalate to a person), and why."""

    report_id: str | int
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None
    rationale: str
    policy_digest: str


@dataclass(frozen=True)
class CostRow:
    """One line of `decide costs`: prior vs measured cost and the posterior p(success) per kind."""

    treatment: str
    prior_cost: float | None
    measured_cost: float | None
    n_runs: int
    blended_cost: float
    mean_wall_seconds: float | None
    p_success_by_kind: dict[str, float] = field(default_factory=dict)


def measured_cost(wall_seconds: float, trainable_parameters: int | None, model: CostModel) -> float:
    """Cost-scale value of one run: base + (t / t_ref) ** gamma + w * log10(1 + params / p_ref).

    With the default model: 0.5 s -> 1.1, 85 s and 18K parameters -> 2.0, 10 min -> 3.5,
    2 h with 3.38M parameters -> 9.4. Negative inputs count as zero.
    """
    t = max(float(wall_seconds), 0.0)
    params = max(float(trainable_parameters or 0), 0.0)
    return (
        model.base
        + (t / model.reference_seconds) ** model.time_exponent
        + model.parameter_weight * math.log10(1.0 + params / model.reference_parameters)
    )


class _Tally:
    __slots__ = ("cost_sum", "n", "outcomes", "wall_sum")

    def __init__(self) -> None:
        self.n = 0
        self.cost_sum = 0.0
        self.wall_sum = 0.0
        self.outcomes: dict[str, list[float]] = {}  # kind -> [successes, failures], weighted by site


def _tally(past: Iterable[RunStat], model: CostModel, site: str | None = None, other_sites: float = 1.0
           ) -> dict[str, _Tally]:
    """Per treatment: measured costs (every run) and outcomes per kind, a run for a report at another site
    than `site` counting `other_sites` of one (a run or report without a site counts one)."""
    out: dict[str, _Tally] = {}
    for run in past:
        t = out.get(run.treatment)
        if t is None:
            t = out[run.treatment] = _Tally()
        t.n += 1
        t.cost_sum += measured_cost(run.wall_seconds, run.trainable_parameters, model)
        t.wall_sum += max(float(run.wall_seconds), 0.0)
        sf = t.outcomes.setdefault(run.kind, [0.0, 0.0])
        sf[0 if run.succeeded is True else 1] += 1.0 if site is None or run.site in (None, site) else other_sites
    return out


def _blend(prior: float | None, tally: _Tally | None, k: float) -> tuple[float | None, float | None]:
    """(mean measured cost or None, blended cost or None)."""
    if tally is None or tally.n == 0:
        return None, prior
    mean = tally.cost_sum / tally.n
    if prior is None:
        return mean, mean
    return mean, (k * prior + tally.cost_sum) / (k + tally.n)


def _beta(p0: float, k: float, tally: _Tally | None, kind: str) -> tuple[float, float]:
    s, f = tally.outcomes.get(kind, (0, 0)) if tally is not None else (0, 0)
    return p0 * k + s, (1.0 - p0) * k + f


def _why_not(name: str, report: ReportView, info: TreatmentInfo | None, policy: Policy) -> list[str]:
    entry = policy.treatments.get(name)
    if name == "no_action":
        return ["listed for reference: an open report needs a treatment"]
    reasons = []
    if info is None:
        reasons.append("no plugin installed")
    if entry is None:
        return [*reasons, "no entry in the policy"]
    if not entry.enabled:
        reasons.append("disabled by the policy")
    if report.kind not in entry.fixes:
        reasons.append(f"the policy does not list it for {report.kind}")
    if info is not None and report.kind not in info.fixes:
        reasons.append(f"the plugin does not fix {report.kind}")
    pre = entry.preconditions
    if pre.requires_case_evidence and not report.has_case_evidence:
        reasons.append("needs case-level evidence, the report has none")
    if pre.min_cases and (report.n_cases or 0) < pre.min_cases:
        reasons.append(f"needs at least {pre.min_cases} cases, the report has {report.n_cases or 0}")
    if info is not None and not info.applicable:
        reasons.append(info.reason or "the plugin declines this report")
    if info is not None and info.skipped:
        reasons.append(info.skipped)
    return reasons


def _candidate(name: str, report: ReportView, info, policy: Policy, tallies: dict[str, _Tally]) -> dict:
    """A candidate's fields except its rank (given once the order is known)."""
    reasons = _why_not(name, report, info, policy)
    entry = policy.treatments.get(name)
    tally = tallies.get(name)
    n_runs = tally.n if tally is not None else 0
    out = dict(treatment=name, applicable=not reasons, reason="; ".join(reasons) or "applicable", n_runs=n_runs)
    if entry is None:
        return out | dict.fromkeys(_NUMBERS) | {"needs_approval": False}
    learning = policy.learning
    empirical, expected = _blend(entry.prior_cost, tally, learning.cost_strength)
    a, b = _beta(entry.prior_p(report.kind), learning.prior_strength, tally, report.kind)
    p = a / (a + b)
    numbers = (entry.prior_cost, empirical, expected, p, a, b, expected / p)
    return out | dict(zip(_NUMBERS, numbers, strict=True)) | {"needs_approval": entry.needs_approval}


_NUMBERS = ("prior_cost", "empirical_cost", "expected_cost", "p_success", "alpha", "beta", "score")


def _rationale(report: ReportView, ordered: list[Candidate], rest: list[Candidate], note: str = "",
               skipped: frozenset[str] = frozenset()) -> str:
    value = "n/a" if report.value is None else f"{report.value:.3g}"
    target = "" if report.target is None else f" vs target {report.target:.3g}"
    head = f"Report {report.id}: {report.pathology} {report.kind} ({report.metric} {value}{target})."
    on_evidence = [c for c in rest if c.treatment in skipped]
    rest = [c for c in rest if c.treatment not in skipped]
    skips = ("Skipped on the evidence: " + "; ".join(f"{c.treatment}: {c.reason}" for c in on_evidence) + "."
             if on_evidence else "")
    if not ordered:
        why = "; ".join(f"{c.treatment}: {c.reason}" for c in rest)
        return " ".join(x for x in (f"{head} No applicable treatment: escalate to a person.", skips,
                                    f"({why})" if why else "") if x)

    def nums(c: Candidate) -> str:
        return f"expected cost {c.expected_cost:.1f} / p {c.p_success:.2f} = {c.score:.1f}"

    first = ordered[0]
    approval = " (needs approval)" if first.needs_approval else ""
    parts = [f"{head} {first.treatment} first{approval}: {nums(first)}."]
    if len(ordered) > 1:
        parts.append("Then " + ", ".join(f"{c.treatment} ({c.score:.1f})" for c in ordered[1:]) + ".")
    parts.append("Order: ascending cost / p(success), the cheapest expected escalation ladder.")
    if skips:
        parts.append(skips)
    if note:
        parts.append(note)
    if rest:
        parts.append("Not applicable: " + "; ".join(f"{c.treatment} ({c.reason})" for c in rest) + ".")
    return " ".join(parts)


def plan(
    report: ReportView,
    treatments: list[TreatmentInfo],
    policy: Policy,
    past: list[RunStat],
    *,
    digest: str | None = None,
) -> Plan:
    """Order the treatments for one open report and choose the first to try.

    Takes the report, the installed plugins (with the engine's applicability verdict), the policy
    and the past runs. Returns a `Plan`: applicable candidates by ascending
    cost / p(success) (ties: cost, then name), then the others with their reasons (policy entries
    without a plugin included, and those `skipped` on the evidence); `chosen` is the first applicable one,
    never `no_action`, or None.
    `digest` may pass a precomputed `policy_digest(policy)` when planning many reports.
    Raises nothing for well-typed input.
    """
    tallies = _tally(past, policy.learning.cost_model, report.site, policy.learning.other_sites_weight)
    infos = {t.name: t for t in treatments}
    names = list(infos) + [n for n in policy.treatments if n not in infos]
    cands = [_candidate(n, report, infos.get(n), policy, tallies) for n in names]
    ordered = sorted(
        (c for c in cands if c["applicable"]), key=lambda c: (c["score"], c["expected_cost"], c["treatment"])
    )
    rest = sorted(
        (c for c in cands if not c["applicable"]),
        key=lambda c: (c["prior_cost"] is None, c["prior_cost"] or 0.0, c["treatment"]),
    )
    ranked = tuple(Candidate(rank=i, **c) for i, c in enumerate([*ordered, *rest], start=1))
    chosen = ranked[0] if ordered else None
    n = len(ordered)
    w = policy.learning.other_sites_weight
    elsewhere = sum(1 for r in past if r.site not in (None, report.site)) if w < 1.0 and report.site else 0
    note = (f"p(success) counts each of the {elsewhere} past run(s) for other sites' reports as {w:g} of a run "
            f"at {report.site}." if elsewhere else "")
    return Plan(
        report.id,
        ranked,
        chosen,
        _rationale(report, list(ranked[:n]), list(ranked[n:]), note,
                   frozenset(t.name for t in treatments if t.skipped)),
        digest or policy_digest(policy),
    )


def empirical_cost_matrix(past: list[RunStat], policy: Policy) -> list[CostRow]:
    """The cost matrix after learning, for `decide costs`: one row per policy treatment, then ones only past runs name.

    `measured_cost` is the mean over runs (None without runs); `blended_cost` the prior blended with
    them; `p_success_by_kind` the posterior mean for each kind the policy lists or the past runs show
    (a treatment without a policy entry uses a uniform prior p0 = 0.5).
    """
    learning = policy.learning
    tallies = _tally(past, learning.cost_model)
    names = list(policy.treatments) + sorted(n for n in tallies if n not in policy.treatments)
    rows = []
    for name in names:
        entry = policy.treatments.get(name)
        tally = tallies.get(name)
        prior = entry.prior_cost if entry is not None else None
        measured, blended = _blend(prior, tally, learning.cost_strength)
        kinds = sorted(set(entry.fixes if entry is not None else ()) | set(tally.outcomes if tally else ()))
        p_by_kind = {}
        for kind in kinds:
            a, b = _beta(entry.prior_p(kind) if entry is not None else 0.5, learning.prior_strength, tally, kind)
            p_by_kind[kind] = a / (a + b)
        n = tally.n if tally is not None else 0
        mean_wall = tally.wall_sum / n if tally is not None and n else None
        rows.append(CostRow(name, prior, measured, n, blended if blended is not None else 0.0, mean_wall, p_by_kind))
    return rows
