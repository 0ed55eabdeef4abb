"""`decide demo`: the whole loop on the embedded phantom, ending with a rich summary and report.html."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from cli.output import Table, console, emit, esc, fmt_float
from cli.progress import quiet, step_reporter

commands = typer.Typer()


def _render(data: dict[str, Any], export: dict[str, Any]) -> None:
    console.rule("[bold]cxr-decide demo")
    t = data["timings"]
    console.print(f"home {data['home']}  ·  registry {esc(data.get('database', ''))}  ·  "
                  f"baseline {data['baseline']} → production [bold]{data['production']}[/]  ·  "
                  f"{'trained now' if data['trained_now'] else 'baseline reused from the home'}  ·  "
                  f"{t.get('total_s', 0):.1f}s (data {t.get('data_s', 0):.1f}s, train {t.get('train_s', 0):.1f}s, "
                  f"monitor+treat {t.get('monitor_and_treat_s', 0):.1f}s)")

    rt = Table("id", "version", "site", "pathology", "kind", "metric", "target", "window", "status",
               title="error reports")
    for r in export["reports"]:
        site = r["site"] + (f" · {r['subgroup']}" if r.get("subgroup") else "")
        rt.add_row(str(r["id"]), f"{r['model']}:{r['version']}", site, r["pathology"], r["kind"],
                   f"{r['metric']} {r['value']:.3f}", f"{r['target']:.3g}", str(r["window_start"])[:10],
                   r["status"])
    console.print(rt)

    runs_by_decision: dict[int, list[dict]] = {}
    for run in export["runs"]:
        runs_by_decision.setdefault(run["decision_id"], []).append(run)
    for d in export["decisions"]:
        dt = Table("#", "treatment", "cost", "p(success)", "cost/p", "approval", "outcome",
                   title=f"decision {d['id']} (reports {d['report_ids']}): {d['status']}", title_justify="left")
        outcomes = {r["treatment"]: r for r in runs_by_decision.get(d["id"], [])}
        for c in d["candidates"]:
            if not c["applicable"]:
                continue
            run = outcomes.get(c["treatment"])
            res = "—" if run is None else run["outcome"]
            if run is not None and run["outcome"] != "accepted":
                why = run["metrics"].get("gate", {}).get("summary") or run["error_text"]
                res += f": {esc(why.removeprefix('rejected: '))}"
            dt.add_row(str(c["rank"]), c["treatment"], fmt_float(c["expected_cost"], 2), fmt_float(c["p_success"], 2),
                       fmt_float(c["score"], 2), "needed" if c["needs_approval"] else "", res)
        console.print(dt)
        console.print(f"[dim]{esc(d['rationale'])}[/]")

    acc = data["acceptance"]
    vt = Table("evaluation set", "serving", "Cardiomegaly FPR", "target", "Cardiomegaly recall",
               "worst other ΔAUROC (95% lo)",
               title=f"what serves each site now vs baseline {acc['baseline']}, on held-out evaluation sets")
    for name, row in acc["datasets"].items():
        vt.add_row(name, row["version"],
                   f"{fmt_float(row['cardiomegaly_fpr_baseline'])} → {fmt_float(row['cardiomegaly_fpr'])}",
                   f"≤ {acc['target_fpr']}", fmt_float(row["cardiomegaly_recall"]),
                   f"{fmt_float(row['worst_other_auroc_delta_lo'], 4)} ({row['worst_other_pathology']}; "
                   f"margin −{acc['margin']})")
    console.print(vt)

    from rich.panel import Panel
    from rich.tree import Tree

    tree = Tree("[bold]lineage")
    nodes: dict[int, Tree] = {}
    runs = {r["id"]: r for r in export["runs"]}
    for v in sorted(export["versions"], key=lambda v: v["id"]):
        how = runs.get(v["treatment_run_id"], {}).get("treatment", "baseline")
        label = f"{v['model']}:{v['version']} [{v['status']}] ({how})"
        parent = nodes.get(v["parent_id"])
        nodes[v["id"]] = (parent or tree).add(label)
    console.print(tree)

    audit = data["audit"] or {}
    ok = audit.get("ok")
    verdicts = [
        ("audit chain", bool(ok), f"{audit.get('checked', 0)} events verified" if ok else str(audit.get("reason"))),
        (f"Cardiomegaly FPR at {', '.join(acc.get('sites', []))} ≤ target",
         acc["cardiomegaly_fpr_at_or_under_target"], ""),
        ("every other pathology within the non-inferiority margin", acc["others_within_margin"],
         _underpowered(acc)),
    ]
    new = data.get("new_site")
    if new and not new.get("skipped"):
        fix = new.get("early_block_fix")
        verdicts.append((f"{new['site']}: input-level shift fixed by re-training an early block", bool(fix),
                         f"({fix['version']}, block {fix['block']}, {fix['serving']})" if fix else
                         "(no early-block candidate was promoted: see its decision)"))
    elif new and new["skipped"].startswith("no report"):  # nothing to fix there: said, not failed
        verdicts.append((f"{new['site']}: its first labelled week", True, f"({new['skipped']})"))
    lf = data.get("label_free")
    if lf:
        verdicts.append((f"{lf['site']}: its shift reported before any label", bool(lf["shifted"] and lf["report_id"]),
                         f"(distribution_shift report {lf['report_id']}, {lf['label_request']} studies to label; "
                         f"labels vs estimates: {lf['realised'] or 'not yet'})"))
    group = data.get("site_group")
    if group and not group.get("skipped"):
        _render_reach(group)
        verdicts.append((f"{group['site']}: one site decision ({group['decision_id']}) for reports "
                         f"{', '.join(map(str, group['report_ids']))}", bool(group["resolved"]),
                         f"(resolved: {'; '.join(group['resolved']) or 'none'} — still open: "
                         f"{'; '.join(group['still_open']) or 'none'})"))
    lines = [f"{'[green]✔' if good else '[red]✘'}[/] {name} {esc(detail)}" for name, good, detail in verdicts]
    if data["report_html"]:
        lines.append(f"report: {data['report_html']}")
    console.print(Panel("\n".join(lines), title="checks"))


def _render_reach(group: dict[str, Any]) -> None:
    """Why the site decision fixed what it fixed: the best FPR any threshold reaches within the gate's bounds."""
    rows = group.get("reach") or []
    if not rows:
        return
    refs = list(rows[0]["best_fpr"])
    t = Table("pathology", "target FPR", *refs, title=f"site decision {group['decision_id']} at {group['site']}: "
              f"best FPR any threshold reaches on {rows[0]['dataset']} within {rows[0]['bounds']}")
    for r in rows:
        t.add_row(r["pathology"], f"≤ {r['target']:.2f}", *(fmt_float(r["best_fpr"].get(ref)) for ref in refs))
    console.print(t)


