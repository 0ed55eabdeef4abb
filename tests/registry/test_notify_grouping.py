"""Grouping and repeat limits (Alertmanager-style, per event type, site and pathology), decided at fan-out with
an injected clock: a flapping monitor sends one message per repeat interval, and every repeat it did not send
is on record, collapsed into the first; the events of one group go out together after the group wait, later
ones a group interval after. And the policy's `[notify]` section: strict, defaults, declared endpoints
upserted by `decide notify sync`."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import resources

import pytest
from typer.testing import CliRunner

from cli.app import app
from cxr import clock
from cxr.errors import InvalidInput
from decision import notify
from policies import load_policy, parse_policy, policy_digest
from registry import audit, repo_notify
from registry.repo_notify_group import Grouping, Prior, place
from registry.session import session_scope
from tests.registry.webhook_receiver import receiver

KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ALERTMANAGER = notify.NotifySettings(Grouping(timedelta(seconds=30), timedelta(minutes=5), timedelta(hours=4)))
runner = CliRunner()


def _endpoint(url: str) -> int:
    with session_scope() as s:
        return repo_notify.add_endpoint(s, url, KEY).id


def _event(t0, after: timedelta, *, summary="drift at site-a: shift_p 0.001 < 0.05", site="site-a",
           pathology="Effusion", type="report.distribution_shift") -> str:
    """An event written `after` t0 (the clock moved there)."""
    with clock.moved(t0 + after - clock.now()), session_scope() as s:
        return repo_notify.enqueue(s, type, site=site, summary=summary, command="decide reports",
                                   pathology=pathology)


def _deliver(t0, after: timedelta, settings=ALERTMANAGER) -> notify.DeliveryReport:
    return notify.deliver(now=lambda: t0 + after, settings=settings)


def _uids(r) -> list[str]:
    return [h["webhook-id"] for h, _ in r.received]


def test_a_flapping_monitor_sends_one_message_per_repeat_interval_and_records_the_repeats(db_url):
    t0 = clock.now()
    with receiver() as r:
        _endpoint(r.url)
        first = _event(t0, timedelta(0))
        assert _deliver(t0, timedelta(seconds=1)).attempted == 0  # the group waits 30 s for company
        assert _deliver(t0, timedelta(seconds=31)).delivered == 1
        repeats = [_event(t0, timedelta(minutes=m)) for m in (10, 60, 239)]
        for m in (11, 61, 240):
            assert _deliver(t0, timedelta(minutes=m)).attempted == 0
        assert _uids(r) == [first]
        later = _event(t0, timedelta(minutes=241))  # past the repeat interval: one more goes out
        assert _deliver(t0, timedelta(minutes=241, seconds=10)).attempted == 0
        assert _deliver(t0, timedelta(minutes=242)).delivered == 1
    assert _uids(r) == [first, later]
    res = runner.invoke(app, ["notify", "log", "--json"])  # the repeats are on record, never silently lost
    log = json.loads(res.stdout)
    collapsed = [a for a in log if a["outcome"] == "collapsed"]
    assert [a["event_uid"] for a in collapsed] == repeats and all(a["status_code"] is None for a in collapsed)
    assert all(f"collapsed into {first}" in a["error"] for a in collapsed)
    with session_scope(read_only=True) as s:
        assert repo_notify.delivery_states(s, repeats[0]) == {1: "collapsed"}


def test_a_collapsed_event_can_still_be_sent_by_hand(db_url):
    t0 = clock.now()
    with receiver() as r:
        _endpoint(r.url)
        _event(t0, timedelta(0))
        _deliver(t0, timedelta(minutes=1))
        repeat = _event(t0, timedelta(minutes=2))
        assert _deliver(t0, timedelta(minutes=3)).attempted == 0
        assert runner.invoke(app, ["notify", "redeliver", repeat]).exit_code == 0
        assert _deliver(t0, timedelta(minutes=4)).delivered == 1
    assert _uids(r)[-1] == repeat


def test_the_events_of_a_group_go_out_together_later_ones_a_group_interval_after(db_url):
    t0 = clock.now()
    with receiver() as r:
        _endpoint(r.url)
        a = _event(t0, timedelta(0), summary="decision 1 awaits approval")
        b = _event(t0, timedelta(seconds=10), summary="decision 2 awaits approval")
        other_site = _event(t0, timedelta(seconds=20), summary="decision 1 awaits approval", site="site-b")
        assert _deliver(t0, timedelta(seconds=29)).attempted == 0
        assert _deliver(t0, timedelta(seconds=31)).delivered == 2  # a and b, in order; site-b's group waits
        assert _uids(r) == [a, b]
        assert _deliver(t0, timedelta(seconds=51)).delivered == 1
        c = _event(t0, timedelta(minutes=1), summary="decision 3 awaits approval")
        assert _deliver(t0, timedelta(minutes=5)).attempted == 0  # the group sent at 31 s: next batch at 5 min 31 s
        assert _deliver(t0, timedelta(minutes=5, seconds=32)).delivered == 1
        other_pathology = _event(t0, timedelta(minutes=6), pathology="Cardiomegaly")
        assert _deliver(t0, timedelta(minutes=6, seconds=31)).delivered == 1  # its own group
    assert _uids(r) == [a, b, other_site, c, other_pathology]


def test_without_grouping_settings_every_event_goes_out_at_once(db_url):
    t0 = clock.now()
    with receiver() as r:
        _endpoint(r.url)
        same = [_event(t0, timedelta(0)) for _ in range(3)]
        assert notify.deliver(now=lambda: t0).delivered == 3  # no settings: no grouping, nothing collapses
    assert _uids(r) == same


def test_place_is_pure_and_measures_the_repeat_interval_from_the_first():
    t0 = clock.now()
    g = ALERTMANAGER.grouping
    sent = Prior("msg_1", "s", t0, "delivered", 1, t0 + timedelta(seconds=30))
    assert place(t0 + timedelta(hours=3), "s", [sent], g).collapsed_into == "msg_1"
    assert place(t0 + timedelta(hours=4), "s", [sent], g).at == t0 + timedelta(hours=4, seconds=30)
    assert place(t0 + timedelta(minutes=1), "other", [sent], g).at == t0 + timedelta(minutes=5, seconds=30)
    waiting = Prior("msg_2", "t", t0, "pending", 0, t0 + timedelta(seconds=30))
    assert place(t0 + timedelta(seconds=5), "u", [waiting], g).at == t0 + timedelta(seconds=30)
    assert place(t0, "s", [], Grouping()).at == t0
    dead = Prior("msg_3", "s", t0, "dead", 8, t0)  # it reached nobody: its repeat is sent
    assert place(t0 + timedelta(minutes=1), "s", [dead], g).at == t0 + timedelta(minutes=5)


# -- the policy's [notify] section ------------------------------------------------------------------
def _default() -> str:
    return resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")


def test_the_default_policy_has_alertmanagers_timing_and_it_is_not_in_the_digest():
    n = load_policy().notify
    assert (n.group_wait_s, n.group_interval_s, n.repeat_interval_s) == (30.0, 300.0, 14400.0)
    s = notify.settings_from_policy()
    assert s.grouping == ALERTMANAGER.grouping and s.smtp is None
    base = load_policy()
    changed = base.model_copy(update={"notify": base.notify.model_copy(update={"repeat_interval_s": 60.0})})
    assert policy_digest(changed) == policy_digest(base)


@pytest.mark.parametrize(("section", "message"), [
    ({"group_wait": 30}, "unknown key"),
    ({"repeat_interval_s": -1}, "repeat_interval_s"),
    ({"smtp": {"host": "mail.example.org", "password": "hunter2"}}, "reference"),
    ({"endpoints": [{"url": "https://hooks.example.org/x", "secret": KEY}]}, "reference"),
    ({"endpoints": [{"url": "mailto:ops@example.org", "secret": "env:X"}]}, "no secret"),
    ({"endpoints": [{"url": "https://hooks.example.org/x", "secret": "env:K", "colour": "red"}]}, "unknown key"),
])
def test_the_notify_section_is_strict(section, message):
    import tomllib

    data = tomllib.loads(_default())
    data["notify"] = section
    with pytest.raises(InvalidInput, match=message) as err:
        parse_policy(data)
    assert "hunter2" not in str(err.value) and KEY[6:] not in str(err.value)


def test_sync_upserts_the_declared_endpoints_and_never_stores_a_key(db_url, tmp_path):
    policy = tmp_path / "policy.toml"
    declared = '''
[[notify.endpoints]]
url = "https://hooks.example.org/cxr"
events = ["candidate.held", "pass.failed"]
site = "site-b"
secret = "env:CXR_HOOK_KEY"

[[notify.endpoints]]
url = "mailto:radiology-ai@example.org"
'''
    policy.write_text(_default().replace("[notify.smtp]", declared + "\n[notify.smtp]"))
    res = runner.invoke(app, ["notify", "sync", "--policy", str(policy), "--json"])
    assert res.exit_code == 0, res.output
    assert [(d["endpoint"]["url"], d["change"]) for d in json.loads(res.stdout)] == [
        ("https://hooks.example.org/cxr", "added"), ("mailto:radiology-ai@example.org", "added")]
    res = runner.invoke(app, ["notify", "sync", "--policy", str(policy), "--json"])
    assert [d["change"] for d in json.loads(res.stdout)] == ["unchanged", "unchanged"]
    policy.write_text(policy.read_text().replace('"pass.failed"', '"pass.abandoned"'))
    runner.invoke(app, ["notify", "remove", "2"])
    res = runner.invoke(app, ["notify", "sync", "--policy", str(policy), "--json"])
    assert [d["change"] for d in json.loads(res.stdout)] == ["updated", "updated"]  # events; enabled again
    with session_scope(read_only=True) as s:
        eps = repo_notify.list_endpoints(s)
        trail = [e.action for e in audit.list_events(s, entity_type="notify_endpoint")]
    assert [(e.events, e.site, e.secret_source, e.enabled) for e in eps] == [
        (["candidate.held", "pass.abandoned"], "site-b", "env:CXR_HOOK_KEY", True), ([], "", "none", True)]
    assert trail.count("notify.endpoint_update") == 2 and len(eps) == 2
    exported = json.loads(runner.invoke(app, ["export"]).stdout)  # where each key is, never a key
    assert [(e["url"], e["secret_source"]) for e in exported["notify_endpoints"]] == [
        ("https://hooks.example.org/cxr", "env:CXR_HOOK_KEY"), ("mailto:radiology-ai@example.org", "none")]
    assert not any("secret" in e for e in exported["notify_endpoints"][0] if e != "secret_source")
    assert "notify_events" in exported and "notify_attempts" in exported
