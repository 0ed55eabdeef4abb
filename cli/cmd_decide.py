"""Decision commands: `policy show|validate`, `plan`, `run`, `decisions`, `approve`, `reject`, `labels`, `costs`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.options import JSON_OPT, MAX_COST_OPT, POLICY_OPT
from cli.output import Table, console, emit, esc, fmt_float
from cli.progress import engine_progress, quiet
from cxr.errors import InvalidInput
from registry.entities import DecisionStatus, RunOutcome

if TYPE_CHECKING:  # the engine imports torch: only the commands that treat load it
    from decision.engine import DecisionOutcome, ReportPlan

# The registry (SQLAlchemy) and the policies (pydantic) are imported inside the commands that use them:
# `decide --help` needs neither.
commands = typer.Typer()
policy_app = typer.Typer(help="The decision policy: costs, SLOs, gate, learning.", no_args_is_help=True)
commands.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show_cmd(policy: Path | None = POLICY_OPT, as_json: bool = JSON_OPT) -> None:
    """Show the policy in force and its digest (recorded with every decision)."""
    from policies import load_policy, policy_digest
    from registry.settings import get_settings

    p = load_policy(policy or get_settings().policy)
    data = {"digest": policy_digest(p), **p.model_dump(mode="json")}

    def render() -> None:
        t = Table("treatment", "prior cost", "fixes", "p(success) prior", "approval", "enabled",
                  title=f"policy {p.name} v{p.version}  digest {data['digest'][:16]}…")
        for name, tp in p.treatments.items():
            ps = ", ".join(f"{k} {tp.prior_p(k):.2f}" for k in tp.fixes)
            t.add_row(name, f"{tp.prior_cost:g}", ", ".join(tp.fixes), ps, "yes" if tp.needs_approval else "",
                      "yes" if tp.enabled else "no")
        console.print(t)
        d = p.slos.default
        console.print(f"SLO default: min recall {d.min_recall}, max FPR {d.max_fpr}, min AUROC {d.min_auroc}; "
                      + "; ".join(f"{k}: {v.model_dump(exclude_none=True)}" for k, v in p.slos.pathologies.items()))
        g = p.gate
        console.print(f"gate: non-inferiority margin {g.noninferiority_margin} on the {1 - g.alpha:.0%} DeLong "
                      f"interval, target rule {g.target_rule}, max TP loss {g.max_tp_loss_fraction}")

    emit(data, as_json, render)


@policy_app.command("validate")
def policy_validate_cmd(file: Path = typer.Argument(..., help="A policy TOML file."), as_json: bool = JSON_OPT) -> None:
    """Check a policy file; exit 2 naming the first bad field."""
    from policies import policy_digest, validate_policy_file

    p = validate_policy_file(file)
    out = {"file": str(file), "valid": True, "digest": policy_digest(p)}
    emit(out, as_json, lambda: console.print(f"{file}: valid (digest {out['digest'][:16]}…)"))


def _plan_json(rp: ReportPlan) -> dict:
    r = rp.report
    return {
        "report": {"id": r.id, "model": r.model, "version": r.version, "pathology": r.pathology,
                   "kind": r.kind.value, "metric": r.metric, "value": r.value, "target": r.target, "site": r.site},
        "parent": rp.parent.ref,
        "chosen": rp.plan.chosen.treatment if rp.plan.chosen else None,
        "rationale": rp.plan.rationale,
        "policy_digest": rp.plan.policy_digest,
        "candidates": [c.__dict__ for c in rp.plan.candidates],
    }


def _render_plan(rp: ReportPlan) -> None:
    r = rp.report
    t = Table("#", "treatment", "applicable", "cost", "p(success)", "cost/p", "approval", "reason", fold=True,
              title=f"report {r.id}: {r.pathology} {r.kind.value} at {r.site} "
                    f"({r.metric} {r.value:.3g} vs target {r.target:.3g}) → treat {rp.parent.ref}")
    for c in rp.plan.candidates:
        t.add_row(str(c.rank), c.treatment, "yes" if c.applicable else "no", fmt_float(c.expected_cost, 2),
                  fmt_float(c.p_success, 2), fmt_float(c.score, 2), "needed" if c.needs_approval else "",
                  "" if c.applicable else esc(c.reason))
    console.print(t)
    console.print(f"[dim]{esc(rp.plan.rationale)}[/]")


@commands.command("plan")
def plan_cmd(policy: Path | None = POLICY_OPT, as_json: bool = JSON_OPT) -> None:
    """What the engine would do for each open report, and why. Nothing is claimed, run or written."""
    from decision.engine import Engine

    plans = Engine.from_settings(policy).plan_open()
    data = [_plan_json(rp) for rp in plans]

    def render() -> None:
        if not plans:
            console.print("no open reports")
        for rp in plans:
            _render_plan(rp)

    emit(data, as_json, render)


def _outcome_json(d: DecisionOutcome) -> dict:
    return {
        "report_id": d.report_id, "report_ids": d.report_ids or [d.report_id], "decision_id": d.decision_id,
        "status": d.status.value, "message": d.message,
        "runs": [{"run_id": r.run_id, "treatment": r.treatment, "outcome": r.outcome.value,
                  "version": r.version.ref if r.version else None, "wall_seconds": round(r.wall_seconds, 4),
                  "gate": r.gate.summary if r.gate else None, "notes": r.notes, "error": r.error} for r in d.runs],
    }


def _render_outcome(d: DecisionOutcome) -> None:
    colour = {"succeeded": "green", "awaiting_approval": "yellow"}.get(d.status.value, "red")
    which = (f"site group: reports {', '.join(map(str, d.report_ids))}" if len(d.report_ids) > 1
             else f"report {d.report_id}")
    console.print(f"[bold]decision {d.decision_id}[/] ({which}): [{colour}]{d.status.value}[/] — "
                  f"{esc(d.message)}")
    for r in d.runs:
        mark = {RunOutcome.accepted: "[green]accepted[/]", RunOutcome.rejected: "[yellow]rejected[/]"}.get(
            r.outcome, "[red]failed[/]")
        ver = f" → {r.version.ref}" if r.version else ""
        console.print(f"  {r.treatment}: {mark}{ver} in {r.wall_seconds:.2f}s")
        if r.gate:
            console.print(f"    [dim]{esc(r.gate.summary)}[/]")
        elif r.error:
            console.print(f"    [dim]{esc(r.error)}[/]")


@commands.command("run")
def run_cmd(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."),
    max_cost: float | None = MAX_COST_OPT,
    limit: int = typer.Option(10, help="Claim at most this many open reports."),
    take_over: bool = typer.Option(
        False, "--take-over", help="Reclaim at once the work of runs whose heartbeat stopped (two missed beats); "
        "a run that beat recently is alive and is left alone."),
    policy: Path | None = POLICY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Claim open reports, treat each along its escalation ladder, gate, promote or reject.

    Treatments the policy marks for approval, or above --max-cost, stop the ladder in
    `awaiting_approval`: `decide approve DECISION --reason …` lets the next run continue.

    A run whose process died (no heartbeat for DECIDE_STALE_SECONDS, default 90 s) is taken over by
    the next `decide run`, or with --take-over once it missed two heartbeats (45 s); runs still running
    are listed with when. A decision taken over is resumed where it stopped: the same decision, at the
    same rung, its approval kept.

    A line on stderr as each treatment starts and ends (outcome, seconds, gate summary); -q before
    the command (`decide -q run`) silences them. Exit 1 if a decision ended with every treatment
    rejected or failed.
    """
    from decision.engine import Engine
    from decision.liveness import describe

    engine = Engine.from_settings(policy)
    if not yes:
        plans = engine.plan_open()
        if not sys.stdin.isatty():
            raise InvalidInput("not a terminal: pass --yes to run without confirmation", field="--yes")
        for rp in plans:
            _render_plan(rp)
        if not typer.confirm(f"treat {min(len(plans), limit)} open report(s)?", default=False):
            raise typer.Exit(0)
    with engine_progress(enabled=not quiet(ctx)) as progress:
        engine.progress = progress
        summary = engine.run_pass(max_cost=max_cost, limit=limit, take_over=take_over)
    data = {"worker": summary.worker, "abandoned_runs": summary.abandoned_runs,
            "released_claims": summary.released_claims, "decisions": [_outcome_json(d) for d in summary.decisions],
            "running": [r.__dict__ for r in summary.live_runs], "refused_takeover": summary.refused_takeover,
            "settled_decisions": summary.settled_decisions, "resumed_decisions": summary.resumed_decisions}

    def render() -> None:
        if summary.abandoned_runs:
            console.print(f"[yellow]taken over (no heartbeat):[/] runs {summary.abandoned_runs}")
        if summary.resumed_decisions:
            console.print(f"[yellow]resumed where their process stopped:[/] decisions {summary.resumed_decisions} "
                          f"(by {esc(summary.worker)}; approvals kept)")
        if summary.settled_decisions:
            console.print(f"[yellow]finished (a dead process left them between two steps):[/] decisions "
                          f"{summary.settled_decisions}")
        for run_id in summary.refused_takeover:
            console.print(f"run {run_id} is alive (it beat within the last two heartbeats): not taken over")
        for r in summary.live_runs:
            console.print(esc(describe(r, take_over_given=take_over)))
        if not summary.decisions:
            console.print("nothing to do: no open reports, no approved decisions"
                          + (" (see the running decisions above)" if summary.live_runs else ""))
        for d in summary.decisions:
            _render_outcome(d)

    emit(data, as_json, render)
    if any(d.status == DecisionStatus.exhausted and d.runs for d in summary.decisions):
        raise typer.Exit(1)


