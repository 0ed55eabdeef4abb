"""Footprint treatments on a tiny real world, and a footprint report end to end through the CLI.

Unit level: each plugin on a `tiny` DenseNet trained on 32-pixel phantoms (what it returns, what it
measured, that the engine can build its candidate). End to end: `decide ingest` of a report "at most
60 % of the parameters" → `decide run` → lossless compression is tried first and declines (it cannot
reach 60 %), structured pruning runs, the gate judges it on held-out data with DeLong intervals, and
the registry and the audit trail hold all of it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxr.data import phantom_dataset
from cxr.features import extract_features
from cxr.kinds import IssueKind
from cxr.model import build_model, parameter_count
from cxr.phantom import PhantomConfig
from cxr.quantize import int8_spec
from cxr.spec import XRV_PATHOLOGIES, preset
from cxr.train import TrainConfig, train
from cxr.weights import to_bytes
from decision.treat import candidate_weights
from tests import dates
from treatments.base import FeatureSplit, PlanningContext, ReportInfo, Slo, TreatmentContext, TreatmentDeclined
from treatments.distillation import Distillation
from treatments.footprint import LosslessCompression, Quantization, StructuredPruning
from treatments.footprint_base import FOOTPRINT_ARTIFACT, METRICS
from treatments.plugins import check_treatment

FAST = {"latency_repeats": 1, "check_images": 32}


@pytest.fixture(scope="module")
def world():
    spec = preset("tiny").model_copy(update={"growth_rate": 8})
    tr = phantom_dataset(PhantomConfig(site="site-a", n=256, resolution=32), workers=1)
    cal = phantom_dataset(PhantomConfig(site="site-a", split="calibration", n=160, resolution=32), workers=1)
    model = train(spec, tr, TrainConfig(epochs=1, batch_size=32, threads=1)).model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    split = FeatureSplit("calibration", extract_features(model, cal), cal.aligned_labels(spec.pathologies),
                         cal.image_ids, cal.sites)
    report = ReportInfo(1, "Cardiomegaly", IssueKind.footprint, "parameter_fraction", 1.0, 0.6, "site-a")
    ctx = TreatmentContext(
        report=report, spec=spec, head_weight=model.classifier.weight.detach().numpy().copy(),
        head_bias=model.classifier.bias.detach().numpy().copy(), thresholds={p: 0.3 for p in XRV_PATHOLOGIES[:14]},
        train=None, calibration=split, slo=Slo(0.6, 0.5, 0.6), params=dict(FAST),
        load_state=lambda: {k: v.clone() for k, v in state.items()}, image_data={"train": tr, "calibration": cal},
    )
    return ctx, model


def _with(ctx, metric="parameter_fraction", target=0.6, **params):
    return replace(ctx, report=replace(ctx.report, metric=metric, target=target), params={**FAST, **params})


def _parent_weights(ctx):
    return to_bytes(ctx.spec, ctx.load_state())[1]


ALL = (LosslessCompression(), StructuredPruning(), Quantization(), Distillation())


def test_every_footprint_treatment_checks_the_shared_preconditions(world):
    ctx, _ = world
    planning = PlanningContext(ctx.spec, ctx.thresholds, {}, 100)
    on_int8 = replace(planning, spec=int8_spec(ctx.spec))
    for t in ALL:
        assert check_treatment(t) is None and t.fixes == {IssueKind.footprint} and not t.head_only, t.name
        size = replace(ctx.report, metric="size_mb")
        assert t.applicable(replace(size, kind=IssueKind.auroc_drop), planning) == (
            False, "treats footprint reports only")
        ok, why = t.applicable(replace(ctx.report, metric="auroc"), planning)
        assert not ok and why.startswith("cannot act on metric 'auroc'"), why
        assert t.applicable(size, on_int8) == (False, "the version runs in onnxruntime; treat its float parent")
        ok, why = t.applicable(size, planning)
        assert ok and why, t.name  # a reason of its own when it applies
        with pytest.raises(ValueError, match="extra"):  # the policy's parameters are validated before any work
            t.apply(replace(ctx, params={"no_such_parameter": 1}))
        with pytest.raises(ValueError, match="needs the parent's weights"):
            t.apply(replace(ctx, params=dict(FAST), load_state=None))
    acts = {t.name: [m for m in METRICS if t.applicable(replace(ctx.report, metric=m), planning)[0]] for t in ALL}
    assert acts["quantization"][0] == "size_mb" and "parameters" not in acts["quantization"]
    assert all(acts[t.name] == list(METRICS) for t in ALL if t.name != "quantization")


def test_lossless_declines_a_target_it_cannot_reach_and_keeps_outputs_when_it_can(world):
    ctx, model = world
    with pytest.raises(TreatmentDeclined, match="cannot reach") as exc:
        LosslessCompression().apply(_with(ctx))
    fp = exc.value.artifacts[FOOTPRINT_ARTIFACT]
    assert fp["parameter_fraction"] > 0.6 and fp["max_abs_dlogit"] <= 1e-5
    assert set(fp["latency_ms"]) >= {"value", "batch", "cpu", "parent_by_batch", "ratio"}
    res = LosslessCompression().apply(_with(ctx, target=0.999))
    assert res.thresholds is None and res.trainable_parameters == 0  # outputs unchanged: thresholds too
    cand, data = candidate_weights(_parent_weights(ctx), res)
    assert data is not None and cand.spec.kept_channels and parameter_count(cand.model()) < parameter_count(model)
    x = torch.from_numpy(ctx.image_data["calibration"].images(np.arange(32)))
    with torch.no_grad():
        assert float((cand.model()(x) - model(x)).abs().max()) <= 1e-5


@pytest.mark.slow  # about 5 s on an idle 2-core machine
def test_pruning_meets_a_parameter_budget_and_rematches_every_recall(world):
    ctx, _ = world
    res = StructuredPruning().apply(_with(ctx, importance_images=32, reconstruct_images=64, finetune_epochs=1,
                                          finetune_images=64, positions=16))
    fp = res.artifacts[FOOTPRINT_ARTIFACT]
    assert fp["parameter_fraction"] <= 0.6 and fp["parameters"] == parameter_count(build_model(res.spec))
    assert res.spec.growth_channels and fp["runtime"] == "torch" and fp["dtype"] == "float32"
    assert res.artifacts["importance"]["method"] == "fisher" and len(res.artifacts["finetune"]) == 1
    assert set(res.thresholds) == set(ctx.thresholds)
    cand, _ = candidate_weights(_parent_weights(ctx), res)
    assert cand.spec == res.spec
    # too far: a budget that needs fewer channels than min_keep_ratio is declined, not attempted
    with pytest.raises(TreatmentDeclined, match="min_keep_ratio"):
        StructuredPruning().apply(_with(ctx, target=0.05, importance_images=32, reconstruct_images=32,
                                        finetune_epochs=0))


def test_quantization_picks_float16_or_int8_from_the_target(world):
    ctx, _ = world
    size = len(to_bytes(ctx.spec, ctx.load_state())[0]) / 1e6
    planning = PlanningContext(ctx.spec, ctx.thresholds, {}, 100)
    assert not Quantization().applicable(_with(ctx).report, planning)[0]  # parameters do not change
    # a tiny model's file is half header (spec, digests): float16 takes it to about 0.7 of its size
    assert Quantization().applicable(_with(ctx, "size_mb", size * 0.8).report, planning)[0]
    half = Quantization().apply(_with(ctx, "size_mb", size * 0.8))
    assert half.artifacts["mode"] == "float16" and half.spec.dtype == "float16"
    fp = half.artifacts[FOOTPRINT_ARTIFACT]
    assert fp["size_mb"] <= size * 0.8 and fp["max_abs_dlogit"] < 1e-2
    pytest.importorskip("onnxruntime")
    small = Quantization().apply(_with(ctx, "size_mb", size * 0.3, calibration_images=32))
    assert small.artifacts["mode"] == "int8" and small.spec.runtime == "onnxruntime"
    cand, _ = candidate_weights(_parent_weights(ctx), small)
    assert cand.onnx_bytes is not None and set(small.thresholds) == set(ctx.thresholds)


@pytest.mark.slow  # about 6 s on an idle 2-core machine
def test_distillation_trains_a_smaller_student(world):
    ctx, _ = world
    res = Distillation().apply(_with(ctx, target=0.6, epochs=1, latency_repeats=1))
    assert res.spec.growth_rate == 4 and res.artifacts[FOOTPRINT_ARTIFACT]["parameter_fraction"] <= 0.6
    assert len(res.artifacts["history"]) == 1 and set(res.thresholds) == set(ctx.thresholds)
    with pytest.raises(TreatmentDeclined, match="over the target"):
        Distillation().apply(_with(ctx, target=0.01, epochs=1))


# -- end to end -----------------------------------------------------------------------------------------

def _fast_policy(tmp_path: Path) -> Path:
    text = (Path(__file__).resolve().parents[2] / "policies" / "default.toml").read_text()
    fast = text
    for old, new in (("importance_images = 512", "importance_images = 96"),
                     ("reconstruct_images = 512", "reconstruct_images = 128"),
                     ("finetune_epochs = 5", "finetune_epochs = 1")):
        assert old in fast, f"default.toml no longer says {old!r}"
        fast = fast.replace(old, new)
    path = tmp_path / "fast.toml"
    path.write_text(fast)
    return path


@pytest.mark.slow  # about 20 s: trains nothing new but prunes, reconstructs and fine-tunes one epoch
@pytest.mark.xdist_group("tiny-home")
def test_footprint_report_end_to_end(tiny_home, tmp_path):
    from cli.app import app
    from registry import audit, repo
    from registry.session import session_scope

    report = {"model": "cxr", "version": 1, "pathology": "Cardiomegaly", "kind": IssueKind.footprint,
              "metric": "parameter_fraction", "value": 1.0, "target": 0.6, "site": "site-a",
              "window_start": dates.iso(dates.day(7)), "window_end": dates.iso(dates.day(14)),
              "counts": {"tp": 0, "fp": 0, "tn": 0, "fn": 0}, "source": "operator",
              "notes": "the site-a box must run it with at most 60 % of the parameters"}
    jsonl = tmp_path / "footprint.jsonl"
    jsonl.write_text(json.dumps(report) + "\n")
    env = {"DECIDE_HOME": str(tiny_home.home)}
    runner = CliRunner()
    out = runner.invoke(app, ["ingest", str(jsonl)], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["run", "--yes", "--json", "--policy", str(_fast_policy(tmp_path))], env=env)
    assert out.exit_code in (0, 1), out.output
    with session_scope(tiny_home.url, read_only=True) as s:
        runs = repo.list_runs(s)
        names = [r.treatment for r in runs]
        assert names[:2] == ["lossless_compression", "structured_pruning"], names
        lossless, pruning = runs[0], runs[1]
        assert lossless.outcome.value == "rejected" and "cannot reach" in lossless.error_text
        assert lossless.artifacts[FOOTPRINT_ARTIFACT]["parameter_fraction"] > 0.6
        assert pruning.output_version_id is not None, pruning.error_text
        v = repo.get_version(s, pruning.output_version_id)
        checks = {c["name"].split("@")[0]: c for c in pruning.metrics["gate"]["checks"]}
        assert checks["target_fixed"]["passed"] and checks["target_fixed"]["value"] <= 0.6
        assert any(k.startswith("noninferiority[") for k in checks)  # judged on the DeLong margin
        assert json.loads(v.spec_json).get("growth_channels")
        assert v.parameter_count <= 0.6 * repo.get_version(s, 1).parameter_count
        assert v.footprint["parameters"] == v.parameter_count and v.footprint["runtime"] == "torch"
        assert audit.verify_chain(s).ok
        production = repo.resolve_version(s, "cxr@production")
        assert (production.id == v.id) == (pruning.outcome.value == "accepted")
    out = runner.invoke(app, ["audit", "verify"], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["audit", "log", "--entity", f"model_version:{v.id}", "--json"], env=env)
    assert out.exit_code == 0 and json.loads(out.output), out.output  # the pruned version's events are there


@pytest.mark.xdist_group("tiny-home")
def test_the_monitor_files_a_footprint_report_when_latency_exceeds_the_budget(tiny_home):
    from decision.catalog import Catalog
    from decision.footprint import check_latency
    from registry import repo
    from registry.session import session_scope

    cat = Catalog(tiny_home.home)
    start, end = dates.week(1)
    week = {"window_start": start, "window_end": end}
    with session_scope(tiny_home.url) as s:
        measured, filed = check_latency(s, cat, "cxr@production", 1e6, site="site-a", batch=2, repeats=1, **week)
        assert filed is None and measured["value"] > 0 and measured["batch"] == 2 and "flags" in measured["cpu"]
        measured, filed = check_latency(s, cat, "cxr@production", 1e-9, site="site-a", batch=2, repeats=1, **week)
        assert filed is not None
        report = repo.get_report(s, filed.ids[0])
    assert (report.kind.value, report.metric, report.target) == (IssueKind.footprint, "latency_ms", 1e-9)
    assert report.value == pytest.approx(measured["value"], rel=1e-3) and "batch 2" in report.notes
