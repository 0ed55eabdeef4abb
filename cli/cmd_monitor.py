"""Monitoring commands: `monitor run` (one pass now, labelled or `--unlabelled`), `monitor schedule` (passes
on a cron schedule), `monitor schedules`, `monitor passes`, `monitor drift` (a site's unlabelled windows),
`monitor unschedule`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.options import JSON_OPT, MAX_COST_OPT, POLICY_OPT
from cli.output import Table, console, emit, err_console, esc, fmt_float
from cli.progress import engine_progress, quiet
from cxr import clock
from cxr.errors import InvalidInput

if TYPE_CHECKING:  # the jobs and the scheduler import the engine (torch): loaded by the commands that run
    from decision.scheduler import PassOutcome

# The registry (SQLAlchemy) and the settings (pydantic) are imported inside the commands that use them:
# `decide --help` needs neither.
SOURCE_HELP = (
    "Where the labelled feedback comes from: phantom:SITE replays the phantom's feedback of SITE one week "
    "at a time (the embedded default); folder:DIR[:CSV] reads a folder of labelled studies (CSV of labels, "
    "default DIR/labels.csv); nih:DIR reads NIH ChestX-ray14 images and metadata; films:DIR reads a folder of "
    "films without labels (PNG, JPEG, DICOM: with --unlabelled only)."
)
SITE_HELP = "The hospital/site whose feedback this is (reports and treatments are per site)."
MODEL_OPT = typer.Option("cxr", "--model", help="Registered model whose production version is watched.")
PER_WINDOW_OPT = typer.Option(1000, "--per-window", min=1, help="Feedback studies per window (phantom: per week).")

monitor_app = typer.Typer(
    help=(
        "Watch the production model on labelled feedback and treat what breaks.\n\n"
        "A pass: score one window of labelled feedback with the production version, compare each "
        "pathology's recall, false-positive rate and AUROC per site with the policy's SLOs, ingest an "
        "error report for each clear breach, then let the decision engine treat the open reports "
        "(cheapest likely fix first, gated on held-out data, promoted or rejected)."
    ),
    no_args_is_help=True,
)
commands = typer.Typer()
commands.add_typer(monitor_app, name="monitor")


def _render_summary(data: dict[str, Any]) -> None:
    console.print(f"[bold]week {data['week']}[/] {data['window'][0][:10]} → {data['window'][1][:10]}: "
                  f"{data['version']} on {data['dataset']}"
                  + (f" — read {data['studies']:,} stud{'y' if data['studies'] == 1 else 'ies'}"
                     if "studies" in data else ""))
    if data.get("unlabelled"):
        _render_unlabelled(data)
    elif data.get("watched", "every pathology") != "every pathology":
        console.print(f"watching: {esc(data['watched'])}")
    if data.get("unlabelled"):
        pass
    elif data["breaches"]:
        t = Table("pathology", "site", "breach", "recall", "FPR", "AUROC",
                  title="SLO breaches (whole 95% interval on the wrong side)")
        for b in data["breaches"]:
            t.add_row(b["pathology"], b["site"], ", ".join(b["breaches"]), fmt_float(b["recall"]),
                      fmt_float(b["fpr"]), fmt_float(b["auroc"]))
        console.print(t)
    else:
        console.print("no SLO breach in this window")
    if not data.get("unlabelled"):
        console.print(f"reports: {data['reports_created']} new, {data['reports_existing']} already known"
                      + (f"; still open from earlier windows: {len(data['still_open'])}" if data["still_open"]
                         else ""))
        if (real := data.get("realised")) is not None:
            console.print(f"label-free estimates of this window vs its labels: {esc(real['summary'])}")
    if data["abandoned_runs"]:
        console.print(f"[yellow]runs marked abandoned (no heartbeat):[/] {data['abandoned_runs']}")
    for d in data["decisions"]:
        colour = {"succeeded": "green", "awaiting_approval": "yellow"}.get(d["status"], "red")
        console.print(f"[bold]decision {d['decision_id']}[/] (report {d['report_id']}): "
                      f"[{colour}]{d['status']}[/] — {esc(d['message'])}")
        for r in d["runs"]:
            ver = f" → {r['version']}" if r["version"] else ""
            console.print(f"  {r['treatment']}: {r['outcome']}{ver} in {r['wall_seconds']:.2f}s"
                          + (f" [dim]{esc(r['error'])}[/]" if r["error"] else ""))


def _render_unlabelled(data: dict[str, Any]) -> None:
    tests, ood = data["tests"], data["ood"]
    colour = "yellow" if data["shifted"] else "green"
    console.print(f"[{colour}]{'shifted' if data['shifted'] else 'no shift'}[/] — {esc(tests['summary'])}")
    if ood.get("n"):
        console.print(f"outside what {data['version']} was validated on: {ood['outside']} of {ood['n']} studies "
                      f"({fmt_float(ood['share'])}; per-study false-alarm rate {ood['rate']:.2%})")
    t = Table("pathology", "estimate", "recall (95%)", "FPR (95%)", "positive rate", "why not",
              title="label-free estimates at the site's operating points, worst first", fold=True)
    for e in data["estimates"][:8]:
        ci = lambda v, c: "—" if v is None else f"{v:.2f} [{c[0]:.2f}, {c[1]:.2f}]"  # noqa: E731
        t.add_row(e["pathology"], "valid" if e["valid"] else "not valid", ci(e["recall"], e["recall_ci"] or (0, 0)),
                  ci(e["fpr"], e["fpr_ci"] or (0, 0)), fmt_float(e["positive_rate"]), esc(e["reason"] or ""))
    console.print(t)
    if data["report_id"] is not None:
        console.print(f"distribution_shift report {data['report_id']} filed; the {len(data['moved'])} studies that "
                      "moved most are its cases (what to label first)")
    for note in data["notes"]:
        console.print(f"[dim]{esc(note)}[/]")


@monitor_app.command("run")
def run_cmd(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", help=SOURCE_HELP),
    site: str = typer.Option(..., "--site", help=SITE_HELP),
    model: str = MODEL_OPT,
    week: int | None = typer.Option(
        None, "--week", min=1,
        help="Feedback window to read, 1-based (phantom: the replayed week). Default: the one after the latest "
             "already monitored at this site.",
    ),
    per_window: int = PER_WINDOW_OPT,
    max_cost: float | None = MAX_COST_OPT,
    no_treat: bool = typer.Option(False, "--no-treat", help="Monitor and ingest only; leave reports open."),
    pathology: list[str] = typer.Option(
        [], "--pathology", metavar="NAME",
        help="Watch only this pathology (repeatable), e.g. what the site's radiologists audit. Default: every "
             "output with an SLO.",
    ),
    kind: list[str] = typer.Option(
        [], "--kind", metavar="KIND",
        help="Report only this issue kind (repeatable): false_positives, false_negatives or auroc_drop. "
             "Default: all three.",
    ),
    unlabelled: bool = typer.Option(
        False, "--unlabelled",
        help="Judge the window without reading its labels: drift tests, label-free estimates and the share of "
             "studies outside what the version was validated on, against its reference; a shifted window files "
             "a distribution_shift report, which the policy answers with a request for labels.",
    ),
    policy: Path | None = POLICY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Run one pass now: feedback window → monitor → ingest reports → decide → treat (bounded by --max-cost).

    Example: decide monitor run --source phantom:site-b --site site-b --week 1

    Example: decide monitor run --source phantom:site-e --site site-e --pathology Cardiomegaly --kind false_positives

    Re-running a window stores nothing twice. A line on stderr as each treatment starts and ends
    (`decide -q monitor run …` silences them). Exit 1 if a decision ended with every treatment
    rejected or failed (as `decide run`).
    """
    from decision.engine import Engine
    from decision.jobs import Watch, monitor_pass, next_window_index
    from decision.scheduler import job_summary
    from registry.settings import get_settings

    if unlabelled and (pathology or kind):
        raise InvalidInput("--pathology and --kind narrow the labelled monitor; an unlabelled window is tested "
                           "as a whole", field="unlabelled")
    index = week - 1 if week is not None else next_window_index(source, site, unlabelled=unlabelled)
    engine = Engine.from_settings(policy)
    with engine_progress(enabled=not quiet(ctx)) as progress:
        engine.progress = progress
        result = monitor_pass(engine, model, source, site, index=index, per_window=per_window, max_cost=max_cost,
                              treat=not no_treat, stale_after=timedelta(seconds=get_settings().stale_seconds),
                              watch=Watch(tuple(pathology), tuple(kind)), unlabelled=unlabelled)
    data = job_summary(result)
    data["studies"] = result.monitor.dataset.size  # how many studies this pass read
    emit(data, as_json, lambda: _render_summary(data))
    if any(d["status"] == "exhausted" and d["runs"] for d in data["decisions"]):
        raise typer.Exit(1)


