"""Registry commands: init, db, register, ingest, reports, history, show, lineage, diff, rollback, unpin, gc.

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
from dataclasses import asdict
from pathlib import Path

import typer

from cli.options import JSON_OPT, needs_db
from cli.output import Table, console, emit, esc, fmt_float
from cli.subgroups_view import diff_subgroups, show_subgroups
from registry.entities import ReportStatus

# The registry (SQLAlchemy) and the settings (pydantic) are imported inside the commands that use them:
# `decide --help` needs neither.
commands = typer.Typer()
db_app = typer.Typer(help="Schema migrations (Alembic, run from code).", no_args_is_help=True)
commands.add_typer(db_app, name="db")


def _url_text() -> str:
    from sqlalchemy.engine import make_url

    from registry.session import database_url

    return make_url(database_url()).render_as_string(hide_password=True)


@commands.command("init")
def init_cmd(as_json: bool = JSON_OPT) -> None:
    """Create DECIDE_HOME (blobs, registry database) and upgrade the database to the newest schema."""
    from registry.session import init_registry
    from registry.settings import get_settings

    rev = init_registry()
    out = {"home": str(get_settings().home_dir), "database": _url_text(), "revision": rev}
    emit(out, as_json, lambda: console.print(f"registry ready at {out['database']} (schema {rev})"))


@db_app.command("upgrade")
def db_upgrade_cmd(revision: str = typer.Argument("head", help="Target revision."), as_json: bool = JSON_OPT) -> None:
    """Migrate the database up (creates it if missing). Back it up first."""
    from registry.session import current_revision, upgrade

    before = current_revision()
    after = upgrade(revision=revision)
    out = {"database": _url_text(), "from": before, "to": after}
    emit(out, as_json, lambda: console.print(f"{out['database']}: {before} → {after}"))


@db_app.command("downgrade")
def db_downgrade_cmd(revision: str = typer.Argument(..., help="Target revision (`base` drops every table)."),
                     as_json: bool = JSON_OPT) -> None:
    """Migrate the database down to REVISION. Destroys data of the dropped revisions."""
    from registry.session import current_revision, downgrade

    before = current_revision()
    after = downgrade(revision=revision)
    out = {"database": _url_text(), "from": before, "to": after}
    emit(out, as_json, lambda: console.print(f"{out['database']}: {before} → {after}"))


@db_app.command("current")
def db_current_cmd(as_json: bool = JSON_OPT) -> None:
    """Show the database's schema revision and the code's head."""
    from registry.session import current_revision, head_revision

    out = {"database": _url_text(), "current": current_revision(), "head": head_revision()}
    out["up_to_date"] = out["current"] == out["head"]
    emit(out, as_json, lambda: console.print(
        f"{out['database']}: at {out['current'] or '(empty)'}, head {out['head']}"
        + ("" if out["up_to_date"] else " — run `decide db upgrade`")
    ))


@db_app.command("grant-auditor")
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
    Set a password with ALTER ROLE … PASSWORD in psql.

    Example (the auditor): DECIDE_DATABASE_URL=postgresql+psycopg://ROLE@host/db decide audit verify
    """
    from registry.roles import grant_auditor

    g = grant_auditor(role, login=login)
    out = asdict(g)
    emit(out, as_json, lambda: console.print(
        f"role {g.role} {'created' if g.created else 'updated'}: SELECT only on {len(g.tables)} registry tables "
        f"of {g.database} (schema {g.schema}), read-only transactions by default"))


@commands.command("register")
@needs_db
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
    from registry.session import session_scope

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
    from registry import audit

    d = audit.jsonable(v)
    d["ref"] = v.ref
    return d


@commands.command("ingest")
@needs_db
def ingest_cmd(file: Path = typer.Argument(..., help="Error reports, one JSON object per line."),
               as_json: bool = JSON_OPT) -> None:
    """Validate and store error reports (all or nothing; the same report again is a no-op).

    One JSON object per line; `decide schema report` prints the schema. A bad
    line refuses the whole file (exit 2, naming the line, the field and why)
    and nothing is written. A report whose key (version, site, pathology,
    kind, window) is stored with other content is refused too, naming the
    stored report and the fields that differ.
    """
    from decision import error_reports
    from registry.session import session_scope

    parsed, numbers = error_reports.read_jsonl(file)  # validate the whole file before opening the database
    with session_scope() as s:
        res = error_reports.ingest(s, parsed, lines=numbers, default_source="jsonl")
    out = asdict(res)
    emit(out, as_json, lambda: console.print(
        f"{len(res.ids)} report(s): {res.created} new, {res.existing} already known"
    ))


