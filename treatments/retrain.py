"""Backbone-level treatments: F re-optimization of one block, augmentation retrain, full retrain.

They change convolutional weights, so they read images (the training and the
calibration + feedback sets) and their candidates are evaluated with a fresh
forward pass. Costs rise accordingly (3, 8 and 10 in the paper's matrix) and
the default policy asks a person to approve the last two.

* `f_reoptimization` retrains the last dense block, `norm5` and the head on
  cached block inputs (the frozen prefix runs once per image), with the
  failing pathology class-balanced, the site's rows up-weighted, and the other
  outputs distilled towards the parent's logits so they move as little as the
  data allow.
* `augmentation_retrain` fine-tunes every weight from the parent with
  site-style augmentation (magnification, contrast curve, noise, blur).
* `full_retrain` fine-tunes every weight from the parent on all the data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cxr.augment import site_style
from cxr.blocks import Tail, block_inputs, tail_parameter_names
from cxr.data import CXRDataset, concat_datasets
from cxr.infer import predict_probs
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.train import TrainConfig, train
from cxr.weights import tensors_digest
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentResult, probabilities
from treatments.operating import retune


def _parent(ctx: TreatmentContext) -> CXRDenseNet:
    if ctx.load_state is None:
        raise ValueError("this treatment needs the parent's weights")
    m = build_model(ctx.spec)
    m.load_state_dict(ctx.load_state(), strict=True)
    return m.eval()


def _images(ctx: TreatmentContext) -> tuple[CXRDataset, CXRDataset]:
    data = ctx.image_data or {}
    if "calibration" not in data or tuple(data["calibration"].image_ids) != tuple(ctx.calibration.image_ids):
        raise ValueError("this treatment needs the calibration images, in the calibration split's order")
    parts = [d for d in (data.get("train"), data["calibration"]) if d is not None]
    return concat_datasets(parts, "train+calibration"), data["calibration"]


def _applicable(planning: PlanningContext, need: int) -> tuple[bool, str]:
    if planning.calibration_cases < need:
        return False, f"only {planning.calibration_cases} labelled calibration cases at the site (needs {need})"
    return True, "retrains convolutional weights on images"


class FReoptParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    block: int | None = Field(None, ge=1, description="Dense block to re-optimize (default: the last).")
    epochs: int = Field(6, ge=1, le=200)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(128, ge=1)
    site_weight: float = Field(2.0, gt=0)
    distill_weight: float = Field(1.0, ge=0, description="Keep the other outputs near the parent's logits.")
    min_site_cases: int = Field(200, ge=1)


class FReoptimization:
    name = "f_reoptimization"
    fixes = frozenset({"false_positives", "false_negatives", "auroc_drop"})
    head_only = False

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        return _applicable(planning, 100)

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = FReoptParams.model_validate(ctx.params)
        block = p.block or len(ctx.spec.block_config)
        model = _parent(ctx)
        data = ctx.image_data or {}
        cal = data.get("calibration")
        if cal is None or tuple(cal.image_ids) != tuple(ctx.calibration.image_ids):
            raise ValueError("F re-optimization needs the calibration images, in the calibration split's order")
        parts = [d for d in (data.get("train"), cal) if d is not None]
        x_all = torch.from_numpy(np.concatenate([_cached_block_inputs(ctx, model, d, block) for d in parts]))
        n_cal = len(cal)
        tail = Tail(model, block)
        with torch.no_grad():
            parent_logits = torch.cat([tail(x_all[i:i + 512]) for i in range(0, len(x_all), 512)])
        labels = torch.from_numpy(np.concatenate([d.aligned_labels(ctx.spec.pathologies) for d in parts]))
        sites = [s for d in parts for s in d.sites]
        j = ctx.target_index
        weights = torch.ones_like(labels)
        weights[torch.tensor([s == ctx.report.site for s in sites])] *= p.site_weight
        yj = labels[:, j]
        n_pos, n_neg = float((yj == 1).sum()), float((yj == 0).sum())
        if n_pos and n_neg:
            weights[yj == 1, j] *= (n_pos + n_neg) / (2 * n_pos)
            weights[yj == 0, j] *= (n_pos + n_neg) / (2 * n_neg)
        others = [k for k in range(labels.shape[1]) if k != j]
        names = set(tail_parameter_names(model, block))
        for n, prm in model.named_parameters():
            prm.requires_grad_(n in names)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=p.lr)
        gen = torch.Generator().manual_seed(ctx.seed)
        tail.train()
        losses = []
        for _ in range(p.epochs):
            perm = torch.randperm(len(x_all), generator=gen)
            total = 0.0
            for i in range(0, len(perm), p.batch_size):
                idx = perm[i:i + p.batch_size]
                z = tail(x_all[idx])
                y, w = labels[idx], weights[idx]
                known = ~torch.isnan(y)
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    z[known], y[known], weight=w[known], reduction="sum") / w[known].sum().clamp_min(1.0)
                distill = ((z[:, others] - parent_logits[idx][:, others]) ** 2).mean()
                loss = bce + p.distill_weight * distill
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(perm))
        tail.eval()
        with torch.no_grad():
            new = torch.sigmoid(tail(x_all[len(x_all) - n_cal:])).numpy()
        old = probabilities(ctx.calibration.features, ctx.head_weight, ctx.head_bias)
        thresholds, op, where = retune(ctx, ctx.calibration.labels, old, new, ctx.calibration.sites,
                                       list(range(labels.shape[1])), p.min_site_cases)
        state = model.state_dict()
        updates = {n: state[n].detach().clone() for n in tail_parameter_names(model, block)}
        n_train = sum(q.numel() for n, q in model.named_parameters() if n in names)
        return TreatmentResult(
            thresholds=thresholds, state_updates=updates, trainable_parameters=n_train,
            notes=(f"re-optimized denseblock{block} + norm5 + head ({n_train:,} parameters) on {len(x_all)} cached "
                   f"block inputs, {p.epochs} epochs (loss {losses[0]:.4f} → {losses[-1]:.4f}); "
                   f"{ctx.report.pathology} threshold {op.threshold:.4f} from {where} ({op.method})"),
            artifacts={"losses": losses, "block": block, "guarantee": op.guarantee},
        )


def _cached_block_inputs(ctx: TreatmentContext, model: CXRDenseNet, ds: CXRDataset, block: int) -> np.ndarray:
    """Inputs of `block` for `ds`, from the context's cache when the frozen prefix and data are the same."""
    if ctx.cache is None:
        return block_inputs(model, ds, block)
    tail = set(tail_parameter_names(model, block))
    state = model.state_dict()
    prefix = tensors_digest({k: v for k, v in state.items() if k not in tail})
    key = hashlib.sha256(f"block-inputs|{block}|{prefix}|{ds.digest()}|{ds.resolution}".encode()).hexdigest()
    got = ctx.cache.get(key)
    if got is not None and len(got) == len(ds):
        return got
    x = block_inputs(model, ds, block)
    ctx.cache.put(key, x)
    return x


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1, le=500)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    min_site_cases: int = Field(200, ge=1)


