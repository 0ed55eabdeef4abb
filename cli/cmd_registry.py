"""Registry commands: init, db, register, ingest, reports, history, show, lineage, diff, rollback, audit, export.

Each command opens one transaction through `session_scope()`, calls registry
or decision functions, and renders plain data (a rich table, or `--json`).
Only `decide init` and `decide db upgrade` create or migrate the database;
every other command needs a registry at the current schema and exits 2 with
"no registry here: run `decide init`" or "database is behind: back up, then
run `decide db upgrade`" otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path

import typer

from cli import lazy
from cli.output import Table, console, emit, error_line, esc, fmt_float, to_json
from registry.entities import ReportStatus

# Imported when a command first uses them (SQLAlchemy, pydantic): `decide --help` needs none of them.
reports = lazy.module("decision.error_reports")
audit = lazy.module("registry.audit")
repo = lazy.module("registry.repo")
export_all = lazy.function("registry.export", "export_all")
current_revision = lazy.function("registry.session", "current_revision")
database_url = lazy.function("registry.session", "database_url")
downgrade = lazy.function("registry.session", "downgrade")
head_revision = lazy.function("registry.session", "head_revision")
init_registry = lazy.function("registry.session", "init_registry")
session_scope = lazy.function("registry.session", "session_scope")
db_upgrade = lazy.function("registry.session", "upgrade")
get_settings = lazy.function("registry.settings", "get_settings")

NEEDS_DB = "Needs a registry (`decide init`) at the current schema (`decide db upgrade`)."
JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")



def _needs_db(fn):
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n" + NEEDS_DB
    return fn


db_app = typer.Typer(help="Schema migrations (Alembic, run from code).", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail.", no_args_is_help=True)
schema_app = typer.Typer(help="JSON Schemas of the inputs decide accepts.", no_args_is_help=True)


def _url_text() -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url()).render_as_string(hide_password=True)


def init_cmd(as_json: bool = JSON_OPT) -> None:
    """Create DECIDE_HOME (blobs, registry database) and upgrade the database to the newest schema."""
    rev = init_registry()
    out = {"home": str(get_settings().home_dir), "database": _url_text(), "revision": rev}
    emit(out, as_json, lambda: console.print(f"registry ready at {out['database']} (schema {rev})"))


def db_upgrade_cmd(revision: str = typer.Argument("head", help="Target revision."), as_json: bool = JSON_OPT) -> None:
    """Migrate the database up (creates it if missing). Back it up first."""
    before = current_revision()
    after = db_upgrade(revision=revision)
    out = {"database": _url_text(), "from": before, "to": after}
    emit(out, as_json, lambda: console.print(f"{out['database']}: {before} → {after}"))


def db_downgrade_cmd(revision: str = typer.Argument(..., help="Target revision (`base` drops every table)."),
                     as_json: bool = JSON_OPT) -> None:
    """Migrate the database down to REVISION. Destroys data of the dropped revisions."""
    before = current_revision()
    after = downgrade(revision=revision)
    out = {"database": _url_text(), "from": before, "to": after}
    emit(out, as_json, lambda: console.print(f"{out['database']}: {before} → {after}"))


def db_current_cmd(as_json: bool = JSON_OPT) -> None:
    """Show the database's schema revision and the code's head."""
    out = {"database": _url_text(), "current": current_revision(), "head": head_revision()}
    out["up_to_date"] = out["current"] == out["head"]
    emit(out, as_json, lambda: console.print(
        f"{out['database']}: at {out['current'] or '(empty)'}, head {out['head']}"
        + ("" if out["up_to_date"] else " — run `decide db upgrade`")
    ))


def db_grant_auditor_cmd(
    role: str = typer.Argument(..., help="Role name: lower-case letters, digits and _ (created if missing)."),
    login: bool = typer.Option(True, "--login/--no-login",
                               help="May log in (default), or a group role to grant to people's own roles."),
    as_json: bool = JSON_OPT,
) -> None:
    """PostgreSQL: make ROLE a read-only auditor (SELECT on the registry tables only).

    No INSERT, UPDATE, DELETE, TRUNCATE or sequence use; its transactions are
    read-only by default; tables that later migrations add are granted too.
    Run it as the role that owns the registry; running it again is harmless.
    Set a password with ALTER ROLE … PASSWORD in psql. Then the auditor runs:
    DECIDE_DATABASE_URL=postgresql+psycopg://ROLE@host/db decide audit verify
    """
    from registry.roles import grant_auditor

    g = grant_auditor(role, login=login)
    out = asdict(g)
    emit(out, as_json, lambda: console.print(
        f"role {g.role} {'created' if g.created else 'updated'}: SELECT only on {len(g.tables)} registry tables "
        f"of {g.database} (schema {g.schema}), read-only transactions by default"))


@_needs_db
def register_cmd(
    model_file: Path = typer.Argument(..., help="A .safetensors weights file (verified before it is stored)."),
    model: str = typer.Option(..., "--model", help="Model name (created if new)."),
    parent: str | None = typer.Option(None, "--parent", help="Parent version: NAME:N, NAME@alias or N."),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="JSON pathology → threshold (default: FILE.thresholds.json, else the parent's)."
    ),
    promote: bool = typer.Option(False, "--promote", help="Move the `production` alias to the new version."),
    reason: str = typer.Option("", "--reason", help="Why (recorded in the audit trail)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Register a trained or imported model file as a new version (blob stored by sha256)."""
    from decision import registration  # torch: only this command needs it

    thr = registration.load_thresholds(thresholds) if thresholds is not None else None
    with session_scope() as s:
        v = registration.register_weights_file(s, model_file, model, parent=parent, thresholds=thr,
                                               promote=promote, reason=reason)
    out = _version_json(v)
    emit(out, as_json, lambda: console.print(
        f"registered {v.ref} ({v.status.value}, {v.parameter_count:,} parameters, weights {v.weights_digest[:12]}…)"
        + (f", parent {v.parent_ref}" if v.parent_ref else "")
    ))


