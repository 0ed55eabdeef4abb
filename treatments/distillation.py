"""The `distillation` treatment: a smaller student DenseNet trained on the parent's logits.

Where pruning keeps the parent's layout and thins it, distillation starts
over with a smaller spec — a lower growth rate, fewer layers per block, a
narrower stem — and trains it on the training images against the parent's
temperature-softened sigmoid outputs plus the true labels (`cxr/distill.py`).
It costs hours on DenseNet121 (the policy prices it like a retrain and asks a
person to approve it), is resumable (a checkpoint per epoch under
DECIDE_HOME/cache/checkpoints, keyed by parent, data and parameters), and is
gated like every treatment: the student must meet the footprint target and be
non-inferior on every pathology.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field

from cxr.distill import DistillConfig, distill
from cxr.footprint import backbone_parameters
from cxr.infer import predict_probs
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.spec import ArchSpec
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentDeclined, TreatmentResult
from treatments.footprint_base import (
    FOOTPRINT_ARTIFACT,
    FootprintParams,
    FootprintTreatment,
    budget_parameters,
    calibration_images,
    matched_thresholds,
    measure,
)


class DistillationParams(FootprintParams):
    growth_rate: int | None = Field(None, ge=1, description="Student growth rate (default: half the parent's).")
    block_config: tuple[int, ...] | None = Field(None, description="Student layers per block (default: the parent's).")
    num_init_features: int | None = Field(None, ge=1)
    bn_size: int | None = Field(None, ge=1)
    epochs: int = Field(5, ge=1, le=500)
    lr: float = Field(2e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    temperature: float = Field(2.0, gt=0)
    label_weight: float = Field(1.0, ge=0)


def student_spec(parent: ArchSpec, p: DistillationParams) -> ArchSpec:
    """The student: the parent's outputs, resolution and preprocessing on a smaller plain DenseNet."""
    return ArchSpec(
        growth_rate=p.growth_rate or max(1, parent.growth_rate // 2),
        block_config=p.block_config or parent.block_config,
        num_init_features=p.num_init_features or parent.num_init_features,
        bn_size=p.bn_size or parent.bn_size,
        in_channels=parent.in_channels, resolution=parent.resolution, pathologies=parent.pathologies,
        preprocessing=parent.preprocessing,
    )


class Distillation(FootprintTreatment[DistillationParams]):
    name = "distillation"
    params_model = DistillationParams

    def more_preconditions(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        spec = student_spec(planning.spec, DistillationParams.model_validate(planning.params))
        return True, f"trains a {parameter_count(build_model(spec)):,}-parameter student on the parent's logits"

    def treat(self, ctx: TreatmentContext, p: DistillationParams, parent: CXRDenseNet) -> TreatmentResult:
        spec = student_spec(ctx.spec, p)
        budget = budget_parameters(ctx.report, ctx.spec)
        n = parameter_count(build_model(spec))
        if budget is not None and n > budget:
            raise TreatmentDeclined(f"the student has {n:,} parameters, over the target's {budget:,}: "
                                    "choose a smaller growth_rate / block_config in the policy")
        data, cal = (ctx.image_data or {}).get("train"), calibration_images(ctx)
        if data is None:
            raise ValueError("distillation needs the training images")
        cfg = DistillConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, temperature=p.temperature,
                            label_weight=p.label_weight, seed=ctx.seed)
        res = distill(spec, parent, data, cfg, checkpoint_dir=_checkpoints(ctx, spec, p))
        student = res.model.eval()
        state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        fp = measure(ctx, p, parent, spec, state, student, dlogit=None, latency_needed=budget is None)
        share = backbone_parameters(spec) / backbone_parameters(ctx.spec)
        h = res.history
        notes = (f"distilled a {n:,}-parameter student (growth rate {spec.growth_rate}, blocks "
                 f"{list(spec.block_config)}; backbone {share:.1%} of the parent's) on {len(data)} images, "
                 f"T={p.temperature:g}"
                 + (f", resumed after epoch {res.resumed_from_epoch}" if res.resumed_from_epoch else "")
                 + (f", loss {h[0]['loss']:.4f} → {h[-1]['loss']:.4f}" if h else ""))
        return TreatmentResult(
            spec=spec, state=state, thresholds=matched_thresholds(ctx, predict_probs(student, cal)),
            trainable_parameters=n, notes=notes,
            artifacts={FOOTPRINT_ARTIFACT: fp, "history": h, "student": json.loads(spec.to_json())},
        )


def _checkpoints(ctx: TreatmentContext, spec: ArchSpec, p: DistillationParams) -> Path | None:
    """A checkpoint folder keyed by parent weights, student, data and parameters (None without a cache)."""
    root = getattr(ctx.cache, "root", None)
    if root is None or ctx.load_state is None:
        return None
    from cxr.weights import tensors_digest

    data = ctx.image_data["train"]
    key = hashlib.sha256(json.dumps({"parent": tensors_digest(ctx.load_state()), "student": spec.digest(),
                                     "data": data.digest(), "params": p.model_dump(mode="json"),
                                     "seed": ctx.seed}, sort_keys=True).encode()).hexdigest()
    return Path(root).parent / "checkpoints" / "distillation" / key[:24]
