"""The notification delivery worker: signed webhooks in the Standard Webhooks format, retried with
backoff until delivered or dead-lettered, every attempt recorded.

Wire format (https://www.standardwebhooks.com/, checked by the reference `standardwebhooks` library in
tests/decision/test_notify_delivery.py): a POST of the JSON body `{"type", "timestamp", "data"}` with
headers `webhook-id` (the event's id: receivers dedupe on it), `webhook-timestamp` (unix seconds) and
`webhook-signature`: space-separated `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), one per
key — two while a rotation lasts. The key is the base64 after `whsec_`; a stored `env:NAME` or
`file:PATH` is resolved here, when signing, and no key is ever logged or recorded.

Delivery is at-least-once: a delivery is claimed (pushed a lease ahead), sent outside any transaction,
then its attempt recorded. 2xx: delivered. 410 Gone: the endpoint is disabled. Other failures are
retried on `SCHEDULE` (Svix's: ~28 h in all) with ±20% jitter, or later when the receiver's
`Retry-After` asks; after the last step the delivery is dead (`decide notify redeliver` revives it).
Redirects are not followed (a 3xx is a failure). Time comes from an injected clock.

A `mailto:` endpoint gets the event by e-mail instead (`decision/notify_email.py`), with the same claims,
retries and log. Grouping and repeat limits (`registry/repo_notify_group.py`) are applied when events are
fanned out, with the timing of the policy's `[notify]` section (`settings_from_policy`); `deliver`
without settings groups nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

from cxr import clock
from cxr.errors import InvalidInput
from decision import notify_email
from registry import repo_notify, repo_notify_events
from registry.entities_notify import DueDelivery
from registry.repo_notify_group import Grouping
from registry.session import session_scope

log = logging.getLogger(__name__)

#: the wait before each retry (after the first try): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — 27.6 h in all
SCHEDULE = (timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2),
            timedelta(hours=5), timedelta(hours=10), timedelta(hours=10))
JITTER = 0.2
#: a Retry-After longer than this is capped (a receiver cannot park an event for weeks)
MAX_RETRY_AFTER = timedelta(hours=24)
USER_AGENT = "cxr-decide-webhooks/1"


# -- the wire (pure) --------------------------------------------------------------------
def key_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret: the base64 after the prefix."""
    if not secret.startswith("whsec_"):
        raise InvalidInput("a signing secret starts with whsec_", field="secret")
    return base64.b64decode(secret[6:] + "==")


def signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64 HMAC-SHA256>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key_bytes(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)


