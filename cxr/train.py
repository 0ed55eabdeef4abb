"""The house training loop: AdamW, one-cycle schedule, seeded, resumable; `train` runs it on masked BCE.

* `fit` is the one loop. Its caller supplies the per-batch loss (`StepFn`) and, when it differs, the
  schedule and what else identifies the job; ordinary training (`train`, masked BCE on the labels)
  and distillation (`cxr.distill`, a teacher's soft targets) are both `fit`.
* Masked BCE: a NaN label (unknown) contributes nothing, as in torchxrayvision.
* Seeded end to end: initial weights, data order and augmentation depend only
  on `TrainConfig.seed` and the epoch, so a resumed run ends with the same
  weights as an uninterrupted one.
* A checkpoint (model + optimizer + schedule, safetensors) is written
  atomically after every epoch; `fit(..., checkpoint_dir=...)` resumes from
  it when the job's fingerprint (spec, data, config, initial weights, `job`) matches.
* Progress is reported through a callback; the CLI draws a rich progress bar.
* Runs that stop when they cannot win: an optional time `Budget` (read on the one clock, `cxr.clock`, through
  `budget_clock`) and optional `EarlyStopping` on a held-out target, both checked after every epoch by an
  `EpochWatch`, which keeps the best epoch's weights and records why the run stopped (`StopRecord`).
  `cxr.blocks.tune_block` (F re-optimization's loop) takes the same watch through its `after_epoch` hook.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from cxr import clock
from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.files import atomic_write
from cxr.model import CXRDenseNet, build_model
from cxr.spec import ArchSpec
from cxr.weights import tensors_digest

log = logging.getLogger(__name__)

#: progress(phase, done, total, info): phase is "epoch" or "batch"
ProgressFn = Callable[[str, int, int, dict], None]
#: step(model, x, y) -> loss: the loss of one batch, images `x` (augmented) with their labels `y` (NaN unknown)
StepFn = Callable[[CXRDenseNet, torch.Tensor, torch.Tensor], torch.Tensor]
#: schedule(optimizer, max_lr, total_steps) -> the learning-rate schedule, stepped after every batch
ScheduleFn = Callable[[torch.optim.Optimizer, float, int], torch.optim.lr_scheduler.LRScheduler]
#: augment(x, rng) -> x: a training batch's images changed the way `rng` draws
AugmentFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    """What `fit` needs of a job; a job with more knobs (`cxr.distill.DistillConfig`) extends it."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True  # small shifts and exposure jitter; never flips (the heart has a side)
    threads: int | None = None  # None: torch.get_num_threads() (physical cores, or OMP_NUM_THREADS)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput("must be at least 1", field=name)
        if not 0 < self.lr < 1:
            raise InvalidInput("must be in (0, 1)", field="lr")


def budget_clock() -> datetime:
    """What a time budget is measured by: the one clock (`cxr.clock.now`). Read once when a `Budget` starts, once
    after every epoch an `EpochWatch` sees and by `Budget.spent`, so a test that puts a clock here moving 100 s
    a reading makes every epoch "take" 100 s — no real waiting."""
    return clock.now()