def _version_json(v) -> dict:
    d = audit.jsonable(v)
    d["ref"] = v.ref
    return d


@_needs_db
def ingest_cmd(file: Path = typer.Argument(..., help="Error reports, one JSON object per line."),
               as_json: bool = JSON_OPT) -> None:
    """Validate and store error reports (all or nothing; the same report again is a no-op).

    One JSON object per line; `decide schema report` prints the schema. A bad
    line refuses the whole file (exit 2, naming the line, the field and why)
    and nothing is written. A report whose key (version, site, pathology,
    kind, window) is stored with other content is refused too, naming the
    stored report and the fields that differ.
    """
    parsed, numbers = reports.read_jsonl(file)  # validate the whole file before opening the database
    with session_scope() as s:
        res = reports.ingest(s, parsed, lines=numbers, default_source="jsonl")
    out = asdict(res)
    emit(out, as_json, lambda: console.print(
        f"{len(res.ids)} report(s): {res.created} new, {res.existing} already known"
    ))


@_needs_db
def reports_cmd(status: ReportStatus | None = typer.Option(None, "--status", help="Only this status."),
                model: str | None = typer.Option(None, "--model", help="Only this model."),
                limit: int = typer.Option(200, "--limit", help="At most this many."),
                as_json: bool = JSON_OPT) -> None:
    """List error reports."""
    with session_scope(read_only=True) as s:
        rows = repo.list_reports(s, status=status, model=model, limit=limit)

    def render() -> None:
        t = Table(title=f"{len(rows)} report(s)")
        for c in ("id", "version", "pathology", "kind", "metric", "value", "target", "site", "window", "status"):
            t.add_column(c, justify="right" if c in ("id", "value", "target") else "left")
        for r in rows:
            t.add_row(str(r.id), f"{r.model}:{r.version}", r.pathology, r.kind.value, r.metric, fmt_float(r.value),
                      fmt_float(r.target), r.site, f"{r.window_start:%Y-%m-%d}…{r.window_end:%Y-%m-%d}",
                      r.status.value + (f" ({r.claimed_by})" if r.claimed_by else ""))
        console.print(t)

    emit(rows, as_json, render)


