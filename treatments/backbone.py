"""What the image-reading (backbone-level) treatments share.

The parent's network rebuilt from its weights, the training + calibration
images, the report site's films and the training-site reference films, the
site's acquisition style estimated from its own films, and cached inputs of a
dense block (the frozen prefix runs once per image and data set).
"""

from __future__ import annotations

import hashlib

import numpy as np

from cxr.blocks import block_inputs, tail_parameter_names
from cxr.data import CXRDataset, concat_datasets
from cxr.model import CXRDenseNet, build_model
from cxr.site_style import SiteStyle, estimate_site_style
from cxr.weights import tensors_digest
from treatments.base import PlanningContext, TreatmentContext


def parent_model(ctx: TreatmentContext) -> CXRDenseNet:
    """A fresh eval-mode copy of the parent's network; `ValueError` when the context carries no weights."""
    if ctx.load_state is None:
        raise ValueError("this treatment needs the parent's weights")
    m = build_model(ctx.spec)
    m.load_state_dict(ctx.load_state(), strict=True)
    return m.eval()


def image_sets(ctx: TreatmentContext) -> tuple[CXRDataset, CXRDataset]:
    """(train + calibration films, calibration films); `ValueError` unless the calibration films are there,
    in the calibration split's order."""
    data = ctx.image_data or {}
    if "calibration" not in data or tuple(data["calibration"].image_ids) != tuple(ctx.calibration.image_ids):
        raise ValueError("this treatment needs the calibration images, in the calibration split's order")
    parts = [d for d in (data.get("train"), data["calibration"]) if d is not None]
    return concat_datasets(parts, "train+calibration"), data["calibration"]


def applicable_with(planning: PlanningContext, need: int) -> tuple[bool, str]:
    """(applicable, why): at least `need` labelled calibration cases at the report's site."""
    if planning.calibration_cases < need:
        return False, f"only {planning.calibration_cases} labelled calibration cases at the site (needs {need})"
    return True, "retrains convolutional weights on images"


def reference_films(ctx: TreatmentContext) -> CXRDataset:
    """The training-site films: the train split, else the calibration rows of other sites."""
    data = ctx.image_data or {}
    if data.get("train") is not None:
        return data["train"]
    cal = data["calibration"]
    return cal.subset(np.flatnonzero(np.array([s != ctx.report.site for s in cal.sites])))


def site_style_of(ctx: TreatmentContext, n: int) -> SiteStyle | None:
    """The report site's style, estimated from its calibration films (labels unused) against the reference."""
    cal = (ctx.image_data or {})["calibration"]
    here = np.flatnonzero(np.array([s == ctx.report.site for s in cal.sites]))
    ref = reference_films(ctx)
    if len(here) < 8 or len(ref) < 8:
        return None
    rng = np.random.default_rng(ctx.seed)
    pick = lambda d, rows: d.images(np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False)))  # noqa: E731
    return estimate_site_style(pick(cal, here), pick(ref, np.arange(len(ref))))


def cached_block_inputs(ctx: TreatmentContext, model: CXRDenseNet, ds: CXRDataset, block: int) -> np.ndarray:
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
