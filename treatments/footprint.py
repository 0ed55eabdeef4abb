"""Footprint treatments: lossless compression, structured pruning, quantization.

They answer `footprint` reports — "this version is too big or too slow here" —
whose metric is one of `parameters`, `parameter_fraction` (vs the version),
`size_mb` (MB of the weights file) or `latency_ms` (CPU ms/image at the
policy's batch size), and whose target is the bound. Each returns a new
architecture (`TreatmentResult.spec` + `state`) and puts what it measured in
`artifacts["footprint"]` (the gate's `measured` numbers: parameters,
parameter_fraction, size_mb, latency_ms with the CPU flags, dtype, runtime,
max_abs_dlogit). The gate then checks the target *and* non-inferiority of
every pathology on held-out data, as for every treatment. What they share —
preconditions, parameters, the parent, how a candidate is measured — is
`treatments.footprint_base.FootprintTreatment`; each class here says only
what it does.

* `lossless_compression` (cxr/compress.py) changes no output beyond float
  rounding: it refuses to propose a model whose logits moved more than
  `tolerance` on calibration images, keeps the parent's thresholds, and
  declines (cheaply, before any evaluation) when it cannot reach the target,
  so the ladder escalates.
* `structured_pruning` removes bottleneck *and* growth channels by Fisher /
  Taylor importance on the calibration split (+ the dual-intervention score
  when the context gives the version it was adapted from), to the largest
  uniform keep ratio within the budget, reconstructs every layer by least
  squares on training images, fine-tunes briefly against the parent's
  logits, and re-matches every pathology's recall on the calibration split.
* `quantization` chooses by the target: float16 *storage* when halving the
  file meets a size target (the torch runtime is unchanged, and this CPU has
  no fast float16 arithmetic), otherwise — and for latency targets — int8
  static QDQ quantization run by ONNX Runtime. Parameter targets are not its
  business (the count does not change), so it is not applicable to them.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import numpy as np
from pydantic import Field

from cxr.compress import compress_lossless
from cxr.footprint import measure_latency, ort_runner, torch_runner
from cxr.infer import predict_probs
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.prune import Importance, prune_and_reconstruct, pruned_spec, ratio_for_parameters, search_ratio
from cxr.quantize import OrtModel, float16_spec, int8_spec, int8_state, quantize_int8
from cxr.spec import ArchSpec
from cxr.weights import to_bytes
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentDeclined, TreatmentResult
from treatments.footprint_base import (
    FOOTPRINT_ARTIFACT,
    FootprintParams,
    FootprintTreatment,
    budget_parameters,
    calibration_images,
    candidate_model,
    check_dlogit,
    images,
    matched_thresholds,
    measure,
    meets,
)


# -- lossless compression ------------------------------------------------------------------------
class LosslessParams(FootprintParams):
    tolerance: float = Field(1e-4, gt=0, description="Largest |Δlogit| on calibration images still 'lossless'.")


class LosslessCompression(FootprintTreatment[LosslessParams]):
    name = "lossless_compression"
    params_model = LosslessParams
    summary = "removes provably constant bottleneck channels; outputs unchanged"

    def treat(self, ctx: TreatmentContext, p: LosslessParams, parent: CXRDenseNet) -> TreatmentResult:
        comp = compress_lossless(parent)
        cand = candidate_model(comp.spec, comp.state)
        dlogit = check_dlogit(ctx, p, parent, cand)
        if dlogit > p.tolerance:
            raise ValueError(f"compression moved logits by {dlogit:.2e} > tolerance {p.tolerance:g}: not lossless")
        fp = measure(ctx, p, parent, comp.spec, comp.state, cand, dlogit=dlogit)
        artifacts = {FOOTPRINT_ARTIFACT: fp, "compression": comp.summary()}
        s = comp.summary()
        what = (f"removed {s['removed_channels']} bottleneck channels ({s['constant_zero']} constant zero, "
                f"{s['interval_dead']} dead by interval bounds, {s['constant_folded']} constant folded downstream; "
                f"{s['constant_kept']} non-zero constants kept for the zero-padded border) and folded norm2 into "
                f"conv1: {s['parameters_before']:,} → {s['parameters_after']:,} parameters, max |Δlogit| {dlogit:.1e}")
        if not meets(ctx.report, fp):
            raise TreatmentDeclined(f"lossless compression cannot reach {ctx.report.metric} ≤ {ctx.report.target:g}: "
                                    + what, artifacts)
        return TreatmentResult(spec=comp.spec, state=comp.state, trainable_parameters=0, notes=what,
                               artifacts=artifacts)


# -- structured pruning ---------------------------------------------------------------------------
class PruningParams(FootprintParams):
    importance: Literal["fisher", "taylor"] = "fisher"
    importance_images: int = Field(512, ge=16, description="Calibration images behind the importance scores.")
    adaptation_weight: float = Field(1.0, ge=0, description="λ of the dual-intervention reset score.")
    reconstruct_images: int = Field(512, ge=16, description="Training images for least-squares reconstruction.")
    positions: int = Field(32, ge=4, description="Spatial positions per image and layer in each fit.")
    ridge: float = Field(1e-4, ge=0)
    finetune_epochs: int = Field(2, ge=0, le=50, description="Distillation epochs from the parent (0: none).")
    finetune_lr: float = Field(1e-3, gt=0, lt=1)
    finetune_images: int = Field(8000, ge=16)
    temperature: float = Field(2.0, gt=0)
    min_keep_ratio: float = Field(0.25, gt=0, le=1, description="Decline rather than prune below this ratio.")
    margin: float = Field(0.95, gt=0, le=1, description="Aim latency targets at margin × target.")


class StructuredPruning(FootprintTreatment[PruningParams]):
    name = "structured_pruning"
    params_model = PruningParams
    summary = "removes bottleneck and growth channels, reconstructs, fine-tunes (lossy, gated)"

    def treat(self, ctx: TreatmentContext, p: PruningParams, parent: CXRDenseNet) -> TreatmentResult:
        xi, yi = images(ctx, "calibration", p.importance_images, ctx.seed)
        xr, _ = images(ctx, "train" if "train" in (ctx.image_data or {}) else "calibration",
                       p.reconstruct_images, ctx.seed + 1)
        budget = budget_parameters(ctx.report, ctx.spec)
        s = ctx.spec

        def ratio_for(spec: ArchSpec, imp: Importance) -> float:
            if budget is not None:
                return ratio_for_parameters(spec, imp, budget)
            aim = ctx.report.target * p.margin

            def fits(r: float) -> bool:
                m = build_model(pruned_spec(spec, imp, r))
                got = measure_latency({"m": torch_runner(m)}, (s.in_channels, s.resolution, s.resolution),
                                      (p.latency_batch,), repeats=p.latency_repeats, seed=ctx.seed)
                return got["ms_per_image"]["m"][p.latency_batch] <= aim

            return search_ratio(fits, steps=6)

        ref = ctx.load_reference() if ctx.load_reference is not None else None
        pr = prune_and_reconstruct(parent, ratio_for, importance_images=xi, importance_labels=yi,
                                   reconstruct_images=xr, method=p.importance, reference=ref,
                                   adaptation_weight=p.adaptation_weight, positions=p.positions, ridge=p.ridge,
                                   seed=ctx.seed)
        if pr.ratio < p.min_keep_ratio:
            raise TreatmentDeclined(
                f"the target needs a keep ratio of {pr.ratio:.2f}, below min_keep_ratio {p.min_keep_ratio:g}: "
                "pruning that far is not expected to pass the gate", {"ratio": pr.ratio})
        state, history = pr.state, []
        if p.finetune_epochs and "train" in (ctx.image_data or {}):
            from cxr.distill import DistillConfig, distill

            train = ctx.image_data["train"]
            if len(train) > p.finetune_images:
                train = train.subset(np.sort(np.random.default_rng(ctx.seed).permutation(len(train))
                                             [:p.finetune_images]))
            res = distill(pr.spec, parent, train, DistillConfig(epochs=p.finetune_epochs, lr=p.finetune_lr,
                                                                temperature=p.temperature, seed=ctx.seed),
                          init_state=state)
            state, history = {k: v.detach().clone() for k, v in res.model.state_dict().items()}, res.history
        cand = candidate_model(pr.spec, state)
        fp = measure(ctx, p, parent, pr.spec, state, cand, dlogit=check_dlogit(ctx, p, parent, cand),
                     latency_needed=budget is None)
        thresholds = matched_thresholds(ctx, predict_probs(cand, calibration_images(ctx)))
        n_train = parameter_count(cand) if history else 0
        worst = max(pr.reconstruction_error.values(), default=0.0)
        notes = (f"kept {pr.ratio:.0%} of the bottleneck and growth channels by {p.importance} importance"
                 f"{' + dual intervention' if pr.importance.dual else ''}: {fp['parameter_fraction']:.1%} of the "
                 f"parameters ({fp['backbone_fraction']:.1%} of the backbone), {fp['size_mb']:.2f} MB; "
                 f"least-squares reconstruction (worst relative error {worst:.3f})"
                 + (f", {len(history)} distillation epochs (loss {history[0]['loss']:.4f} → "
                    f"{history[-1]['loss']:.4f})" if history else ""))
        return TreatmentResult(
            spec=pr.spec, state=state, thresholds=thresholds, trainable_parameters=n_train, notes=notes,
            artifacts={FOOTPRINT_ARTIFACT: fp, "ratio": pr.ratio, "compression": pr.compression,
                       "importance": {"method": p.importance, "images": pr.importance.images,
                                      "dual_intervention": pr.importance.dual},
                       "reconstruction_error": pr.reconstruction_error, "finetune": history})


# -- quantization ---------------------------------------------------------------------------------
class QuantizationParams(FootprintParams):
    mode: Literal["auto", "float16", "int8"] = Field(
        "auto", description="auto: float16 storage if halving the file meets a size target, else int8.")
    calibration_images: int = Field(256, ge=8, description="Images that calibrate int8 activation ranges.")
    reduce_range: bool = Field(True, description="7-bit weights: recommended on x86 without VNNI.")
    per_channel: bool = True


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


class Quantization(FootprintTreatment[QuantizationParams]):
    name = "quantization"
    params_model = QuantizationParams
    metrics = ("size_mb", "latency_ms")

    def more_preconditions(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        if planning.spec.dtype != "float32":
            return False, f"already stored as {planning.spec.dtype}"
        p = QuantizationParams.model_validate(planning.params)
        if (p.mode == "int8" or report.metric == "latency_ms") and not _has_onnxruntime():
            return False, "int8 needs ONNX Runtime: pip install 'cxr-decide[onnx]'"
        return True, "float16 storage or int8 ONNX Runtime, whichever the target needs"

    def _mode(self, ctx: TreatmentContext, p: QuantizationParams) -> str:
        if p.mode != "auto":
            return p.mode
        if ctx.report.metric == "size_mb":
            half, _ = to_bytes(float16_spec(ctx.spec), ctx.load_state())
            if len(half) / 1e6 <= ctx.report.target or not _has_onnxruntime():
                return "float16"
        return "int8"

    def treat(self, ctx: TreatmentContext, p: QuantizationParams, parent: CXRDenseNet) -> TreatmentResult:
        mode = self._mode(ctx, p)
        cal = calibration_images(ctx)
        if mode == "float16":
            spec, state = float16_spec(ctx.spec), {k: v.clone() for k, v in parent.state_dict().items()}
            _, w = to_bytes(spec, state)
            cand: Any = w.model()
            runner = None
        else:
            xq, _ = images(ctx, "calibration", p.calibration_images, ctx.seed + 1)
            onnx_bytes = quantize_int8(parent, xq, per_channel=p.per_channel, reduce_range=p.reduce_range,
                                       thresholds=ctx.thresholds)
            spec = int8_spec(ctx.spec)
            state = int8_state(onnx_bytes, parent.classifier.weight, parent.classifier.bias)
            _, w = to_bytes(spec, state)
            cand = OrtModel(w)
            runner = ort_runner(cand.session)
        dlogit = check_dlogit(ctx, p, parent, cand)  # an OrtModel is called like a module
        new_probs = predict_probs(cand, cal)
        fp = measure(ctx, p, parent, spec, state, cand, dlogit=dlogit, runner=runner)
        lat = fp.get("latency_ms")
        how = ("float16 storage (upcast to float32 at load)" if mode == "float16" else
               f"int8 static QDQ for ONNX Runtime (per-channel {p.per_channel}, reduce_range {p.reduce_range}, "
               f"{p.calibration_images} calibration images)")
        lat_txt = (f"; {lat['value']:.2f} ms/image at batch {lat['batch']} vs parent "
                   f"{lat['parent_by_batch'][str(lat['batch'])]:.2f}") if lat else ""
        return TreatmentResult(
            spec=spec, state=state, thresholds=matched_thresholds(ctx, new_probs), trainable_parameters=0,
            notes=f"{how}: {fp['size_mb']:.3f} MB, max |Δlogit| {dlogit:.2e}{lat_txt}",
            artifacts={FOOTPRINT_ARTIFACT: fp, "mode": mode})