def _verdict_cmd(decision: int, reason: str, approve: bool, as_json: bool) -> None:
    if not reason.strip():
        raise InvalidInput("a reason is required", field="--reason")
    from policies import load_policy
    from registry import repo
    from registry.session import session_scope
    from registry.settings import get_settings

    # Four-eyes follows the policy in force (DECIDE_POLICY, else the bundled one), never a flag of this command.
    four_eyes = load_policy(get_settings().policy).approvals.four_eyes
    with session_scope() as s:
        if approve:
            d = repo.approve_decision(s, decision, reason=reason, four_eyes=four_eyes)
        else:
            d = repo.reject_decision(s, decision, reason=reason)
    out = {"decision_id": d.id, "status": d.status.value, "chosen": d.chosen}
    verb = "approved" if approve else "rejected"
    emit(out, as_json, lambda: console.print(f"decision {d.id} {verb}: {d.status.value}"
                                             + (f" ({d.chosen} runs on the next `decide run`)" if approve else "")))


@commands.command("approve")
def approve_cmd(decision: int = typer.Argument(..., help="Decision id (see `decide run` or `decide export`)."),
                reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit trail)."),
                as_json: bool = JSON_OPT) -> None:
    """Approve a decision awaiting approval: its next treatment runs on the next `decide run`.

    Four-eyes: whoever created the decision ($DECIDE_ACTOR, else the OS user)
    may not approve it (exit 2; the refusal is recorded in the audit trail)
    unless the policy sets approvals.four_eyes = false.

    Example: DECIDE_ACTOR=dr.lee decide approve 7 --reason "reviewed with the site lead"
    """
    _verdict_cmd(decision, reason, True, as_json)


