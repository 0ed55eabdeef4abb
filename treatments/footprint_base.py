"""What every footprint treatment shares: its preconditions, its inputs, and how its candidate is measured.

A footprint treatment (`treatments.footprint`: lossless compression, structured pruning, quantization;
`treatments.distillation`) answers a `footprint` report — "this version is too big or too slow here" —
whose metric is one of `METRICS` and whose target is the bound. It needs the parent's float weights
(`parent_model`) and images of the context's splits (`images`, `calibration_images`); it returns a new
architecture (`TreatmentResult.spec` + `state`) and puts what it measured (`measure` → `describe`) in
`artifacts[FOOTPRINT_ARTIFACT]`, the gate's `measured` numbers.

`FootprintTreatment` is the plugin shape they share: it fixes footprint reports, checks the common
preconditions (`footprint_applicable`), reads the policy's parameters into its `params_model` and
loads the parent; a subclass says only what it acts on (`metrics`), why it applies (`summary`, or
`more_preconditions`) and what it does (`treat`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cxr.compress import max_abs_dlogit
from cxr.footprint import backbone_parameters, latency_record, measure_latency, torch_runner
from cxr.kinds import IssueKind
from cxr.model import CXRDenseNet, build_model, parameter_count
from cxr.spec import ArchSpec
from cxr.weights import to_bytes
from treatments.base import PlanningContext, ReportInfo, TreatmentContext, TreatmentResult
from treatments.operating import match_recall

#: the report metrics footprint treatments can act on
METRICS = ("parameters", "parameter_fraction", "size_mb", "latency_ms")
#: the `TreatmentResult.artifacts` key of a candidate's measured footprint (`describe`), which the engine
#: stores with the version and the gate judges
FOOTPRINT_ARTIFACT = "footprint"


def parent_model(ctx: TreatmentContext) -> CXRDenseNet:
    if ctx.load_state is None:
        raise ValueError("this treatment needs the parent's weights")
    if ctx.spec.runtime != "torch":
        raise ValueError(f"the parent runs in {ctx.spec.runtime}: treat its float parent instead")
    m = build_model(ctx.spec)
    m.load_state_dict(ctx.load_state(), strict=True)
    return m.eval()


def images(ctx: TreatmentContext, role: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` images of the context's `role` set ("train" or "calibration") and their labels."""
    data = (ctx.image_data or {}).get(role)
    if data is None or len(data) == 0:
        raise ValueError(f"this treatment needs the {role} images")
    idx = np.sort(np.random.default_rng(seed).permutation(len(data))[:n])
    return data.images(idx), data.aligned_labels(ctx.spec.pathologies)[idx]


def calibration_images(ctx: TreatmentContext):
    """The calibration images, in the calibration split's order (thresholds are matched row by row)."""
    cal = (ctx.image_data or {}).get("calibration")
    if cal is None or tuple(cal.image_ids) != tuple(ctx.calibration.image_ids):
        raise ValueError("this treatment needs the calibration images, in the calibration split's order")
    return cal


def footprint_applicable(report: ReportInfo, planning: PlanningContext, metrics=METRICS) -> tuple[bool, str]:
    """Whether a footprint treatment acting on `metrics` may treat `report` at all, and why not."""
    if report.kind != IssueKind.footprint:
        return False, "treats footprint reports only"
    if report.metric not in metrics:
        return False, f"cannot act on metric {report.metric!r} (it acts on {', '.join(metrics)})"
    if planning.spec.runtime != "torch":
        return False, f"the version runs in {planning.spec.runtime}; treat its float parent"
    return True, ""


def budget_parameters(report: ReportInfo, parent: ArchSpec, bytes_per_parameter: float = 4.0) -> int | None:
    """The largest parameter count the report's target allows (None for a latency target)."""
    n = parameter_count(build_model(parent))
    if report.metric == "parameters":
        return int(report.target)
    if report.metric == "parameter_fraction":
        return math.floor(report.target * n)
    if report.metric == "size_mb":
        return int(report.target * 1e6 / bytes_per_parameter)
    return None


def meets(report: ReportInfo, fp: dict[str, Any]) -> bool:
    v = fp.get(report.metric)
    v = v.get("value") if isinstance(v, dict) else v
    return v is not None and v <= report.target


