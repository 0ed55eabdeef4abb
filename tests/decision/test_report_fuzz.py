"""Property-based fuzzing of the two file inputs, `decide ingest` and the policy loader (`decide policy
validate`): arbitrary JSON values in every field, arbitrary bytes as a file. The only outcomes allowed are
exit 0 (a report stored faithfully and read back equal; a policy whose digest reads back the same) and
exit 2 with one line (nothing written). Bounded examples, so the default suite runs it in seconds.
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import datetime
from importlib import resources

import typer
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.app import app
from policies import load_policy, policy_digest
from registry import audit, repo
from registry.session import session_scope
from tests import dates
from tests.decision.test_report_validation import VALID

runner = CliRunner()
CLI = typer.main.get_command(app)  # built once: every invoke below reuses it
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# What a field can become: any JSON value, or a near miss of the valid one.
NEAR = st.sampled_from([0, 1, -1, 0.5, 1.0000001, 2**31 - 1, 2**31, 10**30, "", "Effusion", "site-b", "fpr",
                        "recall", "auroc", dates.iso(dates.day(7)), f"{dates.ymd(dates.day(7))}T00:00:00+02:00",
                        "\u202e", "\x00"])
PATHS = ["model", "version", "pathology", "kind", "metric", "value", "target", "site", "window_start", "window_end",
         "counts", "counts.tp", "counts.fp", "counts.tn", "counts.fn", "cases", "cases.0", "cases.0.image_id",
         "cases.0.score", "cases.0.label", "source", "notes", "extra"]


def _mutate(report: dict, path: str, value, delete: bool) -> dict:
    r = json.loads(json.dumps(report))
    *parents, last = path.split(".")
    node = r
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key = int(last) if isinstance(node, list) else last
    if delete and not isinstance(node, list):
        node.pop(key, None)
    else:
        node[key] = value
    return r


def _check_outcome(res, reg, before) -> None:
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) or res.exception is None, repr(res.exception)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert reg.counts() == before


def _stored_equal(report: dict, stored: dict, fresh: bool) -> None:
    for k in ("model", "version", "pathology", "kind", "metric", "site"):
        assert stored[k] == report[k], k
    for k in ("value", "target"):
        assert stored[k] == report[k] and math.isfinite(stored[k]), k
    for k in ("window_start", "window_end"):
        assert datetime.fromisoformat(stored[k]) == datetime.fromisoformat(report[k].replace("Z", "+00:00")), k
    assert stored["counts"] == report["counts"]
    assert stored["cases"] == [{"label": None, **c} for c in report.get("cases", [])]
    assert stored["notes"] == report.get("notes", "")
    if fresh:  # the source is where a report came from, not what it says: kept from the first ingest
        assert stored["source"] == (report.get("source") or "jsonl")


@given(path=st.sampled_from(PATHS), value=JSON_VALUES | NEAR, delete=st.booleans(), day=st.integers(0, 200))
@settings(FUZZ)
def test_any_json_value_in_any_field_is_stored_faithfully_or_refused(path, value, delete, day, on_registry, tmp_path):
    report = {**VALID, "window_start": dates.iso(dates.day(-day)), "window_end": dates.iso(dates.day(-day, hours=12))}
    report = _mutate(report, path, value, delete)
    try:
        text = json.dumps(report)  # NaN / Infinity tokens included: the parser must refuse them
    except (ValueError, TypeError):
        return
    f = tmp_path / "fuzz.jsonl"
    f.write_text(text + "\n", encoding="utf-8", errors="surrogatepass")
    before = on_registry.counts()
    res = runner.invoke(CLI, ["ingest", str(f), "--json"])
    _check_outcome(res, on_registry, before)
    if res.exit_code == 0:
        out = json.loads(res.stdout)
        with session_scope(read_only=True) as s:
            stored = audit.jsonable(repo.get_report(s, out["ids"][0]))
        _stored_equal(report, stored, fresh=out["created"] == 1)


@given(data=st.binary(max_size=3000) | st.text(max_size=600).map(lambda t: t.encode("utf-8", "surrogatepass")))
@settings(FUZZ)
def test_any_bytes_as_a_report_file_exit_0_or_2(data, on_registry, tmp_path):
    f = tmp_path / "bytes.jsonl"
    f.write_bytes(data)
    before = on_registry.counts()
    res = runner.invoke(CLI, ["ingest", str(f)])
    _check_outcome(res, on_registry, before)
    if res.exit_code == 0:  # only blank lines can pass: nothing is a report
        assert on_registry.counts() == before


# -- the policy loader ----------------------------------------------------------------------------------
DEFAULT = tomllib.loads(resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8"))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML's (a lone surrogate is refused by the parser)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))


def _toml(d: dict, prefix: str = "") -> str:
    """Plain keys first, then each non-empty table as a [section] (TOML's order rule)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{json.dumps(k)} = {_toml_value(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
        out += f"\n[{name}]\n" + _toml(v, name)
    return out


def _leaves(d: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out += _leaves(v, (*prefix, k)) if isinstance(v, dict) and v else [(*prefix, k)]
    return out


LEAVES = [*_leaves(DEFAULT), ("treatments", "head_retrain", "surprise"), ("gate", "alpah"), ("approvals",)]


def _policy_outcome(res) -> None:
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) or res.exception is None, repr(res.exception)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_the_toml_writer_round_trips_the_default_policy(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(_toml(DEFAULT))
    assert tomllib.loads(f.read_text()) == DEFAULT
    assert policy_digest(load_policy(f)) == policy_digest(load_policy())


@given(leaf=st.sampled_from(LEAVES), value=JSON_VALUES, delete=st.booleans())
@settings(FUZZ)
def test_any_value_at_any_policy_key_loads_or_exits_2(leaf, value, delete, tmp_path):
    d = json.loads(json.dumps(DEFAULT))
    node = d
    for k in leaf[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else {}
    if delete:
        node.pop(leaf[-1], None)
    else:
        node[leaf[-1]] = value
    try:
        text = _toml(d)
    except TypeError:
        return
    f = tmp_path / "policy.toml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    res = runner.invoke(CLI, ["policy", "validate", str(f), "--json"])
    _policy_outcome(res)
    if res.exit_code == 0:  # read back: the digest the loader gives is the one validate printed
        assert json.loads(res.stdout)["digest"] == policy_digest(load_policy(f))


@given(data=st.binary(max_size=3000))
@settings(FUZZ)
def test_any_bytes_as_a_policy_file_exit_0_or_2(data, tmp_path):
    f = tmp_path / "bytes.toml"
    f.write_bytes(data)
    _policy_outcome(runner.invoke(CLI, ["policy", "validate", str(f)]))
