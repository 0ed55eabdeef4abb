"""Backbone-level treatments: F re-optimization of one block, augmentation retrain, full retrain.

They change convolutional weights, so they read images (the training and the
calibration + feedback sets) and their candidates are evaluated with a fresh
forward pass. Costs rise accordingly (3, 8 and 10 in the paper's matrix) and
the default policy asks a person to approve the last two.

* `f_reoptimization` (`treatments.freopt`, re-exported here for its entry point) re-trains the dense
  block the shift diagnosis points to.
* `augmentation_retrain` fine-tunes every weight from the parent with augmentation drawn around the
  report site's own style — contrast curve, noise, blur, magnification — estimated from its films
  (`cxr.site_style`); the estimate is recorded. With too few of the site's films it falls back to the
  fixed preset (`cxr.augment.random_site_style`).
* `full_retrain` fine-tunes every weight from the parent on all the data.

Both stop when they cannot win (`treatments.backbone.StoppingParams`): past the policy's `time_budget_s`
(counted from the treatment's start) the epoch that ends is the last; with `early_stop_patience` a
patient-level share of the calibration rows (`early_stop_holdout`) is kept out of the fine-tuning and the
target's AUROC on them (the report site's rows when they hold both classes) is scored after every epoch —
the run stops after that many epochs without improvement and keeps the best epoch's weights. Either way the
candidate goes to the gate; epochs run and planned, why it stopped and the monitored values are recorded
(`artifacts["training"]`, and the notes when it did not simply complete).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from pydantic import ConfigDict, Field

from cxr.augment import random_site_style
from cxr.data import concat_datasets
from cxr.infer import predict_logits, predict_probs
from cxr.kinds import PERFORMANCE_KINDS
from cxr.model import parameter_count
from cxr.site_style import site_matched_augment
from cxr.train import Budget, TrainConfig, train
from treatments.backbone import (
    StoppingParams,
    applicable_with,
    image_sets,
    parent_model,
    patient_holdout,
    site_style_of,
    target_monitor,
)
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentResult, probabilities
from treatments.operating import retune

__all__ = ["AugmentationParams", "AugmentationRetrain", "FullRetrain", "RetrainParams"]


class RetrainParams(StoppingParams):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1, le=500)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    min_site_cases: int = Field(200, ge=1)
    early_stop_holdout: float = Field(0.2, gt=0, lt=1, description="With early stopping: the share of calibration "
                                      "patients kept out of the fine-tuning for the held-out target.")


class AugmentationParams(RetrainParams):
    spread: float = Field(0.5, ge=0, le=1, description="Each rendered film's deviation from 'no change' is the "
                                                       "estimate's × U(1 − spread, 1 + spread).")
    share: float = Field(0.5, ge=0, le=1, description="Share of training films rendered in the site's style.")
    style_images: int = Field(400, ge=8, description="Films per side for estimating the site's style.")


class _Retrain:
    head_only = False
    fixes = PERFORMANCE_KINDS
    params_model: type[RetrainParams] = RetrainParams

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        return applicable_with(planning, 100)

    def _augmentation(self, ctx: TreatmentContext, p: RetrainParams) -> tuple[Callable | None, str, dict]:
        """(augment_fn for `train`, how to say it, artifacts): the training loop's default here."""
        return None, "", {}

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = self.params_model.model_validate(ctx.params)
        budget = Budget.start(p.time_budget_s)
        parent = parent_model(ctx)
        data, cal = image_sets(ctx)
        early, watching = None, ""
        if p.early_stop_patience is not None:  # hold calibration patients out of the fine-tuning to watch the target
            hold = patient_holdout(cal.patient_ids, p.early_stop_holdout, ctx.seed, "early-stop")
            held = cal.subset(np.flatnonzero(hold), "early-stop held-out")
            j = ctx.target_index
            early, watching = target_monitor(ctx, p.early_stop_patience, p.early_stop_min_delta,
                                             ctx.calibration.labels[hold], held.sites,
                                             lambda m, rows: predict_logits(m, held.subset(rows))[:, j])
            if early is not None:
                data = concat_datasets([d for d in ((ctx.image_data or {}).get("train"),
                                                    cal.subset(np.flatnonzero(~hold))) if d is not None],
                                       "train+calibration (early-stop rows held out)")
        augment, how, extra = self._augmentation(ctx, p)
        res = train(ctx.spec, data, TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=ctx.seed),
                    init_state=parent.state_dict(), augment_fn=augment, budget=budget, early_stop=early)
        model = res.model.eval()
        stop = res.stop
        off = watching if early is None else ""  # why early stopping was off, when the policy asked for it
        training = stop.as_dict() | ({"early_stopping": off} if off else {})
        said = stop.summary() or off
        old = probabilities(ctx.calibration.features, ctx.head_weight, ctx.head_bias)
        thresholds, op, where = retune(ctx, ctx.calibration.labels, old, predict_probs(model, cal),
                                       ctx.calibration.sites, list(range(ctx.spec.num_classes)), p.min_site_cases)
        n = parameter_count(model)
        return TreatmentResult(
            thresholds=thresholds,
            state_updates={k: v.detach().clone() for k, v in model.state_dict().items()},
            trainable_parameters=n,
            notes=(f"fine-tuned all {n:,} parameters from the parent {how}on {len(data)} images, {p.epochs} epochs "
                   f"(loss {res.history[0]['loss']:.4f} → {res.history[-1]['loss']:.4f}"
                   + (f"; {said}" if said else "") + f"); {ctx.report.pathology} "
                   f"threshold {op.threshold:.4f} from {where} ({op.method})"),
            artifacts={"history": res.history, "guarantee": op.guarantee, "training": training, **extra},
        )


class AugmentationRetrain(_Retrain):
    """Fine-tune every weight with augmentation drawn around the report site's own estimated style."""

    name = "augmentation_retrain"
    params_model = AugmentationParams

    def _augmentation(self, ctx: TreatmentContext, p: RetrainParams) -> tuple[Callable | None, str, dict]:
        assert isinstance(p, AugmentationParams)
        style = site_style_of(ctx, p.style_images)
        if style is None:  # too few of the site's films to estimate from: the fixed preset
            return (random_site_style,
                    "with preset site-style augmentation (too few site films to estimate its style) ",
                    {"site_style": None, "augmentation": "preset"})
        how = (f"with augmentation matched to {ctx.report.site} (estimated from {style.n_images} of its films: gamma "
               f"{style.gamma:.2f}, gain {style.gain:.2f}, offset {style.offset:+.3f}, noise {style.noise:.3f}, blur "
               f"{style.blur_px:.2f} px, magnification ×{style.magnification:.3f}; spread ±{p.spread:.0%}, "
               f"{p.share:.0%} of films) ")
        augment = functools.partial(site_matched_augment, style=style, spread=p.spread, share=p.share)
        return augment, how, {"site_style": style.as_dict(), "augmentation": "site-matched",
                              "spread": p.spread, "share": p.share}


class FullRetrain(_Retrain):
    name = "full_retrain"