def describe(spec: ArchSpec, state: dict[str, torch.Tensor], parent: ArchSpec, *, dlogit: float | None,
             latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """artifacts[FOOTPRINT_ARTIFACT]: the gate's numbers for a candidate (spec, state) vs its parent."""
    data, _w = to_bytes(spec, state)
    n, n_parent = parameter_count(build_model(spec)), parameter_count(build_model(parent))
    bb, bb_parent = backbone_parameters(spec), backbone_parameters(parent)
    out: dict[str, Any] = {
        "parameters": n, "parameter_fraction": round(n / n_parent, 6), "parent_parameters": n_parent,
        "backbone_parameters": bb, "backbone_fraction": round(bb / bb_parent, 6),
        "size_bytes": len(data), "size_mb": round(len(data) / 1e6, 6), "dtype": spec.dtype, "runtime": spec.runtime,
        "max_abs_dlogit": dlogit,
    }
    if latency is not None:
        out["latency_ms"] = latency
    return out


def torch_latency(ctx: TreatmentContext, parent: CXRDenseNet, cand: CXRDenseNet | None, cand_runner=None,
                  *, batch: int, repeats: int) -> dict[str, Any]:
    """Candidate vs parent ms/image, interleaved, at `batch` (and 1)."""
    s = ctx.spec
    runners = {"parent": torch_runner(parent), "candidate": cand_runner or torch_runner(cand)}
    got = measure_latency(runners, (s.in_channels, s.resolution, s.resolution), tuple(sorted({1, batch})),
                          repeats=repeats, seed=ctx.seed)
    return latency_record(got, "candidate", "parent", batch)


def matched_thresholds(ctx: TreatmentContext, new_probs: np.ndarray) -> dict[str, float | None]:
    """Every pathology's threshold moved so that it detects as many calibration positives as before."""
    old = 1.0 / (1.0 + np.exp(-(ctx.calibration.features @ ctx.head_weight.T + ctx.head_bias)))
    labels = ctx.calibration.labels
    out = dict(ctx.thresholds)
    for k, name in enumerate(ctx.spec.pathologies):
        t = ctx.thresholds.get(name)
        known = ~np.isnan(labels[:, k])
        if t is None or not (labels[known, k] == 1).any():
            continue
        out[name] = match_recall(labels[known, k], old[known, k], new_probs[known, k], t)
    return out


class FootprintParams(BaseModel):
    """The parameters every footprint treatment takes (how its candidate is checked and timed)."""

    model_config = ConfigDict(extra="forbid")

    latency_batch: int = Field(8, ge=1, le=256, description="Batch size of latency targets and figures.")
    latency_repeats: int = Field(5, ge=1, le=50)
    measure_latency: bool = Field(True, description="Time candidate vs parent side by side (CPU).")
    check_images: int = Field(256, ge=8, description="Calibration images for the max |Δlogit| check.")


def candidate_model(spec: ArchSpec, state: dict[str, torch.Tensor]) -> CXRDenseNet:
    """The torch model of a candidate (`spec`, `state`), in eval mode."""
    m = build_model(spec)
    m.load_state_dict(state, strict=True)
    return m.eval()


def check_dlogit(ctx: TreatmentContext, p: FootprintParams, parent: CXRDenseNet, cand: Any) -> float:
    """Max |Δlogit| of `cand` (a module, or anything called like one) vs `parent` on `p.check_images`
    calibration images drawn with the context's seed."""
    x, _ = images(ctx, "calibration", p.check_images, ctx.seed)
    return max_abs_dlogit(parent, cand, [torch.from_numpy(x[i:i + 64]) for i in range(0, len(x), 64)])


def measure(ctx: TreatmentContext, p: FootprintParams, parent: CXRDenseNet, spec: ArchSpec,
            state: dict[str, Any], cand: Any, *, dlogit: float | None, runner=None,
            latency_needed: bool = False) -> dict[str, Any]:
    """`describe` of the candidate, timed against `parent` (`torch_latency`; by `runner` when the candidate
    does not run in torch) when `p.measure_latency` or `latency_needed` (a latency target) asks."""
    lat = torch_latency(ctx, parent, cand, runner, batch=p.latency_batch, repeats=p.latency_repeats) \
        if p.measure_latency or latency_needed else None
    return describe(spec, state, ctx.spec, dlogit=dlogit, latency=lat)


P = TypeVar("P", bound=FootprintParams)


class FootprintTreatment(Generic[P]):
    """The plugin shape of a footprint treatment (see the module docstring). Subclasses set `name`,
    `params_model`, `metrics` if not all of `METRICS`, `summary`, and implement `treat`."""

    name: ClassVar[str]
    fixes: ClassVar[frozenset[IssueKind]] = frozenset({IssueKind.footprint})
    head_only: ClassVar[bool] = False
    #: the policy parameters' model (`ctx.params` / `planning.params` are validated by it)
    params_model: type[P]
    #: the report metrics it acts on
    metrics: ClassVar[tuple[str, ...]] = METRICS
    #: the reason `applicable` gives when it applies (unless `more_preconditions` says otherwise)
    summary: ClassVar[str] = ""

    def applicable(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        ok, why = footprint_applicable(report, planning, self.metrics)
        return self.more_preconditions(report, planning) if ok else (ok, why)

    def more_preconditions(self, report: ReportInfo, planning: PlanningContext) -> tuple[bool, str]:
        """The treatment's own preconditions, checked once the shared ones hold, and its reason."""
        return True, self.summary

    def apply(self, ctx: TreatmentContext) -> TreatmentResult:
        return self.treat(ctx, self.params_model.model_validate(ctx.params), parent_model(ctx))

    def treat(self, ctx: TreatmentContext, p: P, parent: CXRDenseNet) -> TreatmentResult:
        """The treatment proper: a candidate from `parent` (the context's float model, eval mode) under
        the validated parameters `p`. Raises `TreatmentDeclined` when no change is worth proposing."""
        raise NotImplementedError
