"""E-mail, the second channel: a `mailto:` endpoint gets each event through SMTP from the same outbox, with
the same retries and attempt log — tested against a local `aiosmtpd` server: plain on the loopback,
STARTTLS with a login (its password a reference, never logged or recorded), a server that refuses then
accepts, and a remote server that does not offer STARTTLS, which gets nothing."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_bytes, policy
from importlib import resources

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from typer.testing import CliRunner

from cli.app import app
from cxr import clock
from decision import notify, notify_email
from registry import repo_notify
from registry.session import session_scope

runner = CliRunner()
PASSWORD = "correct horse battery staple"


class Inbox:
    """An aiosmtpd handler: keeps each accepted message; answers the scripted codes first."""

    def __init__(self, *script: str) -> None:
        self.script, self.messages = list(script), []

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.script:
            return self.script.pop(0)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def smtp_server(inbox: Inbox, **kw) -> Iterator[int]:
    port = _free_port()
    server = Controller(inbox, hostname="127.0.0.1", port=port, **kw)
    server.start()
    try:
        yield port
    finally:
        server.stop()


def _mail_endpoint(addr: str = "mailto:ops@example.org,oncall@example.org") -> int:
    res = runner.invoke(app, ["notify", "add", addr, "--events", "candidate.held", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert "secret" not in data and data["endpoint"]["secret_source"] == "none"  # no key for e-mail
    return data["endpoint"]["id"]


def _held(summary: str = "candidate cxr:3 of head_retrain (Effusion, site-b) held for a person") -> str:
    with session_scope() as s:
        return repo_notify.enqueue(s, "candidate.held", site="site-b", summary=summary, pathology="Effusion",
                                   command="decide decisions --status awaiting_approval", decision_id=7)


def _attempts() -> list:
    with session_scope(read_only=True) as s:
        return repo_notify.list_attempts(s)


def test_an_event_is_mailed_through_a_local_smtp_server(db_url, monkeypatch):
    inbox = Inbox()
    with smtp_server(inbox) as port:
        monkeypatch.setenv("DECIDE_SMTP_URL", f"smtp://127.0.0.1:{port}")
        ep = _mail_endpoint()
        uid = _held()
        res = runner.invoke(app, ["notify", "deliver", "--json"])  # the bundled policy: its group waits 30 s
        assert res.exit_code == 0 and json.loads(res.stdout)["attempted"] == 0
        out = notify.deliver(now=lambda: clock.now() + timedelta(seconds=31), settings=notify.settings_from_policy())
    assert (out.attempted, out.delivered) == (1, 1)
    [(sender, rcpts, msg)] = inbox.messages
    assert sender == "cxr-decide@localhost" and rcpts == ["ops@example.org", "oncall@example.org"]
    assert msg["Subject"] == "[cxr-decide] candidate.held: candidate cxr:3 of head_retrain (Effusion, site-b) " \
                             "held for a person"
    assert msg["Message-ID"] == f"<{uid}@cxr-decide>" and msg["X-Decide-Event-Id"] == uid
    text = msg.get_content()
    assert "decide decisions --status awaiting_approval" in text and f'"event_id": "{uid}"' in text
    [a] = _attempts()
    assert (a.endpoint_id, a.status_code, a.outcome, a.error) == (ep, 250, "delivered", "")


def test_a_refusal_is_retried_on_the_webhook_schedule_and_logged(db_url):
    inbox = Inbox("451 try again later", "452 mailbox full")
    t0 = clock.now()
    with smtp_server(inbox) as port:
        _mail_endpoint("mailto:ops@example.org")
        uid = _held()
        settings = notify.NotifySettings(smtp=notify_email.SmtpSettings("127.0.0.1", port))
        assert notify.deliver(now=lambda: t0, settings=settings).retrying == 1
        assert notify.deliver(now=lambda: t0 + timedelta(seconds=2), settings=settings).attempted == 0  # backoff
        assert notify.deliver(now=lambda: t0 + timedelta(seconds=10), settings=settings).retrying == 1
        assert notify.deliver(now=lambda: t0 + timedelta(minutes=10), settings=settings).delivered == 1
    assert [(a.event_uid, a.status_code, a.outcome) for a in _attempts()] == [
        (uid, 451, "retry"), (uid, 452, "retry"), (uid, 250, "delivered")]
    assert len(inbox.messages) == 1


def test_no_smtp_server_configured_is_a_retried_attempt_saying_so(db_url, monkeypatch):
    monkeypatch.delenv("DECIDE_SMTP_URL", raising=False)
    _mail_endpoint()
    _held()
    assert notify.deliver().retrying == 1
    [a] = _attempts()
    assert a.status_code is None and "DECIDE_SMTP_URL" in a.error


def test_a_remote_server_without_starttls_gets_nothing(db_url):
    inbox = Inbox()
    with smtp_server(inbox) as port:
        _mail_endpoint()
        _held()
        remote = notify_email.SmtpSettings("mail.example.org", port)  # reached on 127.0.0.1 by `connect`
        local = functools.partial(notify_email.send, connect=lambda host, p, timeout: smtplib.SMTP(
            "127.0.0.1", p, timeout=timeout))
        assert notify.deliver(settings=notify.NotifySettings(smtp=remote), mail=local).retrying == 1
    assert inbox.messages == []
    [a] = _attempts()
    assert "does not offer STARTTLS" in a.error and "mail.example.org" in a.error


@pytest.fixture
def tls_files(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1, trusted by this process (SSL_CERT_FILE)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_starttls_and_a_login_whose_password_is_a_reference_never_shown(db_url, tls_files, monkeypatch, caplog,
                                                                        tmp_path):
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password, session.ssl is not None))
        return AuthResult(success=auth_data.login == b"cxr" and auth_data.password == PASSWORD.encode())

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    inbox = Inbox()
    with smtp_server(inbox, tls_context=tls_files, require_starttls=True, authenticator=authenticator) as port:
        _mail_endpoint("mailto:ops@example.org")
        _held()
        policy_file = tmp_path / "policy.toml"
        default = resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8")
        policy_file.write_text(default.replace(
            "[notify.smtp]", '[notify.smtp]\nhost = "127.0.0.1"\nuser = "cxr"\npassword = "env:SMTP_PASSWORD"'
        ).replace("port = 587 ", f"port = {port} ").replace("group_wait_s = 30.0", "group_wait_s = 0.0")
         .replace("group_interval_s = 300.0", "group_interval_s = 0.0"))
        res = runner.invoke(app, ["notify", "deliver", "--policy", str(policy_file), "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["delivered"] == 1
        monkeypatch.delenv("SMTP_PASSWORD")
        _held("another candidate held")
        res = runner.invoke(app, ["notify", "deliver", "--policy", str(policy_file), "--json"])
        assert json.loads(res.stdout)["retrying"] == 1
    assert logins[0] == (b"cxr", PASSWORD.encode(), True)  # over TLS
    assert len(inbox.messages) == 1
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("decision", "registry", "cli")))
    shown = ours + repr(_attempts()) + runner.invoke(app, ["notify", "log", "--json"]).stdout
    assert "SMTP password env:SMTP_PASSWORD: the variable is not set" in shown and PASSWORD not in shown


def test_mailto_endpoints_take_addresses_and_no_key(db_url):
    for bad in ("mailto:", "mailto:not-an-address", "mailto:ops@example.org,", "mailto:a@b.org\r\nBcc: x@y.org"):
        res = runner.invoke(app, ["notify", "add", bad])
        assert res.exit_code == 2 and "mailto:" in res.output, (bad, res.output)
    res = runner.invoke(app, ["notify", "add", "mailto:ops@example.org", "--secret", "env:HOOK_KEY"])
    assert res.exit_code == 2 and "no secret" in res.output
    ep = _mail_endpoint("mailto:ops@example.org")
    res = runner.invoke(app, ["notify", "rotate", str(ep)])
    assert res.exit_code == 2 and "no key to rotate" in res.output
