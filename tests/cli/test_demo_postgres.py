"""`decide demo` honours DECIDE_DATABASE_URL: on PostgreSQL its versions, decisions and audit trail land in
that database (the home keeps blobs and caches only), and `decide audit verify` passes there. A small demo
(one epoch, one week); skipped without DECIDE_TEST_POSTGRES_URL."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from cli.app import app

PG_ENV = "DECIDE_TEST_POSTGRES_URL"
pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(not os.environ.get(PG_ENV), reason="needs PostgreSQL (DECIDE_TEST_POSTGRES_URL)")]
runner = CliRunner()


@pytest.fixture
def pg_database():
    admin_url = make_url(os.environ[PG_ENV])
    name = f"decide_demo_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    from registry.session import dispose_engines

    dispose_engines()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


HEAVY = ("f_reoptimization", "augmentation_retrain", "full_retrain", "lossless_compression", "quantization",
         "structured_pruning", "distillation")


def _head_level_policy(path):
    """The bundled policy with only the head-level treatments enabled (the demo stays small)."""
    from importlib import resources

    text = resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")
    for name in HEAVY:
        text = text.replace(f"[treatments.{name}]\n", f"[treatments.{name}]\nenabled = false\n")
    path.write_text(text)
    return path


def test_the_demo_on_postgresql_leaves_its_record_there(pg_database, tmp_path, monkeypatch):
    home = tmp_path / "demo-home"
    monkeypatch.setenv("DECIDE_DATABASE_URL", pg_database)
    monkeypatch.setenv("DECIDE_POLICY", str(_head_level_policy(tmp_path / "policy.toml")))
    res = runner.invoke(app, ["demo", "--home", str(home), "--epochs", "1", "--n-train", "400", "--n-calibration",
                              "300", "--n-evaluation", "300", "--weeks", "1", "--per-week", "300", "--no-new-site",
                              "--json"])
    assert res.exit_code in (0, 1), res.output  # 1: the small demo's own acceptance may fail; it still ran
    summary = json.loads(res.stdout)
    assert summary["database"].startswith("postgresql+psycopg://") and summary["audit"]["ok"]
    assert not (home / "registry.db").exists()  # nothing went to the home's SQLite file
    engine = create_engine(pg_database)
    try:
        with engine.connect() as c:
            versions = c.execute(text("SELECT count(*) FROM model_versions")).scalar_one()
            decisions = c.execute(text("SELECT count(*) FROM decisions")).scalar_one()
            reports = c.execute(text("SELECT count(*) FROM error_reports")).scalar_one()
            events = c.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    finally:
        engine.dispose()
    assert versions >= 1 and events > versions
    assert (reports, decisions) == (summary["counts"]["reports"], summary["counts"]["decisions"])
    assert versions == summary["counts"]["versions"]
    verified = runner.invoke(app, ["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["checked"] == events