def _print_outcome(out: PassOutcome) -> None:
    when = out.fire_time.strftime("%Y-%m-%d %H:%M:%S")
    if not out.ran:
        err_console.print(f"[dim]{when} schedule {out.schedule_id}: skipped ({esc(out.reason)})[/]")
    elif out.status is not None and out.status.value == "succeeded":
        err_console.print(f"{when} schedule {out.schedule_id}: pass {out.pass_id} [green]succeeded[/]")
    else:
        err_console.print(f"{when} schedule {out.schedule_id}: pass {out.pass_id} [red]failed[/] — "
                          f"{esc(out.reason)}")


@monitor_app.command("schedule")
def schedule_cmd(
    ctx: typer.Context,
    cron: str = typer.Option(
        ..., "--cron",
        help='When to run, as a crontab in UTC: "minute hour day month weekday", e.g. "0 6 * * 1" (Mondays '
             '06:00), "*/30 * * * *" (every 30 minutes); weekday 0 or 7 = Sunday. Six fields put seconds first: '
             '"*/10 * * * * *" (every 10 seconds).',
    ),
    source: str = typer.Option(..., "--source", help=SOURCE_HELP),
    site: str = typer.Option(..., "--site", help=SITE_HELP),
    name: str = typer.Option("default", "--name", help="Schedule name; storing the same name again updates it."),
    model: str = MODEL_OPT,
    per_window: int = PER_WINDOW_OPT,
    max_cost: float | None = MAX_COST_OPT,
    no_run: bool = typer.Option(False, "--no-run", help="Only store the schedule; do not start the scheduler."),
    unlabelled: bool = typer.Option(False, "--unlabelled", help="Judge each window without reading its labels "
                                    "(as `monitor run --unlabelled`)."),
    policy: Path | None = POLICY_OPT,
) -> None:
    """Store a schedule in the registry, then run every enabled schedule in the foreground until stopped.

    Each fire runs one pass (as `monitor run`) on the next feedback window; a pass that fails is recorded
    and the next one proceeds. Schedules live in the registry: a restarted scheduler resumes them, and
    several scheduler processes on one database run each pass once (a lease per schedule plus one pass
    row per fire time). SIGTERM or Ctrl-C: no new passes, a running pass finishes; a second signal
    interrupts it (recorded as failed). Each pass's treatments print a line on stderr as they start and
    end (`decide -q monitor schedule …` silences them). Exit 0.

    Example: decide monitor schedule --cron "0 6 * * 1" --source phantom:site-b --site site-b
    """
    from decision.jobs import feedback_source
    from decision.scheduler import Scheduler, cron_trigger
    from registry import repo
    from registry.session import session_scope

    trigger = cron_trigger(cron)
    feedback_source(source, site, 0, per_window, 32)  # refuses an unknown source kind now, not at the first fire
    with session_scope() as s:
        sc = repo.upsert_schedule(s, name, cron=cron, model=model, source=source, site=site, per_window=per_window,
                                  max_cost=max_cost, unlabelled=unlabelled)
    nxt = trigger.get_next_fire_time(None, clock.now())
    console.print(f"schedule [bold]{sc.name}[/] stored: {sc.cron} (UTC) → {sc.model} on {sc.source} at {sc.site}"
                  f"{' (unlabelled)' if sc.unlabelled else ''}, "
                  f"next window week {sc.next_index + 1}, next fire {nxt:%Y-%m-%d %H:%M:%S}")
    if no_run:
        return
    err_console.print("scheduler running (SIGTERM or Ctrl-C to stop)")
    scheduler = Scheduler(policy_path=policy, on_outcome=_print_outcome)
    with engine_progress(enabled=not quiet(ctx)) as progress:
        scheduler.engine().progress = progress
        code = scheduler.serve()
    raise typer.Exit(code)