@_needs_db
def history_cmd(model: str | None = typer.Argument(None, help="Only this model."),
               site: str | None = typer.Option(None, "--site", help="Only the alias moves that affect this site: "
                                               "its own (production@SITE) and the all-sites ones."),
               as_json: bool = JSON_OPT) -> None:
    """Versions, aliases (per site) and every alias move (who moved `production`, for which sites, from which
    version, when, why)."""
    with session_scope(read_only=True) as s:
        h = repo.history(s, model)
    if site:
        h = dataclasses.replace(h, aliases=[a for a in h.aliases if a.site in ("", site)],
                                moves=[m for m in h.moves if m.site in ("", site)])

    def render() -> None:
        t = Table(title="versions")
        for c in ("version", "status", "parent id", "weights", "created by", "created at"):
            t.add_column(c)
        for v in h.versions:
            t.add_row(v.ref, v.status.value, str(v.parent_id or "—"), v.weights_digest[:12], v.created_by,
                      f"{v.created_at:%Y-%m-%d %H:%M:%S}")
        console.print(t)
        if h.aliases:
            console.print("aliases: " + ", ".join(f"{a.model}@{a.label} → {a.model}:{a.version}" for a in h.aliases))
        m = Table(title="alias moves")
        for c in ("when", "alias", "sites", "from", "to", "by", "reason"):
            m.add_column(c)
        for a in h.moves:
            m.add_row(f"{a.at:%Y-%m-%d %H:%M:%S}", f"{a.model}@{a.alias}", a.site or "all", str(a.from_version or "—"),
                      str(a.to_version), esc(a.actor), esc(a.reason))
        console.print(m)

    emit(h, as_json, render)


@_needs_db
def show_cmd(version: str = typer.Argument(..., help="NAME:N, NAME@alias, NAME@alias@SITE or N."),
             site: str | None = typer.Option(None, "--site", help="Resolve aliases for this site and show the "
                                             "operating points in force there."),
             as_json: bool = JSON_OPT) -> None:
    """One version: spec, digests, thresholds (default and per site), lineage links, evaluations."""
    with session_scope(read_only=True) as s:
        v = repo.resolve_version(s, version, site=site)
        evals = repo.list_evaluations(s, v.id)
    shown = v.thresholds_for(site)
    out = _version_json(v) | {"spec": json.loads(v.spec_json), "evaluations": audit.jsonable(evals)}
    if site:
        out["site"], out["thresholds_at_site"] = site, shown
    out.pop("spec_json", None)

    def render() -> None:
        console.print(f"[bold]{v.ref}[/] {v.status.value}  aliases: {', '.join(v.aliases) or '—'}  "
                      f"parent: {v.parent_ref or '—'}")
        console.print(f"weights {v.weights_digest}  backbone {v.backbone_digest[:16]}…  spec {v.spec_digest[:16]}…")
        console.print(f"{v.parameter_count:,} parameters; code {v.code_version}; by {v.created_by} at "
                      f"{v.created_at:%Y-%m-%d %H:%M:%S} UTC; decision {v.decision_id or '—'}, run "
                      f"{v.treatment_run_id or '—'}")
        for where, over in sorted(v.site_thresholds.items()):
            console.print(f"operating points at {where}: " + ", ".join(f"{p} {fmt_float(t)}" for p, t in over.items()))
        t = Table(title="thresholds" + (f" at {site}" if site else "") + " and evaluations")
        for c in ("pathology", "threshold", "dataset", "AUROC [95% CI]", "sens", "spec", "PPV", "F1", "n+/n−"):
            t.add_column(c)
        by_p = {e.pathology: e for e in evals}
        for p in v.pathologies:
            e = by_p.get(p)
            ci = f"{fmt_float(e.auroc)} [{fmt_float(e.auroc_lo)}, {fmt_float(e.auroc_hi)}]" if e else "—"
            t.add_row(p, fmt_float(shown.get(p)), e.dataset if e else "—", ci,
                      *(fmt_float(getattr(e, k)) if e else "—" for k in ("sensitivity", "specificity", "ppv", "f1")),
                      f"{e.n_pos}/{e.n_neg}" if e else "—")
        console.print(t)

    emit(out, as_json, render)


@_needs_db
def lineage_cmd(version: str = typer.Argument(..., help="NAME:N, NAME@alias or N."), as_json: bool = JSON_OPT) -> None:
    """Ancestors (up to the root) and descendants of a version."""
    with session_scope(read_only=True) as s:
        lin = repo.lineage(s, repo.resolve_version_id(s, version))

    def render() -> None:
        t = Table(title=f"lineage of {lin.version.ref}")
        for c in ("relation", "version", "status", "decision", "run", "created at"):
            t.add_column(c)
        rows = [("ancestor", a) for a in reversed(lin.ancestors)] + [("self", lin.version)]
        rows += [("descendant", d) for d in lin.descendants]
        for rel, v in rows:
            t.add_row(f"{rel} {v.depth}" if v.depth else rel, v.ref, v.status.value, str(v.decision_id or "—"),
                      str(v.treatment_run_id or "—"), f"{v.created_at:%Y-%m-%d %H:%M:%S}")
        console.print(t)

    emit(lin, as_json, render)


