"""Knowledge distillation: train a smaller student DenseNet on a teacher's logits (Hinton et al. 2015).

Multi-label outputs are independent sigmoids, so the soft target of label k is
σ(z_teacher,k / T) and the student pays binary cross-entropy against it at the
same temperature; the gradient of that term shrinks like 1/T², so it is scaled
by T² (Hinton et al.). Known true labels add the usual masked BCE:

    loss = T² · mean_k BCE(σ(z_s/T), σ(z_t/T)) + w_label · masked BCE(z_s, y)

The teacher runs on the same augmented batch as the student. Training is the
house loop `cxr.train.fit` (AdamW, one-cycle, seeded by epoch and batch, an
atomic checkpoint after every epoch) with this loss as its step: a run
interrupted and started again with the same checkpoint folder resumes and ends
with the same weights. Structured pruning reuses it to fine-tune a pruned model
from its own reconstructed weights (`init_state`) with the unpruned parent as
teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from cxr.data import CXRDataset
from cxr.errors import InvalidInput
from cxr.model import CXRDenseNet
from cxr.spec import ArchSpec
from cxr.train import AugmentFn, ProgressFn, TrainConfig, TrainResult, fit, masked_bce
from cxr.weights import tensors_digest


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """The house `TrainConfig` (a lower default lr) plus the temperature and the weight of the true labels.

    Its own fields follow the inherited ones: pass them by keyword."""

    lr: float = 2e-3
    temperature: float = 2.0
    label_weight: float = 1.0  # weight of the true-label BCE beside the T²-scaled soft term

    def __post_init__(self) -> None:
        super().__post_init__()
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


def _short_one_cycle(opt: torch.optim.Optimizer, max_lr: float, total_steps: int) -> OneCycleLR:
    """One cycle that warms up a quarter of the steps, and at least 1.5 of them (a short fine-tune)."""
    n = max(total_steps, 3)
    return OneCycleLR(opt, max_lr=max_lr, total_steps=n, pct_start=min(0.5, max(0.25, 1.5 / n)))


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
    augment_fn: AugmentFn | None = None,
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
    teacher.eval()

    def step(model: CXRDenseNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            zt = teacher(x)
        return distill_loss(model(x), zt, y, cfg.temperature, cfg.label_weight)

    # the fingerprint's "kind" and "teacher" keep a distillation checkpoint apart from a training one
    job = {"kind": "distill", "teacher": tensors_digest(teacher.state_dict())}
    return fit(student_spec, data, cfg, step, init_state=init_state, job=job, schedule=_short_one_cycle,
               checkpoint_dir=checkpoint_dir, progress=progress, stop_after_epoch=stop_after_epoch,
               augment_fn=augment_fn, log_as="distillation epoch")
