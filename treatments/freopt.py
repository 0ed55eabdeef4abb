"""F re-optimization (cost 3): re-train the one dense block where the site's shift lives.

Surgical fine-tuning (Lee et al., ICLR 2023): input-level shifts (a detector's
contrast curve, noise, blur) are best undone by the first block, feature-level
shifts by middle blocks, output-level ones by the head. The block comes from
the shift diagnosis (`cxr.shift`, computed by the engine or, without one,
here), or from the policy (`block`).

What trains, and why: the block and the transition after it ("block" — the
default), or also `norm5` and the head ("block+head"). The default keeps
everything after the block frozen, BatchNorm statistics included, so the later
layers keep reading features the way they were trained to; the block is asked
to give the site's films features those layers can read. Adding the head lets
the readout move too, which helps an output-level problem but gives the other
pathologies more room to drift.

The loss on the block's cached inputs (train split + the calibration rows not
held out): weighted BCE with the failing pathology class-balanced and the
site's rows up-weighted, plus distillation of the *other* outputs towards the
parent's logits on rows of other sites (at the report's site the parent's
outputs are what the shift distorted, so the labels rule there). For an
input-level shift it adds a consistency term: training-site films rendered in
the site's style, estimated from the site's own films (`cxr.site_style`), must
get from the block what the parent's block gave the originals — the block
learns to undo the site's acquisition for every pathology at once.

Held out: a patient-level share of the calibration rows never enters the
tuning. The thresholds are chosen on them when the site's held-out rows hold
enough positives of the target (`min_heldout_positives`), so the guarantee is
made on data the scores were not fitted to; with fewer, a recall guarantee
would force the threshold below nearly every positive, so they come from every
calibration row and the note says the guarantee is optimistic. The target is
checked on the site's held-out rows; when the first block misses it there, the
diagnosis's second block is tried from the parent and the better one kept. The
evaluation split is never seen. Blocks tried, the check, the reason and the
style are recorded.

Stopping when it cannot win (`treatments.backbone.StoppingParams`): the policy's `time_budget_s` counts from
the treatment's start; the epoch (consistency or labelled) that ends past it is the last, and the second
block is not tried once it is spent. `early_stop_patience` watches the target's AUROC on the held-out
calibration rows (the report site's when they hold both classes) after every labelled epoch, stops after
that many without improvement and keeps the best epoch's weights; the thresholds are then chosen on the
same held-out rows, which picked the epoch, so their guarantee is a little optimistic. Either way the
candidate goes to the gate, and epochs run and planned, why it stopped and the monitored values are
recorded (`artifacts["training"]`; the notes say it when the run did not simply complete).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from cxr.blocks import Consistency, block_parameter_names, tail_logits, tune_block
from cxr.kinds import IssueKind
from cxr.model import CXRDenseNet
from cxr.site_style import SiteStyle, site_matched_augment
from cxr.stats import auroc, binary_metrics
from cxr.train import Budget, EpochWatch, StopRecord
from treatments.backbone import (
    StoppingParams,
    applicable_with,
    cached_block_inputs,
    parent_model,
    reference_films,
    site_style_of,
    target_monitor,
)
from treatments.base import FeatureSplit, PlanningContext, ReportInfo, TreatmentContext, TreatmentResult, probabilities
from treatments.operating import retune

__all__ = ["FReoptParams", "FReoptimization"]


class FReoptParams(StoppingParams):
    model_config = ConfigDict(extra="forbid")

    block: int | None = Field(None, ge=1, description="Dense block to tune (default: the shift diagnosis's choice).")
    tune: Literal["block", "block+head"] = Field(
        "block", description="What trains: the block (+ its transition) only, or also norm5 and the head.")
    stem: bool = Field(True, description="With the first block, also tune the stem (conv0, norm0): the layers that "
                                         "meet the pixels, where a detector's noise and contrast curve enter.")
    second_block: bool = Field(True, description="Try the diagnosis's next block when the first misses the target "
                                                 "on the held-out calibration rows.")
    holdout: float = Field(0.5, gt=0, lt=1, description="Share of calibration patients kept out of tuning: the "
                                                         "thresholds and the block check use them alone.")
    epochs: int = Field(6, ge=1, le=200)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(128, ge=1)
    site_weight: float = Field(2.0, gt=0)
    distill_weight: float = Field(1.0, ge=0, description="Keep the other outputs near the parent's logits.")
    distill_at_site: bool = Field(False, description="Also distil on the report site's rows (where the parent's "
                                                     "outputs are what the shift distorted).")
    min_heldout_positives: int = Field(30, ge=1, description="Choose thresholds on the held-out rows when they hold "
                                                                   "this many positives of the target at the site.")
    consistency: Literal["auto", "on", "off"] = Field(
        "auto", description="Also teach the block to give reference films rendered in the site's estimated "
                            "style the parent's outputs of the originals (auto: for input-level shifts).")
    consistency_weight: float = Field(1.0, ge=0, description="Weight of the consistency term in the labelled epochs.")
    consistency_epochs: int = Field(6, ge=0, le=200, description="Epochs on the consistency term alone first (each "
                                                                 "over as many films as the reference holds).")
    consistency_lr: float = Field(3e-3, gt=0, lt=1)
    style_images: int = Field(400, ge=8, description="Films per side for estimating the site's style.")
    min_site_cases: int = Field(200, ge=1)
    diagnosis_images: int = Field(600, ge=50, description="Images per side when the treatment diagnoses the shift.")
    max_rows: int = Field(3000, ge=100, description="Labelled tuning rows at most: the report site's rows first, "
                                                    "the others sampled (an early block back-propagates through "
                                                    "the whole network, so each row costs a training step).")
    consistency_films: int = Field(2000, ge=64, description="Reference films per consistency epoch.")


@dataclass
class _Attempt:
    block: int
    losses: list[float]
    thresholds: dict[str, float | None]
    op: Any
    where: str
    check: dict[str, Any]
    updates: dict[str, torch.Tensor]
    n_train: int
    seconds: float
    training: StopRecord
    watching: str  # what early stopping watched, or why it was off ("" when not asked for)


class FReoptimization:
    name = "f_reoptimization"
    fixes = frozenset({IssueKind.false_positives, IssueKind.false_negatives, IssueKind.auroc_drop})
    head_only = False

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        return applicable_with(planning, 100)

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = FReoptParams.model_validate(ctx.params)
        budget = Budget.start(p.time_budget_s)
        parent = parent_model(ctx)
        data = ctx.image_data or {}
        cal = data.get("calibration")
        if cal is None or tuple(cal.image_ids) != tuple(ctx.calibration.image_ids):
            raise ValueError("F re-optimization needs the calibration images, in the calibration split's order")
        diagnosis, blocks, why = _choose_blocks(ctx, parent, p)
        hold = _holdout_mask(cal.patient_ids, p.holdout, ctx.seed)
        use_style = p.consistency == "on" or (p.consistency == "auto" and (diagnosis or {}).get("level") == "input")
        style = site_style_of(ctx, p.style_images) if use_style and p.consistency_weight > 0 else None
        attempts: list[_Attempt] = []
        skipped = ""
        for block in blocks[: 2 if p.second_block else 1]:
            if attempts and budget.spent():
                skipped = f"; denseblock{block} not tried: the {p.time_budget_s:g} s budget is spent"
                break
            attempts.append(self._tune(ctx, p, block, hold, style, budget))
            if attempts[-1].check["fixed"]:
                break
        best = next((a for a in attempts if a.check["fixed"]), None) or max(
            attempts, key=lambda a: -np.inf if a.check["score"] is None else a.check["score"])
        what = (" with the stem (conv0, norm0)" if p.stem and best.block == 1 else "") + (
            "" if p.tune == "block" else " + norm5 + head")
        tried = "; ".join(f"denseblock{a.block}: {a.check['summary']}" for a in attempts)
        undo = f"{p.consistency_epochs} epochs undoing {ctx.report.site}'s estimated style, then " if style else ""
        stop = best.training.summary() or best.watching
        off = best.watching if best.training.monitor is None else ""  # why early stopping was off, if asked for
        training = best.training.as_dict() | ({"early_stopping": off} if off else {})
        by_block = {"training_by_block": {str(a.block): a.training.as_dict() for a in attempts}} if len(
            attempts) > 1 else {}
        return TreatmentResult(
            thresholds=best.thresholds, state_updates=best.updates, trainable_parameters=best.n_train,
            notes=(f"re-optimized denseblock{best.block}{what} ({best.n_train:,} parameters; {why}) for {undo}"
                   f"{p.epochs} labelled epochs (loss {best.losses[0]:.4f} → {best.losses[-1]:.4f}"
                   + (f"; {stop}" if stop else "") + f"); held-out calibration check — {tried}{skipped}; "
                   f"{ctx.report.pathology} threshold {best.op.threshold:.4f} from {best.where} ({best.op.method})"),
            artifacts={"site_style": style.as_dict() if style else None, "block": best.block,
                       "blocks_tried": [a.block for a in attempts], "block_reason": why,
                       "tune": p.tune, "stem": p.stem and best.block == 1, "diagnosis": diagnosis,
                       "losses": best.losses,
                       "checks": {str(a.block): a.check for a in attempts},
                       "seconds": {str(a.block): round(a.seconds, 2) for a in attempts},
                       "guarantee": best.op.guarantee, "training": training, **by_block},
        )

    def _tune(self, ctx: TreatmentContext, p: FReoptParams, block: int, hold: np.ndarray,
              style: SiteStyle | None, budget: Budget) -> _Attempt:
        t0 = time.perf_counter()
        model = parent_model(ctx)
        data = ctx.image_data or {}
        cal = data["calibration"]
        parts = [d for d in (data.get("train"), cal) if d is not None]
        stem = p.stem and block == 1
        x_parts = [d.images(np.arange(len(d))) if stem else cached_block_inputs(ctx, model, d, block) for d in parts]
        fit = np.concatenate([np.ones(len(d), bool) for d in parts[:-1]] + [~hold])
        fit = _cap_rows(fit, np.array([s for d in parts for s in d.sites]) == ctx.report.site, p.max_rows, ctx.seed)
        x_fit = np.concatenate(x_parts)[fit]
        labels = np.concatenate([d.aligned_labels(ctx.spec.pathologies) for d in parts])[fit]
        sites = np.array([s for d in parts for s in d.sites])[fit]
        weights = _loss_weights(labels, sites == ctx.report.site, ctx.target_index, p.site_weight)
        parent_logits = _parent_logits(ctx, parts, fit, model, block, x_fit, stem)
        x_held = x_parts[-1][hold]
        early, watching = target_monitor(
            ctx, p.early_stop_patience, p.early_stop_min_delta, ctx.calibration.labels[hold],
            [s for s, h in zip(ctx.calibration.sites, hold, strict=True) if h],
            lambda m, rows: tail_logits(m, block, x_held[rows], stem=stem)[:, ctx.target_index])
        watch = EpochWatch(model, (p.consistency_epochs if style else 0) + p.epochs, budget, early)
        losses = tune_block(model, block, x_fit, labels, weights, parent_logits, ctx.target_index,
                            distill_rows=None if p.distill_at_site else sites != ctx.report.site,
                            with_head=p.tune == "block+head", epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                            distill_weight=p.distill_weight, seed=ctx.seed,
                            consistency=_consistency(ctx, style, p) if style else None,
                            stem=stem, after_epoch=lambda phase, n: watch.after_epoch(n, monitored=phase == "labelled"))
        training = watch.finish()
        new_all = 1.0 / (1.0 + np.exp(-np.clip(tail_logits(model, block, x_parts[-1], stem=stem), -60, 60)))
        old_all = probabilities(ctx.calibration.features, ctx.head_weight, ctx.head_bias)
        held = ctx.calibration.rows(hold)
        changed = list(range(ctx.spec.num_classes))
        j, site = ctx.target_index, ctx.report.site
        held_pos = int(sum(1 for y, s in zip(held.labels[:, j], held.sites, strict=True) if s == site and y == 1))
        thresholds = None
        if held_pos >= p.min_heldout_positives:
            try:
                thresholds, op, where = retune(ctx, held.labels, old_all[hold], new_all[hold], held.sites, changed,
                                               p.min_site_cases)
                where += f", {len(held)} held-out rows"
            except ValueError:
                thresholds = None
        if thresholds is None:  # too few held-out positives for a useful guarantee: every calibration row
            cal_split = ctx.calibration
            thresholds, op, where = retune(ctx, cal_split.labels, old_all, new_all, cal_split.sites, changed,
                                           p.min_site_cases)
            where += (f", every calibration row ({held_pos} held-out {site} positives < "
                      f"{p.min_heldout_positives}; the tuning saw part of them, so its guarantee is optimistic)")
        check = _heldout_check(ctx, held, new_all[hold], thresholds)
        names = block_parameter_names(model, block, with_head=p.tune == "block+head", stem=stem)
        state = model.state_dict()
        n_train = sum(q.numel() for n, q in model.named_parameters() if n in set(names))
        return _Attempt(block, losses, thresholds, op, where, check,
                        {n: state[n].detach().clone() for n in names}, n_train, time.perf_counter() - t0,
                        training, watching)


def _parent_logits(ctx: TreatmentContext, parts: list, fit: np.ndarray, model: CXRDenseNet, block: int,
                   x_fit: np.ndarray, stem: bool) -> np.ndarray:
    """The parent's logits on the tuning rows: its cached pooled features of those very films through its head
    (what the forward pass would give, without the pass), else the network's tail on the block inputs."""
    splits = [s for s in (ctx.train, ctx.calibration) if s is not None]
    if len(splits) == len(parts) and all(tuple(s.image_ids) == tuple(d.image_ids) for s, d in zip(splits, parts,
                                                                                                 strict=True)):
        from cxr.features import head_logits

        return head_logits(np.concatenate([s.features for s in splits])[fit], ctx.head_weight,
                           ctx.head_bias).astype(np.float32)
    return tail_logits(model, block, x_fit, stem=stem)