@_needs_db
def diff_cmd(v1: str = typer.Argument(..., help="From version."), v2: str = typer.Argument(..., help="To version."),
             as_json: bool = JSON_OPT) -> None:
    """What changed between two versions: spec, thresholds, per-pathology metrics, tensors."""
    with session_scope(read_only=True) as s:
        d = repo.diff_versions(s, repo.resolve_version_id(s, v1), repo.resolve_version_id(s, v2))

    def render() -> None:
        console.print(f"[bold]{d.a} → {d.b}[/]  same weights: {d.same_weights}, same backbone: {d.same_backbone}, "
                      f"parameters {d.parameter_count['a']:,} → {d.parameter_count['b']:,}")
        for k, ch in d.spec.items():
            console.print(f"spec {k}: {ch['a']!r} → {ch['b']!r}")
        for p, ch in d.thresholds.items():
            console.print(f"threshold {p}: {fmt_float(ch['a'])} → {fmt_float(ch['b'])}")
        if d.metrics:
            t = Table(title=f"metrics on {d.metrics_dataset}")
            for c in ("pathology", "AUROC", "Δ", "sens", "Δ", "spec", "Δ", "F1", "Δ"):
                t.add_column(c)
            for p, m in d.metrics.items():
                cells = []
                for k in ("auroc", "sensitivity", "specificity", "f1"):
                    cells += [fmt_float(m[k]["b"]), fmt_float(m[k]["delta"])]
                t.add_row(p, *cells)
            console.print(t)
        console.print(f"tensors: {len(d.tensors_changed)} changed, {len(d.tensors_added)} added, "
                      f"{len(d.tensors_removed)} removed")
        for name in d.tensors_changed[:20]:
            console.print(f"  changed {name}")

    emit(d, as_json, render)


@_needs_db
def rollback_cmd(version: str = typer.Argument(..., help="The version to put back in production."),
                 reason: str = typer.Option(..., "--reason", help="Why (required; recorded)."),
                 site: str | None = typer.Option(None, "--site", help="Move only this site's own alias "
                                                 "(production@SITE); other sites keep theirs."),
                 as_json: bool = JSON_OPT) -> None:
    """Move the `production` alias (every site's, or one site's own with --site) back to VERSION (recorded in
    alias history and the audit trail)."""
    with session_scope() as s:
        a = repo.rollback(s, repo.resolve_version_id(s, version, site=site), reason=reason, site=site or "")
    emit(a, as_json, lambda: console.print(f"{a.model}@{a.label} → {a.model}:{a.version} ({esc(reason)})"))


@_needs_db
def unpin_cmd(site: str = typer.Argument(..., help="The site whose own alias to remove."),
              model: str = typer.Option("cxr", "--model", help="Model name."),
              reason: str = typer.Option(..., "--reason", help="Why (required; recorded)."),
              as_json: bool = JSON_OPT) -> None:
    """Remove SITE's own `production@SITE` alias: the site follows `production` again (recorded)."""
    with session_scope() as s:
        repo.drop_site_alias(s, model, site, reason=reason)
        now = repo.resolve_version(s, f"{model}@production", site=site)
    out = {"model": model, "site": site, "serving": now.ref}
    emit(out, as_json, lambda: console.print(f"{model}@production@{esc(site)} removed: {esc(site)} now runs "
                                             f"{now.ref} ({esc(reason)})"))


