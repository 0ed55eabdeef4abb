"""Webhook delivery, end to end against a real HTTP receiver on 127.0.0.1: the Standard Webhooks signature
as the reference `standardwebhooks` library verifies it (one key, two during a rotation), retries after
5xx, Retry-After, 410 disabling the endpoint, dead-lettering and redelivery, every attempt recorded; and
no secret in logs, the delivery log, the endpoint list or `decide export`. Time is injected."""

from __future__ import annotations

import json
import logging
import random
from datetime import timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from cli.app import app
from cxr import clock
from decision import notify
from registry import audit, repo_notify
from registry.session import session_scope
from tests.registry.webhook_receiver import receiver

KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY2 = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
runner = CliRunner()


def _endpoint(url: str, secret: str = KEY, **kw) -> int:
    with session_scope() as s:
        return repo_notify.add_endpoint(s, url, secret, **kw).id


def _event(type: str = "version.promoted", site: str = "site-a") -> str:
    with session_scope() as s:
        return repo_notify.enqueue(s, type, site=site, summary="cxr:2 promoted to production at site-a",
                                   command="decide history cxr --site site-a", version="cxr:2")


def _attempts(uid: str | None = None) -> list:
    with session_scope(read_only=True) as s:
        return repo_notify.list_attempts(s, event_uid=uid)


def _at(t0):
    return lambda: t0


def test_what_we_send_verifies_with_the_reference_library(db_url):
    with receiver() as r:
        _endpoint(r.url)
        uid = _event()
        out = notify.deliver()
    assert (out.attempted, out.delivered) == (1, 1)
    [(headers, body)] = r.received
    payload = Webhook(KEY).verify(body, headers)
    assert headers["webhook-id"] == uid and payload["data"]["event_id"] == uid
    assert payload["type"] == "version.promoted" and payload["data"]["version"] == "cxr:2"
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        Webhook(KEY2).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # one byte changed
        Webhook(KEY).verify(body.replace(b"cxr:2", b"cxr:3"), headers)
    [a] = _attempts(uid)
    assert (a.status_code, a.outcome, a.error) == (200, "delivered", "") and a.latency_ms >= 0


def test_during_a_rotation_both_keys_sign(db_url):
    with receiver() as r:
        ep = _endpoint(r.url)
        with session_scope() as s:
            repo_notify.rotate_secret(s, ep, KEY2)
        _event()
        notify.deliver()
        with session_scope() as s:
            repo_notify.rotate_secret(s, ep, None)
        _event()
        notify.deliver()
    (h1, b1), (h2, b2) = r.received
    assert len(h1["webhook-signature"].split(" ")) == 2
    assert Webhook(KEY).verify(b1, h1) and Webhook(KEY2).verify(b1, h1)
    assert Webhook(KEY2).verify(b2, h2)
    with pytest.raises(WebhookVerificationError):  # the rotation is over: the old key no longer signs
        Webhook(KEY).verify(b2, h2)


def test_5xx_then_200_is_delivered_once_with_every_attempt_recorded(db_url):
    t0 = clock.now()
    rng = random.Random(7)
    with receiver(503, 500) as r:
        _endpoint(r.url)
        uid = _event()
        assert notify.deliver(now=_at(t0), rng=rng).retrying == 1
        assert notify.deliver(now=_at(t0), rng=rng).attempted == 0  # not due yet: backoff
        assert notify.deliver(now=_at(t0 + timedelta(seconds=10)), rng=rng).retrying == 1
        assert notify.deliver(now=_at(t0 + timedelta(seconds=60)), rng=rng).attempted == 0  # ~5 min now
        assert notify.deliver(now=_at(t0 + timedelta(minutes=10)), rng=rng).delivered == 1
        assert notify.deliver(now=_at(t0 + timedelta(days=2)), rng=rng).attempted == 0  # delivered: done
    assert [(a.status_code, a.outcome) for a in _attempts(uid)] == [(503, "retry"), (500, "retry"),
                                                                   (200, "delivered")]
    assert {h["webhook-id"] for h, _ in r.received} == {uid}  # the idempotency key stays the same


def test_retry_after_is_honoured(db_url):
    t0 = clock.now()
    with receiver((429, {"Retry-After": "3600"})) as r:
        _endpoint(r.url)
        uid = _event()
        notify.deliver(now=_at(t0))
        assert notify.deliver(now=_at(t0 + timedelta(minutes=59))).attempted == 0  # backoff alone: 5 s
        assert notify.deliver(now=_at(t0 + timedelta(minutes=61))).delivered == 1
    assert [(a.status_code, a.outcome) for a in _attempts(uid)] == [(429, "retry"), (200, "delivered")]
    assert len(r.received) == 2


def test_retry_after_as_an_http_date_and_capped():
    from email.utils import format_datetime

    t0 = clock.now().replace(microsecond=0)  # an HTTP date has whole seconds

    assert notify.retry_after(format_datetime(t0 + timedelta(minutes=30), usegmt=True), t0) == timedelta(minutes=30)
    assert notify.retry_after("99999999", t0) == notify.MAX_RETRY_AFTER
    assert notify.retry_after("soon", t0) is None


