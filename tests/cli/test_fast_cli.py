"""`decide` starts fast: the commands that do not touch a model import no torch, scipy, matplotlib (nor
sklearn, pandas, numpy, torchxrayvision, Alembic), and `decide --help` not even SQLAlchemy or pydantic.
Checked in real processes (speed itself is measured by bench/cli.py, never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODEL_FREE = ["--help", "reports", "history", "show", "lineage", "diff", "decisions", "costs", "audit verify",
              "ingest", "export"]
NEVER = {"torch", "torchvision", "torchxrayvision", "scipy", "matplotlib", "sklearn", "pandas", "numpy", "alembic",
         "PIL", "apscheduler"}
# A command's --help needs no registry; typer itself parses parameters with pydantic, the root --help not even that.
NOT_FOR_HELP = NEVER | {"sqlalchemy", "pydantic_settings", "psycopg"}
NOT_FOR_ROOT_HELP = NOT_FOR_HELP | {"pydantic"}

# Runs `decide ARGS…` once per argument list (JSON lists on argv), then prints the top-level packages loaded.
DRIVER = textwrap.dedent("""
    import json, sys
    from cli.app import app
    codes = []
    for args in map(json.loads, sys.argv[1:]):
        try:
            app(args, prog_name="decide")
        except SystemExit as exc:
            codes.append(exc.code or 0)
    sys.stdout.flush()
    print("\\n@@" + json.dumps({"codes": codes, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
""")


def _drive(*commands: list[str], env: dict | None = None) -> dict:
    res = subprocess.run([sys.executable, "-c", DRIVER, *map(json.dumps, commands)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return {**json.loads(res.stdout.rpartition("\n@@")[2]), "stdout": res.stdout, "stderr": res.stderr}


def test_importing_the_app_loads_no_heavy_library():
    code = "import sys, json; import cli.app; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(res.stdout))
    assert {"typer", "cli"} <= loaded
    assert not loaded & NOT_FOR_ROOT_HELP, sorted(loaded & NOT_FOR_ROOT_HELP)


@pytest.mark.parametrize("command", MODEL_FREE)
def test_each_model_free_command_answers_help_in_a_light_process(command):
    args = [*command.split(), "--help"] if command != "--help" else ["--help"]
    out = _drive(args)
    assert out["codes"] == [0] and "Usage" in out["stdout"]
    banned = NOT_FOR_ROOT_HELP if command == "--help" else NOT_FOR_HELP
    assert not set(out["modules"]) & banned, sorted(set(out["modules"]) & banned)


@pytest.fixture
def small_registry(tmp_path, monkeypatch):
    """Two versions, a report, a decision: made without torch (the weights are stand-in bytes)."""
    from decision import error_reports
    from registry import repo
    from registry.session import dispose_engines, init_registry, session_scope
    from tests.registry import factories as f

    init_registry()
    with session_scope() as s:
        v1 = f.version(s)
        f.version(s, parent_id=v1.id, payload=b"weights-2", tensors={"w": "1", "classifier.weight": "3"})
        rid = error_reports.ingest(s, [error_reports.parse_report(f.report())]).ids[0]
        repo.create_decision(s, [rid], "0" * 64, [{"treatment": "head_retrain"}], "head_retrain", "test")
    dispose_engines()
    line = tmp_path / "reports.jsonl"
    line.write_text(json.dumps(f.report(day=2)) + "\n")
    return tmp_path


@pytest.mark.slow
def test_the_model_free_commands_run_without_heavy_libraries(small_registry):
    out = _drive(["reports", "--json"], ["history", "cxr", "--json"], ["show", "cxr:1", "--json"],
                 ["lineage", "cxr:2", "--json"], ["diff", "cxr:1", "cxr:2", "--json"], ["decisions", "--json"],
                 ["costs", "--json"], ["audit", "verify", "--json"],
                 ["ingest", str(small_registry / "reports.jsonl"), "--json"],
                 ["export", "--out", str(small_registry / "export.json")])
    assert out["codes"] == [0] * 10, out["stderr"]
    assert not set(out["modules"]) & NEVER, sorted(set(out["modules"]) & NEVER)
    assert json.loads((small_registry / "export.json").read_text())["audit_verification"]["ok"]


@pytest.mark.slow
def test_json_output_draws_nothing_so_it_loads_neither_rich_nor_pydantic_settings(small_registry):
    out = _drive(["reports", "--json"], ["history", "cxr", "--json"], ["decisions", "--json"],
                 ["audit", "verify", "--json"])
    assert out["codes"] == [0] * 4, out["stderr"]
    assert not set(out["modules"]) & {"rich", "pydantic_settings", "dotenv"}, out["modules"]
    assert '"pathology": "Effusion"' in out["stdout"] and '"ok": true' in out["stdout"]  # they did print


def test_the_head_revision_read_from_the_files_is_alembics():
    from alembic.script import ScriptDirectory

    from registry.session import _alembic_config, head_revision, revisions

    script = ScriptDirectory.from_config(_alembic_config())
    assert [head_revision()] == list(script.get_heads())
    assert revisions() == {r.revision: tuple(r._normalized_down_revisions) for r in script.walk_revisions()}


def test_help_texts_copied_for_speed_match_their_sources():
    from cli import cmd_imaging
    from cxr.phantom import SPLITS
    from cxr.sources import LABELLED_HELP
    from cxr.spec import PRESETS

    assert cmd_imaging.SPLITS == SPLITS and cmd_imaging.SOURCE_HELP == LABELLED_HELP
    assert cmd_imaging.PRESETS == tuple(PRESETS)


def test_every_command_module_is_imported_plainly_by_the_app():
    """cli/app.py imports its command modules by name (a missing or renamed one fails at start, loudly), and
    lists every cmd_*.py on disk: none is left out unnoticed."""
    from cli import app as cli_app

    on_disk = {p.stem for p in Path(cli_app.__file__).parent.glob("cmd_*.py")}
    assert {m.__name__.rpartition(".")[2] for m in cli_app._COMMAND_MODULES} == on_disk


def test_a_named_command_builds_only_its_own_module():
    from cli.app import app, app_for, command_word

    assert command_word(["--home", "h", "-v", "history", "cxr"]) == "history"
    assert command_word(["--home=h", "--debug", "db", "current"]) == "db"
    assert command_word(["--help"]) is None and command_word([]) is None
    assert app_for(["--help"]) is app and app_for(["no-such-command"]) is app
    one = app_for(["--home", "h", "reports", "--json"])
    names = {c.name for c in one.registered_commands} | {g.name for g in one.registered_groups}
    assert {"reports", "history", "ingest", "db"} <= names and not names & {"run", "demo", "train", "audit"}
    audit = app_for(["audit", "verify"])
    assert {c.name for c in audit.registered_commands} | {g.name for g in audit.registered_groups} == {
        "audit", "export", "schema"}
    full = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names < full and {"run", "demo", "train", "monitor"} <= full


def test_the_entry_point_runs_a_command_and_refuses_an_unknown_one(tmp_path):
    env = {**os.environ, "DECIDE_HOME": str(tmp_path / "none")}
    res = subprocess.run([sys.executable, "-m", "cli", "--home", str(tmp_path / "none"), "history", "--json"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "decide init" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "cli", "no-such-command"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 2 and "No such command" in res.stderr