def _consistency(ctx: TreatmentContext, style: SiteStyle, p: FReoptParams) -> Consistency:
    ref = reference_films(ctx)
    return Consistency(images=ref.images, n=min(len(ref), p.consistency_films), weight=p.consistency_weight,
                       epochs=p.consistency_epochs, lr=p.consistency_lr,
                       render=lambda x, rng: site_matched_augment(x, rng, style, share=1.0))


def _choose_blocks(ctx: TreatmentContext, model: CXRDenseNet, p: FReoptParams) -> tuple[dict | None, list[int], str]:
    """The blocks to try, in order, and why: the policy's fixed block, else the shift diagnosis's choice."""
    n = len(ctx.spec.block_config)
    diagnosis = ctx.diagnosis
    if p.block is not None:
        if p.block > n:
            raise ValueError(f"the policy asks for denseblock{p.block}; the model has {n} dense blocks")
        nxt = [p.block + 1] if p.block < n else [p.block - 1] if p.block > 1 else []
        return diagnosis, [p.block, *nxt], f"block {p.block} fixed by the policy"
    if diagnosis is None:
        diagnosis = _diagnose(ctx, model, p.diagnosis_images)
    blocks = [b for b in diagnosis.get("blocks", []) if 1 <= b <= n]
    if not blocks:
        # Output-level or no measurable shift: nothing upstream to undo, so the block next to the head.
        return diagnosis, [n], f"{diagnosis.get('level', 'no')}-level shift: the last block"
    return diagnosis, blocks, (f"{diagnosis['level']}-level shift (strength {diagnosis.get('strength', 0):.2f}) "
                               f"→ block {blocks[0]}")