@monitor_app.command("schedules")
def schedules_cmd(as_json: bool = JSON_OPT) -> None:
    """The stored schedules, their next fire time and their latest pass."""
    from decision.scheduler import cron_trigger
    from registry import repo
    from registry.session import session_scope

    now = clock.now()
    with session_scope(read_only=True) as s:
        rows = []
        for sc in repo.list_schedules(s):
            last = repo.list_passes(s, schedule_id=sc.id, limit=1)
            try:
                nxt = cron_trigger(sc.cron).get_next_fire_time(None, now) if sc.enabled else None
            except Exception:  # a cron stored by hand may not parse: shown, never scheduled
                nxt = None
            rows.append({**sc.__dict__, "next_fire": nxt, "last_pass": last[0].__dict__ if last else None})

    def render() -> None:
        if not rows:
            console.print("no schedules: `decide monitor schedule --cron … --source … --site …` stores one")
            return
        t = Table("name", "cron", "model", "source", "site", "per window", "max cost", "next week", "next fire",
                  "last pass", title="schedules (cron in UTC)")
        for r in rows:
            lp = r["last_pass"]
            name = r["name"] + ("" if r["enabled"] else " (disabled)") + (" (unlabelled)" if r["unlabelled"] else "")
            t.add_row(name, r["cron"], r["model"], r["source"],
                      r["site"], str(r["per_window"]), fmt_float(r["max_cost"], 1), str(r["next_index"] + 1),
                      f"{r['next_fire']:%Y-%m-%d %H:%M:%S}" if r["next_fire"] else "—",
                      f"{lp['status'].value} {lp['fire_time']:%Y-%m-%d %H:%M:%S}" if lp else "—")
        console.print(t)

    emit(rows, as_json, render)