def _underpowered(acc: dict[str, Any]) -> str:
    """The checks the gate's power rule passed (underpowered, no significant harm), said, not hidden."""
    weak = [f"{', '.join(row['underpowered'])} at {row['site']}" for row in acc["datasets"].values()
            if row.get("underpowered")]
    return f"(or underpowered with no significant harm: {'; '.join(weak)})" if weak else ""


@commands.command("demo")
def demo_cmd(
    ctx: typer.Context,
    home: Path = typer.Option(Path(".decide-demo"), "--home",
                              help="Demo home: blobs, caches, report.html, and the SQLite registry unless "
                                   "$DECIDE_DATABASE_URL names another database."),
    epochs: int = typer.Option(5, help="Baseline training epochs."),
    n_train: int = typer.Option(8000, help="site-a training films."),
    n_calibration: int = typer.Option(2000, min=100, help="site-a calibration films (operating points)."),
    n_evaluation: int = typer.Option(2000, min=100, help="Held-out evaluation films, at site-a and at site-b each."),
    weeks: int = typer.Option(3, help="Weeks of site-b feedback to replay."),
    per_week: int = typer.Option(1000, help="Labelled site-b studies per week."),
    seed: int = typer.Option(0, help="Seed of data, weights and treatments."),
    new_site: bool = typer.Option(
        True, "--new-site/--no-new-site",
        help="End with site-e's first week: films through a washed-out look-up table (an input-level shift), "
             "fixed by re-training the first dense block (about a minute more).",
    ),
    label_free: bool = typer.Option(
        True, "--label-free/--no-label-free",
        help="Start site-b with its first week without labels: the label-free monitor reports the shift before "
             "any label and asks for labels (seconds more).",
    ),
    site_group: bool = typer.Option(
        True, "--site-group/--no-site-group",
        help="After site-b's labelled weeks, play the person who approves its site decision (the reports that "
             "share site-b's shift, one augmentation retrain for all of them; about two minutes more).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the whole loop on the embedded phantom data: train at site-a, watch site-b, fix, prove, record.

    No network, nothing else needed. The home keeps blobs, the phantom's pixels, training checkpoints,
    features and (by default) a SQLite registry: run it again and it reuses them (and re-decides nothing).
    With $DECIDE_DATABASE_URL set (e.g. postgresql+psycopg://user@host/db) the registry is that
    database: versions, decisions and the audit trail go there; blobs stay in the home (keep both).
    $DECIDE_POLICY, when set, is the policy the demo decides by (default: the bundled one).
    Open HOME/report.html for the plots; then try `decide --home HOME history`, `lineage`, `audit verify`.

    Each step, and each treatment's start and end, is a line on stderr (also with --json);
    `decide -q demo` silences them.
    """
    from sqlalchemy.engine import make_url

    from decision.demo import DemoConfig, run_demo, summary_rows
    from policies import load_policy
    from registry.session import database_url
    from registry.settings import get_settings

    home = home.expanduser().resolve()
    os.environ["DECIDE_HOME"] = str(home)
    url = database_url()  # $DECIDE_DATABASE_URL, else the home's registry.db
    shown = make_url(url).render_as_string(hide_password=True)
    cfg = DemoConfig(seed=seed, n_train=n_train, n_calibration=n_calibration, n_evaluation=n_evaluation,
                     epochs=epochs, weeks=weeks, per_week=per_week, new_site="site-e" if new_site else None,
                     unlabelled_first=label_free, site_group=site_group)
    policy_file = get_settings().policy  # $DECIDE_POLICY, else the bundled default
    with step_reporter(enabled=not quiet(ctx)) as say:
        say("registry", shown + (" ($DECIDE_DATABASE_URL)" if os.environ.get("DECIDE_DATABASE_URL") else ""))
        if policy_file is not None:
            say("policy", f"{policy_file} ($DECIDE_POLICY)")
        result = run_demo(home, url, load_policy(policy_file), cfg, progress=say)
    data = summary_rows(result) | {"database": shown}
    emit(data, as_json, lambda: _render(data, result.export))
    acc = result.acceptance
    if not (acc["cardiomegaly_fpr_at_or_under_target"] and (result.export.get("audit_verification") or {}).get("ok")):
        raise typer.Exit(1)
