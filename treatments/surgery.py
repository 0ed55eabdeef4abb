"""Surgical correction (cost 2): zero a few classifier weights of one pathology.

Channel attribution: the logit of pathology p is Σ_k W[p, k]·f_k + b[p], so
channel k contributes W[p, k]·f_k(x) on image x. Channels are chosen
contrastively — a large contribution on the reported false positives, a small
one on the calibration split's true positives — and only row p of the
classifier is edited, so every other pathology's output is bit-identical by
construction. K is swept (1, 2, 5, 10, 20 by default); the smallest K that
meets the target on calibration data without losing a true positive is kept,
otherwise the best zero-loss K is proposed with the whole sweep attached. As
the compressed-CheXNet paper found, this shapes confidence softly; it is not a
guaranteed eraser of errors, which is why the gate has the last word.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cxr.kinds import IssueKind
from treatments.base import (
    PlanningContext,
    ReportInfo,
    TreatmentContext,
    TreatmentDeclined,
    TreatmentResult,
    probabilities,
    site_or_all,
)


class SurgeryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k_values: list[int] = Field(default_factory=lambda: [1, 2, 5, 10, 20])
    tp_penalty: float = Field(1.0, ge=0, description="Weight of the true positives' contribution in the score.")
    min_site_cases: int = Field(200, ge=1)
    max_evidence_fp: int = Field(200, ge=1)


class SurgicalCorrection:
    name = "surgical_correction"
    fixes = frozenset({IssueKind.false_positives})
    head_only = True

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        if not report.false_positive_cases:
            return False, "needs case-level false positives in the report"
        return True, f"{len(report.false_positive_cases)} false-positive cases to attribute"

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        p = SurgeryParams.model_validate(ctx.params)
        j, name = ctx.target_index, ctx.report.pathology
        t = ctx.thresholds.get(name)
        if t is None:
            raise ValueError(f"{name} has no operating threshold to correct against")
        split, where = site_or_all(ctx.calibration, ctx.report.site, p.min_site_cases)
        W, b = ctx.head_weight, ctx.head_bias
        probs = probabilities(ctx.calibration.features, W, b)[:, j]
        y_all = ctx.calibration.labels[:, j]
        # The reported false positives, found among the calibration/feedback images;
        # reports from outside (JSONL) may name images we do not hold: use the site's own then.
        ev_ids = [c.image_id for c in ctx.report.false_positive_cases][: p.max_evidence_fp]
        fp_rows = ctx.calibration.index_of(ev_ids)
        evidence = "reported cases"
        if len(fp_rows) == 0:
            site_mask = np.array([s == ctx.report.site for s in ctx.calibration.sites])
            fp_rows = np.flatnonzero(site_mask & (y_all == 0) & (probs >= t))[: p.max_evidence_fp]
            evidence = f"false positives of {where}"
        if len(fp_rows) == 0:
            raise TreatmentDeclined("no false-positive cases to attribute")
        tp_rows = np.flatnonzero((y_all == 1) & (probs >= t))
        feats = ctx.calibration.features
        contrib_fp = feats[fp_rows] * W[j]  # (n_fp, F)
        contrib_tp = feats[tp_rows] * W[j] if len(tp_rows) else np.zeros((1, W.shape[1]), np.float32)
        fp_mean = contrib_fp.mean(0)
        score = fp_mean - p.tp_penalty * np.clip(contrib_tp, 0, None).mean(0)
        order = [int(k) for k in np.argsort(-score) if fp_mean[k] > 0 and score[k] > 0]

        site_known = ~np.isnan(split.labels[:, j])
        y_site = split.labels[site_known, j]
        f_site = split.features[site_known]
        base_site = probabilities(f_site, W, b)[:, j]
        base_tp = int(((y_all == 1) & (probs >= t)).sum())
        target = ctx.report.target
        sweep, best, chosen = [], None, None
        for k in sorted(set(p.k_values)):
            chans = order[:k]
            if len(chans) < k:
                break
            w2 = W.copy()
            w2[j, chans] = 0.0
            p_all = probabilities(feats, w2, b)[:, j]
            p_site = probabilities(f_site, w2, b)[:, j]
            neg = y_site == 0
            fpr = float(((p_site >= t) & neg).sum() / max(neg.sum(), 1))
            tp_loss = base_tp - int(((y_all == 1) & (p_all >= t)).sum())
            row = {
                "k": k,
                "channels": chans,
                "fpr": round(fpr, 4),
                "fpr_before": round(float(((base_site >= t) & neg).sum() / max(neg.sum(), 1)), 4),
                "tp_loss": tp_loss,
                "evidence_mean_prob": round(float(p_all[fp_rows].mean()), 4),
                "evidence_mean_prob_before": round(float(probs[fp_rows].mean()), 4),
                "evidence_flipped": int(((probs[fp_rows] >= t) & (p_all[fp_rows] < t)).sum()),
            }
            sweep.append(row)
            if tp_loss == 0:
                best = row
                if chosen is None and fpr <= target:
                    chosen = row
        pick = chosen or best
        if pick is None:
            raise TreatmentDeclined(
                f"every K in the sweep ({', '.join(str(r['k']) for r in sweep)}) loses true positives of {name} "
                f"(K={sweep[0]['k']}: {sweep[0]['tp_loss']} lost)" if sweep else "no channel to cut",
                {"k_sweep": sweep},
            )
        w2 = W.copy()
        w2[j, pick["channels"]] = 0.0
        met = "meets" if chosen else "does not meet"
        notes = (
            f"zeroed {pick['k']} channel(s) of the {name} row ({evidence}); calibration FPR at {where} "
            f"{pick['fpr_before']:.3f} → {pick['fpr']:.3f} ({met} target {target:g}), TP loss 0"
        )
        return TreatmentResult(
            head_weight=w2,
            trainable_parameters=pick["k"],
            notes=notes,
            artifacts={"k_sweep": sweep, "chosen_k": pick["k"], "met_target": chosen is not None},
        )