@commands.command("reports")
@needs_db
def reports_cmd(status: ReportStatus | None = typer.Option(None, "--status", help="Only this status."),
                model: str | None = typer.Option(None, "--model", help="Only this model."),
                site: str | None = typer.Option(None, "--site", help="Only reports at this site."),
                subgroups: bool = typer.Option(False, "--subgroups", help="Only reports about a subgroup of a "
                                               "site's patients (view=AP, sex=F, ...), not the whole site."),
                limit: int = typer.Option(200, "--limit", help="At most this many."),
                as_json: bool = JSON_OPT) -> None:
    """List error reports (a subgroup report shows its subgroup after its site: "site-b · view=AP").

    A subgroup report is filed when a group of a site's films breaches its SLO while the site as a whole is
    not reported for that pathology and kind in that window (`decision/subgroup_monitor.py`).
    """
    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        rows = repo.list_reports(s, status=status, model=model, limit=limit, site=site, subgroups_only=subgroups)

    def render() -> None:
        t = Table("id", "version", "pathology", "kind", "metric", "value", "target", "site", "window", "status",
                  title=f"{len(rows)} report(s)", right=("id", "value", "target"))
        for r in rows:
            t.add_row(str(r.id), f"{r.model}:{r.version}", r.pathology, r.kind.value, r.metric, fmt_float(r.value),
                      fmt_float(r.target), r.site + (f" · {r.subgroup}" if r.subgroup else ""),
                      f"{r.window_start:%Y-%m-%d}…{r.window_end:%Y-%m-%d}",
                      r.status.value + (f" ({r.claimed_by})" if r.claimed_by else ""))
        console.print(t)

    emit(rows, as_json, render)


@commands.command("history")
@needs_db
def history_cmd(model: str | None = typer.Argument(None, help="Only this model."),
               site: str | None = typer.Option(None, "--site", help="Only the alias moves that affect this site: "
                                               "its own (production@SITE) and the all-sites ones."),
               as_json: bool = JSON_OPT) -> None:
    """Versions, aliases (per site) and every alias move (who moved `production`, for which sites, from which
    version, when, why)."""
    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        h = repo.history(s, model)
    if site:
        h = dataclasses.replace(h, aliases=[a for a in h.aliases if a.site in ("", site)],
                                moves=[m for m in h.moves if m.site in ("", site)])

    def render() -> None:
        t = Table("version", "status", "parent id", "weights", "created by", "created at", title="versions")
        for v in h.versions:
            t.add_row(v.ref, v.status.value, str(v.parent_id or "—"), v.weights_digest[:12], v.created_by,
                      f"{v.created_at:%Y-%m-%d %H:%M:%S}")
        console.print(t)
        if h.aliases:
            console.print("aliases: " + ", ".join(f"{a.model}@{a.label} → {a.model}:{a.version}" for a in h.aliases))
        m = Table("when", "alias", "sites", "from", "to", "by", "reason", title="alias moves")
        for a in h.moves:
            m.add_row(f"{a.at:%Y-%m-%d %H:%M:%S}", f"{a.model}@{a.alias}", a.site or "all", str(a.from_version or "—"),
                      str(a.to_version), esc(a.actor), esc(a.reason))
        console.print(m)

    emit(h, as_json, render)


@commands.command("show")
@needs_db
def show_cmd(version: str = typer.Argument(..., help="NAME:N, NAME@alias, NAME@alias@SITE or N."),
             site: str | None = typer.Option(None, "--site", help="Resolve aliases for this site and show the "
                                             "operating points in force there."),
             subgroups: bool = typer.Option(False, "--subgroups", help="List every per-subgroup result."),
             as_json: bool = JSON_OPT) -> None:
    """One version: spec, digests, thresholds (default and per site), lineage links, evaluations."""
    from registry import audit, repo
    from registry.session import session_scope

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
        t = Table("pathology", "threshold", "dataset", "AUROC [95% CI]", "sens", "spec", "PPV", "F1", "n+/n−",
                  title="thresholds" + (f" at {site}" if site else "") + " and evaluations")
        by_p = {e.pathology: e for e in evals}
        for p in v.pathologies:
            e = by_p.get(p)
            ci = f"{fmt_float(e.auroc)} [{fmt_float(e.auroc_lo)}, {fmt_float(e.auroc_hi)}]" if e else "—"
            t.add_row(p, fmt_float(shown.get(p)), e.dataset if e else "—", ci,
                      *(fmt_float(getattr(e, k)) if e else "—" for k in ("sensitivity", "specificity", "ppv", "f1")),
                      f"{e.n_pos}/{e.n_neg}" if e else "—")
        console.print(t)
        show_subgroups(evals, subgroups)

    emit(out, as_json, render)


@commands.command("lineage")
@needs_db
def lineage_cmd(version: str = typer.Argument(..., help="NAME:N, NAME@alias or N."), as_json: bool = JSON_OPT) -> None:
    """Ancestors (up to the root) and descendants of a version."""
    from registry import repo
    from registry.session import session_scope

    with session_scope(read_only=True) as s:
        lin = repo.lineage(s, repo.resolve_version_id(s, version))

    def render() -> None:
        t = Table("relation", "version", "status", "decision", "run", "created at",
                  title=f"lineage of {lin.version.ref}")
        rows = [("ancestor", a) for a in reversed(lin.ancestors)] + [("self", lin.version)]
        rows += [("descendant", d) for d in lin.descendants]
        for rel, v in rows:
            t.add_row(f"{rel} {v.depth}" if v.depth else rel, v.ref, v.status.value, str(v.decision_id or "—"),
                      str(v.treatment_run_id or "—"), f"{v.created_at:%Y-%m-%d %H:%M:%S}")
        console.print(t)

    emit(lin, as_json, render)


