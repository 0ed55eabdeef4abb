"""Where things live: `DECIDE_HOME`, the database URL, the acting user.

Read from the environment on each call (cheap), so that tests and the CLI's
`--home` can change them per process.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cxr.errors import InvalidInput


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DECIDE_", extra="ignore")

    home: Path = Path(".decide")
    database_url: str | None = None
    actor: str | None = None
    policy: Path | None = None  # DECIDE_POLICY: a policy TOML replacing the bundled default
    # DECIDE_EXECUTOR: where heavy (image-reading) treatments run: here, or as Ray tasks (RAY_ADDRESS)
    executor: Literal["local", "ray"] = "local"
    ray_num_cpus: float = Field(default=1.0, gt=0)  # DECIDE_RAY_NUM_CPUS: CPUs each Ray treatment task takes
    # DECIDE_STALE_SECONDS: a run, a scheduled pass or a scheduler lease without a heartbeat for this
    # long belongs to a process that died; the next pass marks it abandoned and proceeds.
    stale_seconds: float = Field(default=90.0, gt=0)

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
    return Settings()


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