@_needs_db
def gc_cmd(apply: bool = typer.Option(False, "--apply", help="Delete them (default: only list them)."),
           min_age_hours: float = typer.Option(
               1.0, "--min-age-hours", min=0,
               help="Only files at least this old: a registration writes its blob before it commits."),
           as_json: bool = JSON_OPT) -> None:
    """List (and with --apply delete) blob-store files that no registered version can use.

    They come from registrations that failed after writing their weights, and temp files of killed
    writers. Every registered blob is kept, rejected candidates' too (they are part of the record).
    Deleting is recorded in the audit trail. Example: decide gc, then decide gc --apply
    """
    with session_scope() as s:
        orphans, freed = repo.collect_garbage(s, apply=apply, min_age_seconds=min_age_hours * 3600)
    data = {"applied": apply, "orphans": [asdict(o) for o in orphans], "bytes": sum(o.size for o in orphans),
            "bytes_freed": freed}

    def render() -> None:
        if not orphans:
            console.print("blob store clean: every file is a registered blob")
            return
        t = Table(title=f"unregistered files in the blob store ({'deleted' if apply else 'dry run'})")
        for c in ("path", "kind", "bytes", "age (h)"):
            t.add_column(c)
        for o in orphans:
            t.add_row(esc(o.path), o.kind, str(o.size), f"{o.age_seconds / 3600:.1f}")
        console.print(t)
        console.print(f"{len(orphans)} file(s), {data['bytes']} bytes" +
                      (f": deleted ({freed} bytes freed)" if apply else ": run `decide gc --apply` to delete"))

    emit(data, as_json, render)


@_needs_db
def audit_verify_cmd(as_json: bool = JSON_OPT) -> None:
    """Recompute the audit chain; exit 1 naming the first broken event, 0 when intact."""
    with session_scope(read_only=True) as s:
        res = audit.verify_all(s)
    if as_json:
        sys.stdout.write(to_json(res) + "\n")
    elif res.ok:
        console.print(f"audit chain intact: {res.checked} event(s)")
    if not res.ok:
        where = f"at event seq {res.first_bad_seq}" if res.first_bad_seq is not None else "(the state it vouches for)"
        error_line(f"audit chain broken {where}: {res.reason}")
        raise typer.Exit(1)


@_needs_db
def audit_log_cmd(entity: str | None = typer.Option(None, "--entity", help="TYPE or TYPE:ID, e.g. model_version:3"),
                  limit: int = typer.Option(100, "--limit"), as_json: bool = JSON_OPT) -> None:
    """Show audit events, oldest first."""
    etype, _, eid = (entity or "").partition(":")
    with session_scope(read_only=True) as s:
        events = audit.list_events(s, entity_type=etype or None, entity_id=eid or None, limit=limit)

    def render() -> None:
        t = Table(title=f"{len(events)} event(s)")
        for c in ("seq", "at", "actor", "action", "entity", "reason"):
            t.add_column(c)
        for e in events:
            t.add_row(str(e.seq), f"{e.at:%Y-%m-%d %H:%M:%S}", esc(e.actor), e.action,
                      f"{e.entity_type}:{e.entity_id}", esc(e.reason))
        console.print(t)

    emit(events, as_json, render)


@_needs_db
def export_cmd(fmt: str = typer.Option("json", "--format", help="Only json."),
               out: Path | None = typer.Option(None, "--out", help="Write to a file instead of stdout.")) -> None:
    """Export the full history for an auditor: models, versions, aliases (+moves), evaluations, reports,
    decisions with candidates, runs, audit events."""
    if fmt != "json":
        raise typer.BadParameter("only --format json is supported", param_hint="--format")
    with session_scope(read_only=True) as s:
        data = export_all(s, url=database_url())
    text = to_json(data) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        console.print(f"exported {len(data['versions'])} version(s), {len(data['audit_events'])} event(s) → {out}")


def schema_report_cmd() -> None:
    """Print the JSON Schema of one error report line (for `decide ingest`)."""
    sys.stdout.write(json.dumps(reports.json_schema(), indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    db_app.command("upgrade")(db_upgrade_cmd)
    db_app.command("downgrade")(db_downgrade_cmd)
    db_app.command("current")(db_current_cmd)
    db_app.command("grant-auditor")(db_grant_auditor_cmd)
    app.add_typer(db_app, name="db")
    app.command("register")(register_cmd)
    app.command("ingest")(ingest_cmd)
    app.command("reports")(reports_cmd)
    app.command("history")(history_cmd)
    app.command("show")(show_cmd)
    app.command("lineage")(lineage_cmd)
    app.command("diff")(diff_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("unpin")(unpin_cmd)
    app.command("gc")(gc_cmd)
    audit_app.command("verify")(audit_verify_cmd)
    audit_app.command("log")(audit_log_cmd)
    app.add_typer(audit_app, name="audit")
    app.command("export")(export_cmd)
    schema_app.command("report")(schema_report_cmd)
    app.add_typer(schema_app, name="schema")
