"""Where things live: `DECIDE_HOME`, the database URL, the acting user.

Read from the environment on each call (cheap), so that tests and the CLI's
`--home` can change them per process.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxr.errors import InvalidInput

_EXECUTORS = ("local", "ray")


def _env(name: str) -> str | None:
    """`DECIDE_<NAME>` (any case, as pydantic-settings read it before); empty counts as unset."""
    key = f"DECIDE_{name}"
    value = os.environ.get(key)
    if value is None:
        value = next((v for k, v in os.environ.items() if k.upper() == key), None)
    return value if value not in (None, "") else None


def _positive(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"expected a number, got {raw!r}", field=f"DECIDE_{name}") from None
    if not value > 0 or value == float("inf"):
        raise InvalidInput(f"must be a positive number, got {raw!r}", field=f"DECIDE_{name}")
    return value


@dataclass(frozen=True)
class Settings:
    """The `DECIDE_*` variables, checked. (A plain dataclass: pydantic-settings cost every command
    a tenth of a second at start for seven variables.)"""

    home: Path = Path(".decide")
    database_url: str | None = None
    actor: str | None = None
    policy: Path | None = None  # DECIDE_POLICY: a policy TOML replacing the bundled default
    # DECIDE_EXECUTOR: where heavy (image-reading) treatments run: here, or as Ray tasks (RAY_ADDRESS)
    executor: Literal["local", "ray"] = "local"
    ray_num_cpus: float = 1.0  # DECIDE_RAY_NUM_CPUS: CPUs each Ray treatment task takes (> 0)
    # DECIDE_STALE_SECONDS: a run, a scheduled pass or a scheduler lease without a heartbeat for this
    # long belongs to a process that died; the next pass marks it abandoned and proceeds (> 0).
    stale_seconds: float = 90.0

    @classmethod
    def from_env(cls) -> Settings:
        executor = (_env("EXECUTOR") or "local").strip().lower()
        if executor not in _EXECUTORS:
            raise InvalidInput(f"must be one of {', '.join(_EXECUTORS)}, got {executor!r}", field="DECIDE_EXECUTOR")
        policy = _env("POLICY")
        return cls(home=Path(_env("HOME") or ".decide"), database_url=_env("DATABASE_URL"), actor=_env("ACTOR"),
                   policy=Path(policy) if policy else None, executor=executor,  # type: ignore[arg-type]
                   ray_num_cpus=_positive("RAY_NUM_CPUS", 1.0), stale_seconds=_positive("STALE_SECONDS", 90.0))

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'registry.db'}"

    @property
    def resolved_actor(self) -> str:
        if self.actor:
            return self.actor
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return os.environ.get("USER", "unknown")


def get_settings() -> Settings:
    return Settings.from_env()


_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def within_home(home: Path, *parts: str) -> Path:
    """Join `parts` under `home`, refusing anything that would escape it.

    Each part must be a plain name (letters, digits, `._-`, no leading dot);
    the resolved result must still lie inside `home`.
    """
    base = home.expanduser().resolve()
    for part in parts:
        if not _SAFE_PART.match(part) or part in {".", ".."}:
            raise InvalidInput(f"unsafe path component {part!r}", field="path")
    p = base.joinpath(*parts).resolve()
    if base != p and base not in p.parents:
        raise InvalidInput(f"path escapes DECIDE_HOME: {p}", field="path")
    return p