@monitor_app.command("passes")
def passes_cmd(
    schedule: str | None = typer.Option(None, "--schedule", help="Only this schedule's passes (name)."),
    limit: int = typer.Option(20, "--limit", min=1, help="Show the newest N passes."),
    as_json: bool = JSON_OPT,
) -> None:
    """Recent scheduled passes: which process ran each fire, on which window, and how it ended."""
    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        names = {sc.id: sc.name for sc in repo.list_schedules(s)}
        sid = repo.get_schedule(s, schedule).id if schedule is not None else None
        rows = [p.__dict__ | {"schedule": names.get(p.schedule_id)}
                for p in repo.list_passes(s, schedule_id=sid, limit=limit)]

    def render() -> None:
        if not rows:
            console.print("no passes yet")
            return
        t = Table("id", "schedule", "fire time", "week", "holder", "status", "seconds", "reports", "decisions",
                  "error", title="scheduled passes (times in UTC)", fold=True)
        for p in rows:
            sm = p["summary"] or {}
            secs = (p["finished_at"] - p["started_at"]).total_seconds() if p["finished_at"] else None
            colour = {"succeeded": "green", "running": "cyan"}.get(p["status"].value, "red")
            t.add_row(str(p["id"]), p["schedule"] or "(deleted)", f"{p['fire_time']:%Y-%m-%d %H:%M:%S}",
                      str(p["window_index"] + 1), p["holder"], f"[{colour}]{p['status'].value}[/]",
                      fmt_float(secs, 1), str(sm.get("reports_created", "")),
                      ", ".join(d["status"] for d in sm.get("decisions", [])), esc(p["error_text"][:80]))
        console.print(t)

    emit(rows, as_json, render)


@monitor_app.command("drift")
def drift_cmd(
    site: str = typer.Argument(..., help="The site whose unlabelled windows to show."),
    as_json: bool = JSON_OPT,
) -> None:
    """A site's unlabelled windows over time: shifted or not, the worst test, the OOD share, the worst
    label-free estimate, the report filed and — once labels came — whether they agreed with the estimate.

    Example: decide monitor drift site-b
    """
    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        windows = repo.list_windows(s, site=site)
        refs = {v.id: f"{v.model}:{v.version}" for v in repo.list_versions(s)}
    rows = [w.__dict__ | {"version": refs.get(w.version_id)} for w in windows]

    def render() -> None:
        if not rows:
            console.print(f"no unlabelled window recorded for {esc(site)} (`decide monitor run --unlabelled`)")
            return
        t = Table("window", "version", "studies", "shift", "worst test (adjusted p)", "OOD share", "report",
                  "labels vs estimate", title=f"unlabelled windows at {site}", fold=True)
        for w in rows:
            tests, real = w["tests"] or {}, w["realised"] or {}
            worst = next((x for x in tests.get("tests", []) if x["name"] == tests.get("worst")), None)
            t.add_row(f"{w['window_start']:%Y-%m-%d}", w["version"] or "?", str(w["n_studies"]),
                      "[yellow]shifted[/]" if w["shifted"] else ("no" if tests.get("tested") else "not tested"),
                      f"{worst['name']} {worst['p_adjusted']:.2g}" if worst else "—",
                      fmt_float((w["ood"] or {}).get("share")), str(w["report_id"] or ""),
                      esc(real.get("summary", "no labels yet")))
        console.print(t)

    emit(rows, as_json, render)


@monitor_app.command("unschedule")
def unschedule_cmd(name: str = typer.Argument(..., help="Schedule name (see `decide monitor schedules`)."),
                   as_json: bool = JSON_OPT) -> None:
    """Delete a schedule; its past passes stay. Running schedulers drop it within their next re-sync (30 s)."""
    from registry import repo
    from registry.session import session_scope

    with session_scope() as s:
        gone = repo.delete_schedule(s, name)
    emit({"deleted": gone.name, "id": gone.id}, as_json, lambda: console.print(f"schedule {gone.name} deleted"))
