"""Where a treatment's `apply` runs: in this process, or on a Ray cluster.

`DECIDE_EXECUTOR=local` (the default) calls `plugin.apply(ctx)` here.
`DECIDE_EXECUTOR=ray` sends the heavy treatments — those that read images
(`head_only = False`: F re-optimization, augmentation and full retrain) — to
Ray as one task each; the head-level ones (milliseconds on cached features)
still run here, where shipping their inputs would cost more than the work.
The cluster is the one `RAY_ADDRESS` names (Ray reads it), else a local one
started on first use. Workers need cxr-decide installed (the built-in
treatments and any plugin are imported there) and, for folder or NIH data,
the same image paths; phantom data travel in Ray's object store.

Nothing else changes: the engine records the run, beats its heartbeat while
it waits, evaluates and gates the candidate here. A treatment that raises on a
worker raises the same exception here (so `TreatmentDeclined` is still a
rejection with its artifacts, anything else a failed run). Interrupted while
waiting (Ctrl-C, SIGTERM), the task is cancelled on the cluster.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from cxr.errors import InvalidInput
from cxr.faults import failpoint
from registry.settings import get_settings
from treatments.base import Treatment, TreatmentContext, TreatmentResult

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    name: str

    def run(self, plugin: Treatment, ctx: TreatmentContext) -> TreatmentResult: ...


class LocalExecutor:
    """`apply` in this process."""

    name = "local"

    def run(self, plugin: Treatment, ctx: TreatmentContext) -> TreatmentResult:
        failpoint("in_treatment")
        return plugin.apply(ctx)


def _apply_remote(plugin: Treatment, ctx: TreatmentContext) -> tuple[TreatmentResult, dict[str, Any]]:
    """The task body on a Ray worker: run the treatment, say where it ran."""
    import socket

    return plugin.apply(ctx), {"host": socket.gethostname(), "pid": os.getpid()}


class RayExecutor:
    """Heavy treatments as Ray tasks (`num_cpus` each); head-level ones here."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1.0) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.last_worker: dict[str, Any] | None = None  # where the last remote task ran (host, pid)
        self._task: Any = None

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise InvalidInput("DECIDE_EXECUTOR=ray needs Ray: pip install 'cxr-decide[ray]'",
                               field="DECIDE_EXECUTOR") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
            log.info("Ray cluster: %s", ray.cluster_resources())
        if self._task is None:
            self._task = ray.remote(_apply_remote)
        return ray

    def run(self, plugin: Treatment, ctx: TreatmentContext) -> TreatmentResult:
        if getattr(plugin, "head_only", False):
            return plugin.apply(ctx)
        ray = self._ray()
        ref = self._task.options(num_cpus=self.num_cpus, name=f"cxr-decide:{plugin.name}").remote(plugin, ctx)
        try:
            result, where = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):  # the treatment's own exception, as if it ran here
                raise cause from None
            raise
        except BaseException:  # interrupted while waiting: do not leave the task running on the cluster
            ray.cancel(ref, force=True)
            raise
        self.last_worker = where
        log.info("%s ran on Ray worker %s (pid %s)", plugin.name, where["host"], where["pid"])
        return result


def make_executor(kind: str | None = None) -> Executor:
    """The executor `kind` names, by default the settings' (`DECIDE_EXECUTOR`: `local` or `ray`)."""
    settings = get_settings()
    kind = (kind or settings.executor).strip().lower()
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(num_cpus=settings.ray_num_cpus)
    raise InvalidInput(f"unknown executor {kind!r} (expected one of {', '.join(EXECUTORS)})",
                       field="DECIDE_EXECUTOR")