def test_410_disables_the_endpoint_and_stops_its_other_deliveries(db_url):
    with receiver(410) as r:
        ep = _endpoint(r.url)
        _event()
        _event()
        out = notify.deliver()
        assert out.disabled == [ep] and len(r.received) == 1
        _event()
        assert notify.deliver(now=_at(clock.now() + timedelta(hours=1))).attempted == 0
    with session_scope(read_only=True) as s:
        e = repo_notify.get_endpoint(s, ep)
        disabled = audit.list_events(s, entity_type="notify_endpoint", entity_id=str(ep))[-1]
    assert not e.enabled and "410" in e.disabled_reason and disabled.action == "notify.endpoint_disable"
    assert [a.outcome for a in _attempts()] == ["disabled"]


def test_after_the_last_retry_it_is_dead_and_redeliver_revives_it(db_url):
    t = clock.now()
    rng = random.Random(1)
    with receiver(*[500] * (len(notify.SCHEDULE) + 1)) as r:
        _endpoint(r.url)
        uid = _event()
        for _ in range(len(notify.SCHEDULE) + 1):
            notify.deliver(now=_at(t), rng=rng)
            t += timedelta(hours=13)  # more than the longest step with its jitter
        assert notify.deliver(now=_at(t + timedelta(days=3))).attempted == 0
        outcomes = [a.outcome for a in _attempts(uid)]
        assert outcomes == ["retry"] * len(notify.SCHEDULE) + ["dead"]
        waits = [b - a for a, b in zip(notify.SCHEDULE, notify.SCHEDULE[1:], strict=False)]
        assert sum(notify.SCHEDULE, timedelta(0)) >= timedelta(hours=24) and waits
        res = runner.invoke(app, ["notify", "redeliver", uid, "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout)["deliveries"] == 1
        assert notify.deliver().delivered == 1
    assert len(r.received) == len(notify.SCHEDULE) + 2


def test_next_step_backoff_has_jitter_within_bounds():
    t0 = clock.now()
    for attempts, base in enumerate(notify.SCHEDULE):
        waits = {notify.next_step(500, attempts, t0, None, random.Random(seed)).next_at - t0 for seed in range(20)}
        assert len(waits) > 1 and all(base * 0.8 <= w <= base * 1.2 for w in waits)


def test_secrets_stay_out_of_logs_the_delivery_log_and_the_export(db_url, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOOK_KEY", KEY2)
    keyfile = tmp_path / "hook.key"
    keyfile.write_text(KEY + "\n")
    caplog.set_level(logging.DEBUG)
    with receiver(503) as r:
        _endpoint(r.url, "env:HOOK_KEY")
        _endpoint(r.url, f"file:{keyfile}")
        res = runner.invoke(app, ["notify", "add", r.url, "--events", "notify.test", "--json"])
        generated = json.loads(res.stdout)["secret"]
        _event()
        notify.deliver()
        notify.deliver(now=_at(clock.now() + timedelta(minutes=1)))
    by_secret = {}
    for h, b in r.received:  # each endpoint signed with its own resolved key
        for k in (KEY, KEY2):
            try:
                Webhook(k).verify(b, h)
                by_secret[k] = by_secret.get(k, 0) + 1
            except WebhookVerificationError:
                pass
    assert by_secret == {KEY2: 2, KEY: 1}  # env: 503 then 200, file: 200; the notify.test endpoint: nothing
    shown = caplog.text
    for args in (["notify", "list", "--json"], ["notify", "log", "--json"], ["export"], ["audit", "log", "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        shown += res.stdout
    for secret in (KEY, KEY2, generated):
        assert secret[6:] not in shown
    assert "env:HOOK_KEY" in shown


def test_cli_add_test_and_log(db_url):
    with receiver() as r:
        res = runner.invoke(app, ["notify", "add", r.url, "--site", "site-a", "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        ep, secret = data["endpoint"]["id"], data["secret"]
        assert data["endpoint"]["events"] == [] and data["endpoint"]["secret_source"] == "stored"
        res = runner.invoke(app, ["notify", "test", str(ep), "--json"])
        assert res.exit_code == 0, res.output
        [(h, b)] = r.received
        assert Webhook(secret).verify(b, h)["type"] == "notify.test"
    res = runner.invoke(app, ["notify", "log", "--json"])
    [row] = json.loads(res.stdout)
    assert (row["endpoint_id"], row["status_code"], row["outcome"]) == (ep, 200, "delivered")
    res = runner.invoke(app, ["notify", "remove", str(ep)])
    assert res.exit_code == 0
    res = runner.invoke(app, ["notify", "list", "--json"])
    assert json.loads(res.stdout)[0]["enabled"] is False
    res = runner.invoke(app, ["notify", "add", "http://hooks.example.org/x"])
    assert res.exit_code == 2 and "https" in res.output
