"""E-mail, the second channel of notifications: a `mailto:` endpoint gets each event as a plain-text
message through SMTP (stdlib `smtplib`), from the same outbox with the same claims, retries, attempt log
and dead letters as a webhook (`decision/notify.py` sends a due delivery here when its URL is `mailto:`).

Transport. The server comes from the policy's `[notify.smtp]` (host, port, user, password reference,
sender) or, when that names no host, from `$DECIDE_SMTP_URL` (`smtp://[user[:password]@]host[:port]`, or
`smtps://` for TLS from the first byte). STARTTLS is used whenever the server offers it and is required
unless the host is the loopback: a remote server that does not offer it gets nothing (the attempt fails
and is retried, in case it was a downgrade by someone on the path). The password is a reference
(`env:NAME`, `file:/PATH`) resolved when sending, or part of `$DECIDE_SMTP_URL`; it is never logged or
recorded — errors name the host and port only.

Outcome. The server's reply code is the attempt's status: 2xx delivered; anything else (4xx, 5xx, no
answer) is retried on the webhook schedule until dead. The message's `Message-ID` is derived from the
event id, so a mail client folds a retry's duplicate.
"""

from __future__ import annotations

import ipaddress
import json
import os
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cxr.errors import InvalidInput
from registry import repo_notify


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    user: str = ""
    password: str = ""  # env:NAME / file:/PATH, or the value itself only when it came from $DECIDE_SMTP_URL
    sender: str = "cxr-decide@localhost"
    ssl: bool = False
    timeout: float = 10.0

    def __repr__(self) -> str:  # never the password
        return (f"SmtpSettings(host={self.host!r}, port={self.port}, user={self.user!r}, "
                f"password={'set' if self.password else 'none'}, ssl={self.ssl})")

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def from_url(url: str, sender: str = "cxr-decide@localhost") -> SmtpSettings:
    """`smtp://[user[:password]@]host[:port]` (port 587; smtps://: 465) as settings."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise InvalidInput("DECIDE_SMTP_URL is smtp://[user@]host[:port] or smtps://…", field="DECIDE_SMTP_URL")
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 587)
    except ValueError:
        raise InvalidInput("DECIDE_SMTP_URL has a bad port", field="DECIDE_SMTP_URL") from None
    return SmtpSettings(parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""),
                        sender, parts.scheme == "smtps")


def settings(policy_smtp: Any) -> SmtpSettings | None:
    """The policy's `[notify.smtp]` server, None when it names no host (then `from_env`, when sending)."""
    if not policy_smtp.host:
        return None
    return SmtpSettings(policy_smtp.host, policy_smtp.port, policy_smtp.user, policy_smtp.password,
                        policy_smtp.sender, policy_smtp.ssl, policy_smtp.timeout_s)


def from_env(sender: str = "cxr-decide@localhost") -> SmtpSettings | None:
    """`$DECIDE_SMTP_URL` as settings, None when unset; `InvalidInput` (naming the variable only) when malformed."""
    url = os.environ.get("DECIDE_SMTP_URL", "")
    return from_url(url, sender) if url else None


def _password(stored: str) -> str:
    """A password reference resolved (the error names the reference, never a value)."""
    if stored.startswith("env:"):
        value = os.environ.get(stored[4:], "")
        if not value:
            raise InvalidInput(f"SMTP password {stored}: the variable is not set", field="smtp.password")
        return value
    if stored.startswith("file:"):
        try:
            return Path(stored[5:]).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"SMTP password {stored}: {exc.strerror}", field="smtp.password") from None
    return stored


def is_loopback(host: str) -> bool:
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def message(sender: str, rcpts: list[str], body: dict[str, Any]) -> EmailMessage:
    """The e-mail of one event: its summary as the subject, the command to look, the payload as JSON."""
    data = body.get("data", {})
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, ", ".join(rcpts)
    msg["Subject"] = " ".join(f"[cxr-decide] {body.get('type')}: {data.get('summary', '')}".split())[:200]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{data.get('event_id')}@cxr-decide>"
    msg["X-Decide-Event-Id"], msg["X-Decide-Event-Type"] = str(data.get("event_id")), str(body.get("type"))
    msg.set_content(f"{data.get('summary', '')}\n\nTo look: {data.get('command', '')}\n\n"
                    f"{json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False)}\n")
    return msg


@dataclass(frozen=True)
class MailResult:
    status: int | None  # the server's reply code; None: no answer
    error: str = ""


def send(smtp: SmtpSettings | None, url: str, body: dict[str, Any], *,
         connect: Callable[..., smtplib.SMTP] | None = None) -> MailResult:
    """Send one event's e-mail to the addresses of `url` (`mailto:`); any failure is a `MailResult`."""
    if smtp is None:
        return MailResult(None, "no SMTP server: set [notify.smtp] host in the policy or DECIDE_SMTP_URL")
    try:
        rcpts = repo_notify.mail_recipients(url)
        password = _password(smtp.password) if smtp.password else ""
    except InvalidInput as exc:
        return MailResult(None, str(exc))
    context = ssl.create_default_context()
    try:
        if connect is not None:
            client = connect(smtp.host, smtp.port, timeout=smtp.timeout)
        elif smtp.ssl:
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        with client:
            client.ehlo()
            if not smtp.ssl:
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                elif not is_loopback(smtp.host):
                    return MailResult(None, f"{smtp.where} does not offer STARTTLS: nothing sent (required off "
                                            "the loopback)")
            if smtp.user:
                client.login(smtp.user, password)
            refused = client.send_message(message(smtp.sender, rcpts, body), smtp.sender, rcpts)
    except smtplib.SMTPRecipientsRefused as exc:
        code = next(iter(exc.recipients.values()))[0] if exc.recipients else None
        return MailResult(code, f"every recipient refused ({code})")
    except smtplib.SMTPResponseException as exc:  # the reply text may echo what we sent: only the code
        return MailResult(exc.smtp_code, f"SMTP {exc.smtp_code} from {smtp.where}")
    except (smtplib.SMTPException, OSError) as exc:
        return MailResult(None, f"{type(exc).__name__} talking to {smtp.where}"[:512])
    if refused:
        return MailResult(250, f"refused by the server: {', '.join(sorted(refused))}"[:512])
    return MailResult(250)
