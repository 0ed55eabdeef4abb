"""Deferred imports for the command modules: `decide` must start fast.

Typer imports every command module to build `decide` (and `decide --help`), so whatever a
command module imports at the top is paid by every command. The registry (SQLAlchemy), the
policies and the settings (pydantic) cost most of a second on a busy two-core machine; a
command that needs them imports them when it runs. These two helpers keep the command code
unchanged: `repo = module("registry.repo")` is a stand-in whose first attribute access imports
the module, `session_scope = function("registry.session", "session_scope")` a function that
imports its module on first call. Both go through `importlib.import_module`, so they are
thread-safe and share `sys.modules` with ordinary imports. Exceptions used in `except` clauses
and classes used in annotations need the real class: import those inside the function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class module:
    """A stand-in for a module, imported on first attribute access."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name}>"


def function(module_name: str, name: str) -> Callable[..., Any]:
    """`module_name.name`, imported when first called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"`{module_name}.{name}`, imported on first call."
    return call
