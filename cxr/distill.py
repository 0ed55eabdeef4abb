"""Knowledge distillation: train a smaller student DenseNet on a teacher's logits (Hinton et al. 2015).

Multi-label outputs are independent sigmoids, so the soft target of label k is
σ(z_teacher,k / T) and the student pays binary cross-entropy against it at the
same temperature; the gradient of that term shrinks like 1/T², so it is scaled
by T² (Hinton et al.). Known true labels add the usual masked BCE:

    loss = T² · mean_k BCE(σ(z_s/T), σ(z_t/T)) + w_label · masked BCE(z_s, y)

The teacher runs on the same augmented batch as the student. Training is the
house loop of `cxr.train` (AdamW, one-cycle, seeded by epoch and batch, an
atomic checkpoint after every epoch): a run interrupted and started again with
the same checkpoint folder resumes and ends with the same weights. Structured
pruning reuses it to fine-tune a pruned model from its own reconstructed
weights (`init_state`) with the unpruned parent as teacher.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet, build_model
from cxr.spec import ArchSpec
from cxr.train import ProgressFn, TrainResult, _augment, _load_checkpoint, _save_checkpoint, masked_bce
from cxr.weights import tensors_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 2.0
    label_weight: float = 1.0  # weight of the true-label BCE beside the T²-scaled soft term
    seed: int = 0
    augment: bool = True
    threads: int | None = None  # None: torch.get_num_threads() (physical cores, or OMP_NUM_THREADS)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput("must be at least 1", field=name)
        if not 0 < self.lr < 1:
            raise InvalidInput("must be in (0, 1)", field="lr")
        if self.temperature <= 0:
            raise InvalidInput("must be positive", field="temperature")
        if self.label_weight < 0:
            raise InvalidInput("must be at least 0", field="label_weight")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                 label_weight: float) -> torch.Tensor:
    """T² · BCE(σ(z_s/T), σ(z_t/T)) over every output + `label_weight` · masked BCE on the known labels."""
    t = temperature
    soft = F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    return soft + label_weight * masked_bce(student, labels) if label_weight else soft


def distill(
    student_spec: ArchSpec,
    teacher: CXRDenseNet,
    data: CXRDataset,
    cfg: DistillConfig = DistillConfig(),
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop_after_epoch: int | None = None,
    augment_fn: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> TrainResult:
    """Train a `student_spec` model on `data` against `teacher` (eval mode, frozen); resumable.

    `init_state` starts the student from given weights (e.g. a pruned, reconstructed model) instead
    of a seeded initialisation. The student must have the teacher's outputs and resolution.
    Returns the house `TrainResult` (history with loss per epoch). Raises `InvalidInput` for an
    empty set or mismatched outputs / resolution.
    """
    if len(data) == 0:
        raise InvalidInput("the training set is empty", field="data")
    if tuple(student_spec.pathologies) != tuple(teacher.spec.pathologies):
        raise InvalidInput("student and teacher must have the same outputs", field="spec.pathologies")
    if data.resolution != student_spec.resolution or teacher.spec.resolution != student_spec.resolution:
        raise InvalidInput("student, teacher and data must share one resolution", field="resolution")
    if cfg.threads:  # else torch's own setting: OMP_NUM_THREADS, or what the caller chose
        torch.set_num_threads(cfg.threads)
    teacher.eval()
    labels = torch.from_numpy(data.aligned_labels(student_spec.pathologies))
    model = build_model(student_spec, seed=cfg.seed)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-len(data) // cfg.batch_size)
    total = cfg.epochs * steps  # warm up a quarter of the steps, and at least 1.5 (a short fine-tune)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 3),
                                                pct_start=min(0.5, max(0.25, 1.5 / max(total, 3))))
    c = asdict(cfg)
    c.pop("threads")
    fp = json.dumps({"kind": "distill", "spec": student_spec.digest(), "data": data.digest(), "cfg": c,
                     "teacher": tensors_digest(teacher.state_dict()),
                     "init": tensors_digest(init_state) if init_state is not None else None}, sort_keys=True)
    ckpt = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir else None
    start = _load_checkpoint(ckpt, model, opt, sched, fp) if ckpt and ckpt.is_file() else 0
    result = TrainResult(model=model, resumed_from_epoch=start)
    t_all = time.perf_counter()
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data))
        total, seen = 0.0, 0
        for b in range(steps):
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            x = data.images(idx)
            if cfg.augment:
                x = (augment_fn or _augment)(x, np.random.default_rng([cfg.seed, epoch, b]))
            xt = torch.from_numpy(x)
            with torch.no_grad():
                zt = teacher(xt)
            loss = distill_loss(model(xt), zt, labels[idx], cfg.temperature, cfg.label_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if progress:
                progress("batch", b + 1, steps, {"epoch": epoch, "loss": total / seen})
        dt = time.perf_counter() - t0
        stats = {"epoch": epoch, "loss": total / seen, "seconds": dt, "images_per_s": seen / dt}
        result.history.append(stats)
        log.info("distillation epoch %d: loss %.4f", epoch, stats["loss"])
        if ckpt:
            _save_checkpoint(ckpt, model, opt, sched, epoch, fp)
        if progress:
            progress("epoch", epoch, cfg.epochs, stats)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    result.seconds = time.perf_counter() - t_all
    model.eval()
    return result