@commands.command("reject")
def reject_cmd(decision: int = typer.Argument(..., help="Decision id."),
               reason: str = typer.Option(..., "--reason", help="Why (recorded in the audit trail)."),
               as_json: bool = JSON_OPT) -> None:
    """Reject a decision awaiting approval (final)."""
    _verdict_cmd(decision, reason, False, as_json)


@commands.command("decisions")
def decisions_cmd(
    status: DecisionStatus | None = typer.Option(None, "--status", help="Only this status (e.g. awaiting_approval)."),
    ids: bool = typer.Option(False, "--ids", help="Print only the ids, one per line (for scripts)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Decisions with their chosen treatment and status, newest first."""
    from datetime import timedelta

    from decision.liveness import describe, running_now
    from registry import repo
    from registry.session import session_scope
    from registry.settings import get_settings

    with session_scope(read_only=True) as s:
        rows = list(reversed(repo.list_decisions(s, status=status)))
        running = {} if ids else {
            r.decision_id: r for r in running_now(s, timedelta(seconds=get_settings().stale_seconds))}
    if ids:
        sys.stdout.write("".join(f"{d.id}\n" for d in rows))
        return

    def heartbeat(d) -> dict | None:
        r = running.get(d.id)
        if r is None:
            return None
        return {"run_id": r.run_id, "treatment": r.treatment, "heartbeat_age_s": round(r.heartbeat_age_s, 1),
                "takeover_in_s": round(r.takeover_in_s, 1), "take_over_in_s": round(r.take_over_in_s, 1)}

    def group_of(d) -> dict | None:
        return (d.evidence or {}).get("site_group")

    def reports_cell(d) -> str:
        g, deferred = group_of(d), (d.evidence or {}).get("site_group_deferred")
        text = ", ".join(map(str, d.report_ids))
        if g and len(d.report_ids) > 1:
            return f"{text} (site group {g.get('site')}, {g.get('level')}-level)"
        if isinstance(deferred, dict) and deferred.get("taken_by") is not None:
            return f"{text} (→ decision {deferred['taken_by']})"
        return text

    data = [{"id": d.id, "reports": d.report_ids, "site_group": group_of(d), "status": d.status.value,
             "chosen": d.chosen, "rationale": d.rationale, "updated_at": d.updated_at, "running": heartbeat(d)}
            for d in rows]

    def render() -> None:
        t = Table("id", "reports", "status", "chosen / waiting on", "updated", title=f"{len(rows)} decision(s)")
        for d in rows:
            t.add_row(str(d.id), reports_cell(d), d.status.value, d.chosen or "—",
                      d.updated_at.strftime("%Y-%m-%d %H:%M"))
        console.print(t)
        for d in rows:
            if d.id in running:
                console.print(esc(describe(running[d.id])))

    emit(data, as_json, render)


@commands.command("labels")
def labels_cmd(
    decision: int = typer.Argument(..., help="A decision that requests labels (a distribution_shift report's)."),
    out: Path | None = typer.Option(None, "--out", help="Write the CSV here instead of standard output."),
    as_json: bool = JSON_OPT,
) -> None:
    """The studies a label request asks a person to have labelled, most shifted first, as CSV (rank, image id,
    site, the model's score, the data set that holds it).

    Example: decide labels 12 --out label-request-12.csv
    """
    import csv
    import io

    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        d = repo.get_decision(s, decision)
        request = (d.evidence or {}).get("label_request")
        if not request:
            raise InvalidInput(f"decision {decision} requests no labels (it answers no distribution_shift report)",
                               field="decision")
        report = repo.get_report(s, d.report_ids[0])
        windows = [w for w in repo.list_windows(s, site=report.site)
                   if (w.window_start, w.window_end) == (report.window_start, report.window_end)]
        names = {x.id: x.name for x in repo.list_datasets(s, ids=[w.dataset_id for w in windows if w.dataset_id])}
    scores = {c["image_id"]: c.get("score") for c in report.cases}
    dataset = next((names[w.dataset_id] for w in reversed(windows) if w.dataset_id in names), "")
    rows = [{"rank": i + 1, "image_id": image_id, "site": request["site"], "score": scores.get(image_id),
             "dataset": dataset} for i, image_id in enumerate(request["studies"])]
    if as_json:
        emit(rows, True, lambda: None)
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["rank", "image_id", "site", "score", "dataset"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        out.write_text(buf.getvalue())
        console.print(f"{len(rows)} studies to label → {out}")


@commands.command("costs")
def costs_cmd(policy: Path | None = POLICY_OPT, as_json: bool = JSON_OPT) -> None:
    """The empirical cost matrix — each treatment's prior cost vs what its runs measured, and p(success) — and
    the ladder: per rung and issue kind, how often it was tried and accepted, and why it was rejected (the
    failing gate checks, counted)."""
    from decision.ladder import ladder_stats
    from decision.past_runs import run_stats
    from decision.planner import empirical_cost_matrix
    from policies import load_policy
    from registry import repo
    from registry.session import session_scope
    from registry.settings import get_settings

    p = load_policy(policy or get_settings().policy)
    with session_scope(read_only=True) as s:
        rows = empirical_cost_matrix(run_stats(s), p)
        ladder = ladder_stats(repo.list_runs(s), repo.run_kinds(s))
    by_treatment: dict[str, dict] = {}
    for r in ladder:
        by_treatment.setdefault(r.treatment, {})[r.kind] = {
            "tried": r.tried, "accepted": r.accepted, "held": r.held, "rejected": r.rejected, "failed": r.failed,
            "site_scoped": r.site_scoped, "reasons": dict(r.top_reasons(10))}
    data = [r.__dict__ | {"ladder": by_treatment.get(r.treatment, {})} for r in rows]

    def render() -> None:
        t = Table("treatment", "prior", "measured", "blended", "runs", "mean wall s", "p(success) by kind",
                  title="empirical cost matrix (prior blended with measured runs)", fold=True)
        for r in rows:
            t.add_row(r.treatment, fmt_float(r.prior_cost, 1), fmt_float(r.measured_cost, 2),
                      fmt_float(r.blended_cost, 2), str(r.n_runs), fmt_float(r.mean_wall_seconds, 2),
                      ", ".join(f"{k} {v:.2f}" for k, v in r.p_success_by_kind.items()))
        console.print(t)
        if not ladder:
            return
        lt = Table("treatment", "kind", "tried", "accepted", "held", "rejected", "failed", "top rejection reasons",
                   title="the ladder: what each rung came to", fold=True)
        for r in ladder:
            acc = f"{r.accepted}" + (f" ({r.site_scoped} one site)" if r.site_scoped else "")
            lt.add_row(r.treatment, r.kind, str(r.tried), acc, str(r.held), str(r.rejected), str(r.failed),
                       esc("; ".join(f"{name} ×{n}" for name, n in r.top_reasons(3))))
        console.print(lt)

    emit(data, as_json, render)