def headers(secrets: Sequence[str], msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    ts = int(at.timestamp())
    return {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": msg_id,
            "webhook-timestamp": str(ts), "webhook-signature": signature(secrets, msg_id, ts, body)}


def encode(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def resolve_secret(stored: str) -> str:
    """A stored secret as a `whsec_` key: itself, the environment variable of `env:NAME`, or the first line
    of the file of `file:PATH`. The error names the reference, never a value."""
    if stored.startswith("env:"):
        value = os.environ.get(stored[4:], "")
        if not value:
            raise InvalidInput(f"secret reference {stored}: the variable is not set", field="secret")
    elif stored.startswith("file:"):
        try:
            value = Path(stored[5:]).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"secret reference {stored}: {exc.strerror}", field="secret") from None
    else:
        value = stored
    try:
        repo_notify.check_secret(value)
    except InvalidInput:
        raise InvalidInput(f"secret {repo_notify.secret_source(stored)}: not a whsec_ key", field="secret") from None
    return value


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """`Retry-After` (delta-seconds or an HTTP date) as a wait from `now`, capped; None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        wait = timedelta(seconds=max(0, int(value)))
    except ValueError:
        try:
            wait = parsedate_to_datetime(value) - now
        except (TypeError, ValueError):
            return None
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Step:
    outcome: str  # delivered, retry, dead, disabled
    next_at: datetime | None = None


def next_step(status: int | None, attempts: int, now: datetime, wait_hint: timedelta | None,
              rng: random.Random) -> Step:
    """What one attempt leads to. `attempts`: made before this one; `wait_hint`: the receiver's Retry-After."""
    if status is not None and 200 <= status < 300:
        return Step("delivered")
    if status == 410:
        return Step("disabled")
    if attempts >= len(SCHEDULE):
        return Step("dead")
    base = SCHEDULE[attempts]
    wait = base * (1 + rng.uniform(-JITTER, JITTER))
    if wait_hint is not None:
        wait = max(wait, wait_hint)
    return Step("retry", now + wait)


# -- sending ------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx reaches the caller as an HTTPError
        return None


@dataclass(frozen=True)
class Response:
    status: int | None
    retry_after: str | None = None
    error: str = ""


def post(url: str, body: bytes, hdrs: dict[str, str], timeout: float) -> Response:
    """POST with urllib; any failure is a `Response` (status None for no HTTP answer), never an exception."""
    repo_notify.check_url(url)  # https, or http to loopback: never file: or another scheme
    opener = urllib.request.build_opener(_NoRedirect())
    req = urllib.request.Request(url, data=body, headers=hdrs, method="POST")  # noqa: S310 — checked above
    try:
        with opener.open(req, timeout=timeout) as resp:
            return Response(resp.status)
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers.get("Retry-After"), f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Response(None, None, f"{type(exc).__name__}: {reason}"[:512])


@dataclass(frozen=True)
class NotifySettings:
    """What the worker takes from the policy: the grouping timing and the SMTP server (None: none)."""

    grouping: Grouping = field(default_factory=Grouping)
    smtp: notify_email.SmtpSettings | None = None  # None: $DECIDE_SMTP_URL, read when an e-mail is sent
    sender: str = "cxr-decide@localhost"  # the From of e-mail through $DECIDE_SMTP_URL


def settings_from_policy(policy_path: str | Path | None = None) -> NotifySettings:
    """The `[notify]` section of the policy in force (`policy_path`, else $DECIDE_POLICY, else the bundled one);
    SMTP from it or `$DECIDE_SMTP_URL`."""
    from policies import load_policy
    from registry.settings import get_settings

    n = load_policy(policy_path or get_settings().policy).notify
    return NotifySettings(Grouping(timedelta(seconds=n.group_wait_s), timedelta(seconds=n.group_interval_s),
                                   timedelta(seconds=n.repeat_interval_s)), notify_email.settings(n.smtp),
                          n.smtp.sender)


def audit_failed(first_bad_seq: int | None, checked: int, reason: str, url: str | None = None) -> str | None:
    """Write `audit.verification_failed` in its own committed transaction (a verification changes nothing, so
    there is no change to share one with); a role that may not write (the auditor's) only logs it."""
    try:
        with session_scope(url) as s:
            return repo_notify_events.enqueue_audit_failure(s, first_bad_seq, checked, reason)
    except Exception as exc:  # the verdict stands and is printed; the event is best effort
        log.warning("audit.verification_failed could not be written: %s", type(exc).__name__)
        return None


@dataclass
class DeliveryReport:
    fanned_out: int = 0
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    disabled: list[int] = field(default_factory=list)


def deliver(url: str | None = None, *, now: Callable[[], datetime] = clock.now, send: Callable[..., Response] = post,
            rng: random.Random | None = None, limit: int = 50, timeout: float = 10.0,
            monotonic: Callable[[], float] = time.monotonic, settings: NotifySettings | None = None,
            mail: Callable[..., notify_email.MailResult] = notify_email.send) -> DeliveryReport:
    """One round of the worker: fan new events out (grouped by `settings.grouping`), then send every delivery
    due at `now()` once — a webhook by `send`, an e-mail (`mailto:`) by `mail` through `settings.smtp`."""
    rng = rng or random.Random()  # noqa: S311 — jitter, not a secret
    out = DeliveryReport()
    settings = settings or NotifySettings()

    def by_mail(target: str, body: dict) -> Response:  # a `mailto:` endpoint: the same attempt, by e-mail
        r = mail(settings.smtp or notify_email.from_env(settings.sender), target, body)
        return Response(r.status, None, r.error)

    with session_scope(url) as s:
        out.fanned_out = repo_notify.fan_out(s, now(), settings.grouping)
        due = repo_notify.claim_due(s, now(), limit=limit)
    for d in due:
        if d.endpoint_id in out.disabled:  # a 410 earlier in this round: its claim lapses, nothing is sent
            continue
        _attempt(url, d, out, now=now, send=send, rng=rng, timeout=timeout, monotonic=monotonic, by_mail=by_mail)
    return out


def _attempt(url: str | None, d: DueDelivery, out: DeliveryReport, *, now: Callable[[], datetime],
             send: Callable[..., Response], rng: random.Random, timeout: float,
             monotonic: Callable[[], float], by_mail: Callable[[str, dict], Response]) -> None:
    at = now()
    body = encode(d.body)
    start = monotonic()
    try:
        if d.url.startswith("mailto:"):  # no signature: the e-mail channel
            resp = by_mail(d.url, d.body)
        else:
            resp = send(d.url, body, headers([resolve_secret(s) for s in d.secrets], d.event_uid, at, body), timeout)
    except InvalidInput as exc:  # an unresolvable secret reference: retried (the operator may fix it)
        resp = Response(None, None, str(exc))
    latency = (monotonic() - start) * 1000.0
    step = next_step(resp.status, d.attempts, now(), retry_after(resp.retry_after, now()), rng)
    with session_scope(url) as s:
        repo_notify.record_attempt(s, d.delivery_id, at=at, status_code=resp.status, latency_ms=latency,
                                   error=resp.error, outcome=step.outcome, next_attempt_at=step.next_at)
    out.attempted += 1
    if step.outcome == "delivered":
        out.delivered += 1
    elif step.outcome == "retry":
        out.retrying += 1
    else:
        out.dead += 1
        if step.outcome == "disabled":
            out.disabled.append(d.endpoint_id)
    log.info("event %s (%s) → endpoint %s: %s %s", d.event_uid, d.event_type, d.endpoint_id, step.outcome,
             resp.status if resp.status is not None else resp.error)
