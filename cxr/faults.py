"""Named failpoints: where a test makes this process die, fail or wait on purpose, at a chosen step.

The fault-injection suite (`tests/faults/`) kills `decide run` at each step of the loop and checks
that nothing is half-written and that the next pass finishes the work. Failpoints are off unless
the environment asks, read once when this module is imported:

    DECIDE_FAILPOINTS="claim=kill"                  # SIGKILL right after the claim commits
    DECIDE_FAILPOINTS="blob_write=enospc"           # the blob store's disk is full
    DECIDE_FAILPOINTS="registration=wait:/tmp/go"   # hold the registration transaction open

Unset (production), `failpoint(name)` is one dict lookup on an empty dict.

Points, in the loop's order (where they are, and what a process killed there leaves behind):

* `claim` — `Engine.run_pass`, after `claim_reports` committed: a claimed report, no decision.
* `decision` — `Engine.treat_report`, after the decision committed (`planned`, report `decided`), no run.
* `treatment_start` — `decision.treat.execute`, after `start_run` committed: a `running` run.
* `in_treatment` — `LocalExecutor.run`, inside the run's heartbeat, before the plugin's `apply`.
* `evaluation` — `execute`, the treatment returned; before the candidate is evaluated.
* `gate` — `execute`, the candidate is evaluated and judged; nothing of it is recorded yet.
* `blob_write` — `registry.blobs.put_bytes`, before the candidate's weights are written to the store.
* `registration` — `decision.treat._record`, inside the one transaction that registers the version,
  closes the run and moves the alias, before it commits: killed here, nothing of the candidate exists.
* `promotion` — `Engine._ladder`, after that transaction committed (the alias moved, when accepted),
  before the decision is finished.

Actions:

* `kill` — `SIGKILL` to this process, as `kill -9`: no handler, no `finally`, no rollback sent.
* `raise` — `RuntimeError("failpoint NAME")`, as any unexpected error at that step.
* `enospc` — `OSError(ENOSPC)`, a full disk.
* `sleep:S` — sleep S seconds, then go on.
* `wait:PATH` — create `PATH.waiting`, then wait (at most 10 minutes) until PATH exists, then go on:
  a test acts while the process stands still (e.g. terminates its database connection mid-transaction).

Dependency-free (standard library only) and in `cxr/`, the lowest layer, so that `registry/` (the
blob store) can carry a failpoint as well as `decision/`.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ENV = "DECIDE_FAILPOINTS"
POINTS = ("claim", "decision", "treatment_start", "in_treatment", "evaluation", "gate", "blob_write",
          "registration", "promotion")
ACTIONS = ("kill", "raise", "enospc", "sleep", "wait")
WAIT_LIMIT_S = 600.0


def parse(spec: str) -> dict[str, str]:
    """`"a=kill,b=sleep:2"` → `{"a": "kill", "b": "sleep:2"}`; raises ValueError naming a bad entry."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, sep, action = (x.strip() for x in item.partition("="))
        kind, _, arg = action.partition(":")
        if not sep or name not in POINTS or kind not in ACTIONS:
            raise ValueError(f"{ENV}: {item!r} is not POINT=ACTION (points: {', '.join(POINTS)}; "
                             f"actions: kill, raise, enospc, sleep:SECONDS, wait:PATH)")
        if kind == "sleep":
            try:
                float(arg)
            except ValueError:
                raise ValueError(f"{ENV}: {item!r}: sleep needs seconds (sleep:SECONDS)") from None
        if kind == "wait" and not arg:
            raise ValueError(f"{ENV}: {item!r}: wait needs a path (wait:PATH)")
        out[name] = action
    return out


_ACTIVE: dict[str, str] = parse(os.environ.get(ENV, ""))


def configure(spec: str | None = None) -> dict[str, str]:
    """Re-read the failpoints from `spec` (default: the environment); for tests in this process."""
    global _ACTIVE
    _ACTIVE = parse(os.environ.get(ENV, "") if spec is None else spec)
    return dict(_ACTIVE)


def failpoint(name: str) -> None:
    """Do what DECIDE_FAILPOINTS asks at `name`; nothing at all when it asks nothing here."""
    action = _ACTIVE.get(name)
    if action is None:
        return
    kind, _, arg = action.partition(":")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # pragma: no cover - the signal lands first
    elif kind == "raise":
        raise RuntimeError(f"failpoint {name}")
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (failpoint {name})")
    elif kind == "sleep":
        time.sleep(float(arg))
    elif kind == "wait":
        release = Path(arg)
        # Written under another name and renamed: a watcher that sees PATH.waiting sees it whole.
        part = Path(f"{arg}.waiting.{os.getpid()}.part")
        part.write_text(f"{name} {os.getpid()}\n")
        os.replace(part, f"{arg}.waiting")
        end = time.monotonic() + WAIT_LIMIT_S
        while not release.exists() and time.monotonic() < end:
            time.sleep(0.05)
