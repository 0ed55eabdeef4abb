"""Head retrain (cost 2): refit the classifier on cached pooled features.

The backbone is untouched (same digest), so every image's pooled features
come from the cache and the whole fit is one full-batch L-BFGS problem on an
(N × F) matrix — seconds, where re-running images through the backbone each
epoch took the paper 85 s. The data are the training and calibration splits
(calibration includes the labelled feedback of the report's site); the
failing pathology is class-balanced, the site's rows can be up-weighted, and a
proximal L2 term keeps the head near its parent so that the other
pathologies move only as far as the data ask.

Thresholds: the failing pathology's is chosen as threshold calibration would
(FPR target under a guaranteed recall floor, or a guaranteed recall floor);
every other pathology keeps the recall its parent had on the calibration
split, so an operating point keeps its clinical meaning.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cxr.kinds import PERFORMANCE_KINDS
from treatments.base import (
    FeatureSplit,
    PlanningContext,
    ReportInfo,
    TreatmentContext,
    TreatmentResult,
    probabilities,
)
from treatments.operating import match_recall, retune

__all__ = ["HeadRetrain", "HeadRetrainParams", "fit_head", "match_recall"]


class HeadRetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    l2_to_parent: float = Field(1e-3, ge=0, description="Proximal penalty λ/2·||W − W_parent||².")
    site_weight: float = Field(2.0, gt=0, description="Weight of the report site's rows.")
    balance_target: bool = Field(True, description="Class-balance the failing pathology's loss.")
    max_iter: int = Field(200, ge=1, le=5000)
    rows: Literal["target", "all"] = Field(
        "target",
        description="Refit the failing pathology's row only (others stay bit-identical, so the gate's "
        "non-inferiority holds by construction), or every row of the head.",
    )
    min_site_cases: int = Field(200, ge=1)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    b0: np.ndarray,
    weights: np.ndarray,
    l2: float,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Minimise weighted masked BCE + l2/2·||W − w0||² by full-batch L-BFGS.

    `y` holds NaN for unknown labels (ignored); `weights` is (N, P). The fit runs
    on standardised features (post-ReLU features are far from centred, and
    L-BFGS converges several times faster on the standardised problem); the
    result is mapped back, so the returned weight and bias apply to raw
    features. Returns weight, bias and a dict with losses, iterations, seconds.
    """
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    Y = torch.from_numpy(np.nan_to_num(y, nan=0.0).astype(np.float32))
    M = torch.from_numpy((~np.isnan(y)).astype(np.float32) * weights.astype(np.float32))
    norm = M.sum().clamp_min(1.0)
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-3)
    Xs = (X - mu) / sd
    W0, B0 = torch.from_numpy(w0.astype(np.float32)), torch.from_numpy(b0.astype(np.float32))
    # Parameters of the standardised problem: W = Ws / sd, b = Bs − W·mu.
    Ws = (W0 * sd).clone().requires_grad_(True)
    Bs = (B0 + W0 @ mu).clone().requires_grad_(True)

    def loss_fn() -> torch.Tensor:
        z = torch.nn.functional.linear(Xs, Ws, Bs)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, Y, reduction="none")
        return (bce * M).sum() / norm + 0.5 * l2 * ((Ws / sd - W0) ** 2).sum()

    with torch.no_grad():
        before = float(loss_fn())
    opt = torch.optim.LBFGS(
        [Ws, Bs], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-7, tolerance_change=1e-10,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    t = time.perf_counter()
    opt.step(closure)
    with torch.no_grad():
        after = float(loss_fn())
        W = Ws / sd
        B = Bs - W @ mu
    state = opt.state[opt._params[0]]
    info = {"loss_before": before, "loss_after": after, "iterations": int(state.get("n_iter", 0)),
            "function_evals": int(state.get("func_evals", 0)), "seconds": time.perf_counter() - t}
    return W.numpy().copy(), B.numpy().copy(), info


class HeadRetrain:
    name = "head_retrain"
    fixes = PERFORMANCE_KINDS
    head_only = True

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        if planning.calibration_cases < 50:
            return False, f"only {planning.calibration_cases} labelled calibration cases at the site"
        f, p = planning.spec.num_features, planning.spec.num_classes
        n = p if planning.params.get("rows") == "all" else 1
        return True, f"refits {n}×{f} + {n} head parameters on cached features"

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        prm = HeadRetrainParams.model_validate(ctx.params)
        j, name = ctx.target_index, ctx.report.pathology
        parts = [s for s in (ctx.train, ctx.calibration) if s is not None and len(s)]
        data = FeatureSplit.concat(parts, "train+calibration")
        w = np.ones_like(data.labels, dtype=np.float32)
        w[np.array([s == ctx.report.site for s in data.sites])] *= prm.site_weight
        yj = data.labels[:, j]
        if prm.balance_target:
            n_pos, n_neg = np.nansum(yj == 1), np.nansum(yj == 0)
            if n_pos and n_neg:
                w[yj == 1, j] *= (n_pos + n_neg) / (2 * n_pos)
                w[yj == 0, j] *= (n_pos + n_neg) / (2 * n_neg)
        torch.manual_seed(ctx.seed)
        rows = [j] if prm.rows == "target" else list(range(ctx.head_weight.shape[0]))
        w_rows, b_rows, info = fit_head(data.features, data.labels[:, rows], ctx.head_weight[rows],
                                        ctx.head_bias[rows], w[:, rows], prm.l2_to_parent, prm.max_iter)
        W, B = ctx.head_weight.copy(), ctx.head_bias.copy()
        W[rows], B[rows] = w_rows, b_rows

        cal = ctx.calibration
        old = probabilities(cal.features, ctx.head_weight, ctx.head_bias)
        new = probabilities(cal.features, W, B)
        thresholds, op, where = retune(ctx, cal.labels, old, new, cal.sites, rows, prm.min_site_cases)
        n_params = int(w_rows.size + b_rows.size)
        notes = (
            f"refit {len(rows)}×{W.shape[1]} head row(s) on {len(data)} cached feature vectors by L-BFGS "
            f"({info['iterations']} iterations, {info['seconds']:.2f}s, loss {info['loss_before']:.4f} → "
            f"{info['loss_after']:.4f}); {name} threshold {op.threshold:.4f} from {where} ({op.method})"
        )
        return TreatmentResult(
            thresholds=thresholds,
            head_weight=W,
            head_bias=B,
            trainable_parameters=n_params,
            notes=notes,
            artifacts={"fit": info, "rows": len(data), "target_operating_point": op.method,
                       "guarantee": op.guarantee},
        )