@dataclass(frozen=True)
class Budget:
    """A run's time budget: `seconds` (None: none) counted from `started` (the treatment's start, not the loop's)."""

    seconds: float | None
    started: datetime

    @classmethod
    def start(cls, seconds: float | None) -> Budget:
        if seconds is not None and seconds <= 0:
            raise InvalidInput("must be positive", field="time_budget_s")
        return cls(seconds, budget_clock())

    def elapsed(self) -> float:
        return (budget_clock() - self.started).total_seconds()

    def spent(self) -> bool:
        """True once the budget is used up (never without one; the clock is read only with one)."""
        return self.seconds is not None and self.elapsed() >= self.seconds


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` epochs in a row whose `monitor(model)` (higher is better, on data the training never
    sees) did not beat the best so far by more than 0 and by at least `min_delta`; `name` says what it measures."""

    monitor: Callable[[CXRDenseNet], float]
    patience: int
    min_delta: float = 0.0
    name: str = "the held-out target"

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise InvalidInput("must be at least 1", field="early_stop_patience")
        if self.min_delta < 0:
            raise InvalidInput("must not be negative", field="early_stop_min_delta")


@dataclass
class StopRecord:
    """How a run ended: `stopped` is "completed", "budget", "no_improvement" or "interrupted"; `reason` says it in
    words; `monitored` holds one {"epoch", "value"} per epoch the monitor scored; `restored_epoch` is the epoch
    whose weights the model was left with when they are not the last epoch's."""

    epochs_run: int
    epochs_planned: int
    stopped: str = "completed"
    reason: str = "completed"
    monitor: str | None = None
    monitored: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    restored_epoch: int | None = None
    seconds: float = 0.0
    time_budget_s: float | None = None
    patience: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A clause for a treatment's notes: empty for a run that completed without a monitor."""
        if self.stopped == "completed" and self.monitor is None:
            return ""
        kept = f"; kept epoch {self.restored_epoch}'s weights" if self.restored_epoch is not None else ""
        if self.stopped == "completed":
            return f"ran all {self.epochs_planned} epochs watching {self.monitor}{kept}"
        return f"stopped after {self.epochs_run} of {self.epochs_planned} epochs — {self.reason}{kept}"


class EpochWatch:
    """After each epoch: score the early-stopping monitor (keeping the best epoch's weights), then check the
    budget; `after_epoch` says whether to stop. `finish` restores the best epoch's weights when a monitor ran
    and returns the `StopRecord`. The monitor runs with the model as the loop left it and every module's
    train/eval mode is put back afterwards (a monitor may switch the model to eval mode)."""

    def __init__(self, model: CXRDenseNet, planned: int, budget: Budget | None = None,
                 early: EarlyStopping | None = None) -> None:
        self.model, self.budget, self.early = model, budget or Budget(None, budget_clock()), early
        self.record = StopRecord(epochs_run=0, epochs_planned=planned, monitor=early.name if early else None,
                                 time_budget_s=self.budget.seconds, patience=early.patience if early else None)
        self._best: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._since_best = 0
        self._elapsed: float | None = None  # by the budget clock at the end of the last epoch

    def after_epoch(self, epoch: int, *, monitored: bool = True) -> bool:
        """Epoch `epoch` (1-based, of `planned`) is done; True: stop now. `monitored=False` skips the monitor
        (an epoch on another objective, e.g. F re-optimization's consistency-only epochs)."""
        r = self.record
        r.epochs_run += 1
        if self.early is not None and monitored:
            modes = [(m, m.training) for m in self.model.modules()]
            value = float(self.early.monitor(self.model))
            for m, was in modes:
                m.train(was)
            r.monitored.append({"epoch": epoch, "value": value})
            if value != value:  # NaN: not measurable this epoch, so no improvement
                self._since_best += 1
            elif self._best is None or (value > self._best and value - self._best >= self.early.min_delta):
                self._best, r.best_epoch, self._since_best = value, epoch, 0
                self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                self._since_best += 1
            if self._since_best >= self.early.patience and epoch < r.epochs_planned:
                r.stopped = "no_improvement"
                r.reason = (f"no improvement of {self.early.name} for {self._since_best} epochs "
                            f"(best {self._best:.4f} at epoch {r.best_epoch})")
                return True
        b = self.budget
        self._elapsed = b.elapsed()
        if b.seconds is not None and epoch < r.epochs_planned and self._elapsed >= b.seconds:
            r.stopped = "budget"
            r.reason = f"budget: {b.seconds:g} s reached after {epoch} of {r.epochs_planned} epochs"
            return True
        return False

    def interrupted(self, epoch: int) -> None:
        """The caller ends the run after `epoch` for its own reason (`fit`'s `stop_after_epoch`)."""
        self.record.stopped, self.record.reason = "interrupted", f"interrupted after epoch {epoch} (resumable)"

    def finish(self) -> StopRecord:
        r = self.record
        r.seconds = round(self._elapsed if self._elapsed is not None else self.budget.elapsed(), 3)
        last = r.monitored[-1]["epoch"] if r.monitored else None
        if self._best_state is not None and r.best_epoch != last:
            self.model.load_state_dict(self._best_state, strict=True)
            r.restored_epoch = r.best_epoch
        return r


@dataclass
class TrainResult:
    model: CXRDenseNet
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    #: how the run ended (epochs run and planned, why it stopped, the monitored values); `fit` fills it in
    stop: StopRecord = field(default_factory=lambda: StopRecord(epochs_run=0, epochs_planned=0))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the known (non-NaN) labels."""
    known = ~torch.isnan(labels)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], labels[known])


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift by up to 2 px (edge padding) and jitter exposure/contrast slightly."""
    n, _, h, w = x.shape
    pad = 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    out = np.empty_like(x)
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    for i in range(n):
        out[i] = xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    scale = rng.uniform(0.92, 1.08, size=(n, 1, 1, 1)).astype(np.float32)
    shift = rng.uniform(-40, 40, size=(n, 1, 1, 1)).astype(np.float32)
    return np.clip(out * scale + shift, -1024, 1024)


def _fingerprint(spec: ArchSpec, data: CXRDataset, cfg: TrainConfig, init: str | None, job: dict) -> str:
    """What a checkpoint must have been written by to be resumed. The keys and their JSON are part of the
    checkpoint format: a checkpoint written before is resumed only while this string stays the same."""
    c = asdict(cfg)
    c.pop("threads")  # thread count does not change the job
    return json.dumps({"spec": spec.digest(), "data": data.digest(), "cfg": c, "init": init} | job, sort_keys=True)


def _save_checkpoint(path: Path, model: CXRDenseNet, opt: torch.optim.Optimizer, sched, epoch: int, fp: str) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"optim.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
    # param_groups carry the schedule's current lr and momentum: without them a resumed
    # run would take its first step with the initial values and drift from an uninterrupted one.
    groups = opt.state_dict()["param_groups"]
    meta = json.dumps(
        {"epoch": epoch, "fingerprint": fp, "sched": sched.state_dict(), "groups": groups}, sort_keys=True
    )
    atomic_write(path, save(tensors, metadata={"cxr_decide_ckpt": meta}))


def _load_checkpoint(path: Path, model: CXRDenseNet, opt: torch.optim.Optimizer, sched, fp: str) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["cxr_decide_ckpt"])
    if meta["fingerprint"] != fp:
        log.warning("checkpoint %s belongs to another job; starting fresh", path)
        return 0
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state = opt.state_dict()
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, i, k = name.split(".", 2)
            state["state"].setdefault(int(i), {})[k] = v
    state["param_groups"] = [g | {"betas": tuple(g["betas"])} if "betas" in g else g for g in meta["groups"]]
    opt.load_state_dict(state)
    sched.load_state_dict(meta["sched"])
    return int(meta["epoch"])


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """`train`'s schedule: one cycle over the run, warming up for a quarter of the steps."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=0.25)


def fit(
    spec: ArchSpec,
    data: CXRDataset,
    cfg: TrainConfig,
    step: StepFn,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    job: dict | None = None,
    schedule: ScheduleFn = one_cycle,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after_epoch: int | None = None,
    augment_fn: AugmentFn | None = None,
    log_as: str = "epoch",
    budget: Budget | None = None,
    early_stop: EarlyStopping | None = None,
) -> TrainResult:
    """Fit a model for `spec` to `data`, minimising `step`'s loss by AdamW; resume from `checkpoint_dir`.

    The model starts from `build_model(spec, seed=cfg.seed)`, or from `init_state`. Each epoch visits
    `data` in an order drawn from (seed, epoch); each batch is augmented (when `cfg.augment`: by
    `augment_fn`, else small shifts and exposure jitter) with a generator seeded by (seed, epoch,
    batch), then `step(model, x, y)` gives its loss. `schedule(opt, cfg.lr, total_steps)` makes the
    learning-rate schedule. After every epoch the model, optimizer and schedule are checkpointed; a
    checkpoint is resumed only by the job that wrote it: the same spec, data, config (but threads),
    initial weights and `job` (what else identifies the run, e.g. a teacher's digest).
    `stop_after_epoch` ends the run early (as an interruption would). `log_as` names the epoch in
    the log. The caller has checked `data` (non-empty, the spec's resolution).

    `budget` ends the run after the first epoch that finishes with the budget used up (counted from
    `budget.started`: at least one epoch always runs). `early_stop` scores its monitor after every epoch
    and ends the run once `patience` epochs in a row did not improve on the best; whenever it is given, the
    model comes back with the best-scoring epoch's weights. Neither changes anything while the run goes
    on (no random draws, no optimizer state), so without them the run is exactly what it was; their state
    is not checkpointed (a resumed run counts patience from its resume point). Returns the model in eval
    mode with one history entry per epoch run here, and `stop`: epochs run and planned, why it stopped,
    the monitored values.
    """
    if cfg.threads:  # else torch's own setting: OMP_NUM_THREADS, or what the caller chose
        torch.set_num_threads(cfg.threads)
    labels = torch.from_numpy(data.aligned_labels(spec.pathologies))
    model = build_model(spec, seed=cfg.seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(data) // cfg.batch_size)
    sched = schedule(opt, cfg.lr, cfg.epochs * steps_per_epoch)
    init = tensors_digest(init_state) if init_state is not None else None
    fp = _fingerprint(spec, data, cfg, init, job or {})
    ckpt = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir else None
    start = _load_checkpoint(ckpt, model, opt, sched, fp) if ckpt and ckpt.is_file() else 0
    result = TrainResult(model=model, resumed_from_epoch=start)
    watch = EpochWatch(model, cfg.epochs, budget, early_stop)
    t_all = time.perf_counter()
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data))
        total, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            x = data.images(idx)
            if cfg.augment:
                x = (augment_fn or _augment)(x, np.random.default_rng([cfg.seed, epoch, b]))
            loss = step(model, torch.from_numpy(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if progress:
                progress("batch", b + 1, steps_per_epoch, {"epoch": epoch, "loss": total / seen})
        dt = time.perf_counter() - t0
        stats = {"epoch": epoch, "loss": total / seen, "seconds": dt, "images_per_s": seen / dt}
        result.history.append(stats)
        log.info("%s %d: loss %.4f, %.0f images/s", log_as, epoch, stats["loss"], stats["images_per_s"])
        if ckpt:
            _save_checkpoint(ckpt, model, opt, sched, epoch, fp)
        if progress:
            progress("epoch", epoch, cfg.epochs, stats)
        if watch.after_epoch(epoch):
            log.info("%s %d: %s", log_as, epoch, watch.record.reason)
            break
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            if epoch < cfg.epochs:
                watch.interrupted(epoch)
            break
    result.stop = watch.finish()
    result.seconds = time.perf_counter() - t_all
    model.eval()
    return result


def _bce_step(model: CXRDenseNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return masked_bce(model(x), y)


def train(
    spec: ArchSpec,
    data: CXRDataset,
    cfg: TrainConfig = TrainConfig(),
    *,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after_epoch: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    augment_fn: AugmentFn | None = None,
    budget: Budget | None = None,
    early_stop: EarlyStopping | None = None,
) -> TrainResult:
    """Train a model for `spec` on `data` (masked BCE on its labels); resume from `checkpoint_dir` when possible.

    `stop_after_epoch` ends the run early (as an interruption would), leaving the
    checkpoint for a later call to resume from. `init_state` starts from given
    weights (fine-tuning a parent version) instead of a seeded initialisation;
    `augment_fn(x, rng)` replaces the default augmentation (e.g. site-style); `budget` and `early_stop`
    may end it sooner (see `fit`).
    Raises `InvalidInput` for an empty set or data at another resolution than the spec's.
    """
    if len(data) == 0:
        raise InvalidInput("the training set is empty", field="data")
    if data.resolution != spec.resolution:
        raise InvalidInput(f"data at {data.resolution}px, model expects {spec.resolution}px", field="resolution")
    return fit(spec, data, cfg, _bce_step, init_state=init_state, checkpoint_dir=checkpoint_dir, progress=progress,
               stop_after_epoch=stop_after_epoch, augment_fn=augment_fn, budget=budget, early_stop=early_stop)