@commands.command("diff")
@needs_db
def diff_cmd(v1: str = typer.Argument(..., help="From version."), v2: str = typer.Argument(..., help="To version."),
             subgroups: bool = typer.Option(False, "--subgroups", help="List every per-subgroup change."),
             as_json: bool = JSON_OPT) -> None:
    """What changed between two versions: spec, thresholds, per-pathology metrics, tensors."""
    from registry import repo
    from registry.session import session_scope

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
            t = Table("pathology", "AUROC", "Δ", "sens", "Δ", "spec", "Δ", "F1", "Δ",
                      title=f"metrics on {d.metrics_dataset}")
            for p, m in d.metrics.items():
                cells = []
                for k in ("auroc", "sensitivity", "specificity", "f1"):
                    cells += [fmt_float(m[k]["b"]), fmt_float(m[k]["delta"])]
                t.add_row(p, *cells)
            console.print(t)
        diff_subgroups(d.subgroups, d.metrics_dataset, subgroups)
        console.print(f"tensors: {len(d.tensors_changed)} changed, {len(d.tensors_added)} added, "
                      f"{len(d.tensors_removed)} removed")
        for name in d.tensors_changed[:20]:
            console.print(f"  changed {name}")

    emit(d, as_json, render)


@commands.command("rollback")
@needs_db
def rollback_cmd(version: str = typer.Argument(..., help="The version to put back in production."),
                 reason: str = typer.Option(..., "--reason", help="Why (required; recorded)."),
                 site: str | None = typer.Option(None, "--site", help="Move only this site's own alias "
                                                 "(production@SITE); other sites keep theirs."),
                 as_json: bool = JSON_OPT) -> None:
    """Move the `production` alias (every site's, or one site's own with --site) back to VERSION (recorded in
    alias history and the audit trail)."""
    from registry import repo
    from registry.session import session_scope

    with session_scope() as s:
        a = repo.rollback(s, repo.resolve_version_id(s, version, site=site), reason=reason, site=site or "")
    emit(a, as_json, lambda: console.print(f"{a.model}@{a.label} → {a.model}:{a.version} ({esc(reason)})"))


@commands.command("unpin")
@needs_db
def unpin_cmd(site: str = typer.Argument(..., help="The site whose own alias to remove."),
              model: str = typer.Option("cxr", "--model", help="Model name."),
              reason: str = typer.Option(..., "--reason", help="Why (required; recorded)."),
              as_json: bool = JSON_OPT) -> None:
    """Remove SITE's own `production@SITE` alias: the site follows `production` again (recorded)."""
    from registry import repo
    from registry.session import session_scope

    with session_scope() as s:
        repo.drop_site_alias(s, model, site, reason=reason)
        now = repo.resolve_version(s, f"{model}@production", site=site)
    out = {"model": model, "site": site, "serving": now.ref}
    emit(out, as_json, lambda: console.print(f"{model}@production@{esc(site)} removed: {esc(site)} now runs "
                                             f"{now.ref} ({esc(reason)})"))


@commands.command("gc")
@needs_db
def gc_cmd(apply: bool = typer.Option(False, "--apply", help="Delete them (default: only list them)."),
           min_age_hours: float = typer.Option(
               1.0, "--min-age-hours", min=0,
               help="Only files at least this old: a registration writes its blob before it commits."),
           as_json: bool = JSON_OPT) -> None:
    """List (and with --apply delete) blob-store files that no registered version can use.

    They come from registrations that failed after writing their weights, and temp files of killed
    writers. Every registered blob is kept, rejected candidates' too (they are part of the record).
    Deleting is recorded in the audit trail.

    Example: decide gc, then decide gc --apply
    """
    from registry import repo
    from registry.session import session_scope

    with session_scope() as s:
        orphans, freed = repo.collect_garbage(s, apply=apply, min_age_seconds=min_age_hours * 3600)
    data = {"applied": apply, "orphans": [asdict(o) for o in orphans], "bytes": sum(o.size for o in orphans),
            "bytes_freed": freed}

    def render() -> None:
        if not orphans:
            console.print("blob store clean: every file is a registered blob")
            return
        t = Table("path", "kind", "bytes", "age (h)",
                  title=f"unregistered files in the blob store ({'deleted' if apply else 'dry run'})")
        for o in orphans:
            t.add_row(esc(o.path), o.kind, str(o.size), f"{o.age_seconds / 3600:.1f}")
        console.print(t)
        console.print(f"{len(orphans)} file(s), {data['bytes']} bytes" +
                      (f": deleted ({freed} bytes freed)" if apply else ": run `decide gc --apply` to delete"))

    emit(data, as_json, render)