class _Retrain:
    head_only = False
    fixes = frozenset({"false_positives", "false_negatives", "auroc_drop", "calibration_drift"})
    site_augmentation = False

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        return _applicable(planning, 100)

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = RetrainParams.model_validate(ctx.params)
        parent = _parent(ctx)
        data, cal = _images(ctx)
        res = train(ctx.spec, data, TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=ctx.seed),
                    init_state=parent.state_dict(), augment_fn=site_style if self.site_augmentation else None)
        model = res.model.eval()
        old = probabilities(ctx.calibration.features, ctx.head_weight, ctx.head_bias)
        thresholds, op, where = retune(ctx, ctx.calibration.labels, old, predict_probs(model, cal),
                                       ctx.calibration.sites, list(range(ctx.spec.num_classes)), p.min_site_cases)
        n = parameter_count(model)
        how = "with site-style augmentation " if self.site_augmentation else ""
        return TreatmentResult(
            thresholds=thresholds,
            state_updates={k: v.detach().clone() for k, v in model.state_dict().items()},
            trainable_parameters=n,
            notes=(f"fine-tuned all {n:,} parameters from the parent {how}on {len(data)} images, {p.epochs} epochs "
                   f"(loss {res.history[0]['loss']:.4f} → {res.history[-1]['loss']:.4f}); {ctx.report.pathology} "
                   f"threshold {op.threshold:.4f} from {where} ({op.method})"),
            artifacts={"history": res.history, "guarantee": op.guarantee},
        )


class AugmentationRetrain(_Retrain):
    name = "augmentation_retrain"
    site_augmentation = True


class FullRetrain(_Retrain):
    name = "full_retrain"