def _diagnose(ctx: TreatmentContext, model: CXRDenseNet, max_images: int) -> dict:
    """Diagnose the shift here when the engine did not: the site's calibration rows vs the training data."""
    from cxr.shift import diagnose_shift

    data = ctx.image_data or {}
    cal = data["calibration"]
    at_site = np.array([s == ctx.report.site for s in cal.sites])
    reference = data.get("train") or cal.subset(np.flatnonzero(~at_site))
    if at_site.sum() < 20 or len(reference) < 20:
        return {"level": "none", "blocks": [], "strength": 0.0, "reason": "too few images to diagnose"}
    return diagnose_shift(model, reference, cal.subset(np.flatnonzero(at_site)), max_images=max_images,
                          seed=ctx.seed).as_dict()


def _cap_rows(fit: np.ndarray, at_site: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """`fit` with at most `max_rows` rows: the report site's rows first (sampled only when they alone are more),
    the other sites' rows sampled into the room left."""
    if fit.sum() <= max_rows:
        return fit
    rng = np.random.default_rng(seed)
    site_rows, others = np.flatnonzero(fit & at_site), np.flatnonzero(fit & ~at_site)
    keep = np.zeros_like(fit)
    keep[rng.choice(site_rows, size=min(max_rows, len(site_rows)), replace=False)] = True
    room = max(0, max_rows - int(keep.sum()))
    keep[rng.choice(others, size=min(room, len(others)), replace=False)] = True
    return keep


def _holdout_mask(patients: tuple[str, ...], share: float, seed: int) -> np.ndarray:
    """Rows whose patient hashes into the held-out share (stable, patient-level)."""
    def unit(pid: str) -> float:
        h = hashlib.blake2b(f"freopt|{seed}|{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64
    return np.array([unit(pid) < share for pid in patients], dtype=bool)


def _loss_weights(labels: np.ndarray, at_site: np.ndarray, j: int, site_weight: float) -> np.ndarray:
    """Per-label weights: the site's rows × `site_weight`, the target output class-balanced."""
    w = np.ones_like(labels, dtype=np.float32)
    w[at_site] *= site_weight
    y = labels[:, j]
    n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
    if n_pos and n_neg:
        w[y == 1, j] *= (n_pos + n_neg) / (2 * n_pos)
        w[y == 0, j] *= (n_pos + n_neg) / (2 * n_neg)
    return w


def _heldout_check(ctx: TreatmentContext, held: FeatureSplit, probs: np.ndarray,
                   thresholds: dict[str, float | None]) -> dict[str, Any]:
    """Is the report's target met on the held-out calibration rows of its site? (No evaluation data here.)"""
    j, r = ctx.target_index, ctx.report
    at = np.array([s == r.site for s in held.sites]) & ~np.isnan(held.labels[:, j])
    y, s = held.labels[at, j].astype(int), probs[at, j]
    t = thresholds.get(r.pathology)
    out: dict[str, Any] = {"rows": int(at.sum()), "positives": int(y.sum())}
    if not (y == 1).any() or not (y == 0).any() or t is None:
        return {**out, "fixed": False, "score": None, "summary": "not checkable (one class missing)"}
    m = binary_metrics(y, s, t)
    out |= {"auroc": auroc(y, s), "recall": m["sensitivity"], "fpr": m["fpr"]}
    if r.kind == IssueKind.false_positives:
        fixed = m["fpr"] <= r.target and m["sensitivity"] >= ctx.slo.min_recall
        score, text = -m["fpr"], f"FPR {m['fpr']:.3f} at recall {m['sensitivity']:.3f}"
    elif r.kind == IssueKind.false_negatives:
        fixed, score, text = m["sensitivity"] >= r.target, m["sensitivity"], f"recall {m['sensitivity']:.3f}"
    else:
        fixed, score, text = out["auroc"] >= r.target, out["auroc"], f"AUROC {out['auroc']:.3f}"
    return {**out, "fixed": bool(fixed), "score": float(score),
            "summary": f"{text} on {out['rows']} held-out {r.site} rows ({'meets' if fixed else 'misses'} "
                       f"target {r.target:g})"}
