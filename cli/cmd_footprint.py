"""Footprint commands: `export-onnx` (a registered version as an ONNX model for ONNX Runtime / Triton).

Heavy modules (torch, onnx, onnxruntime) are imported inside the command, so `decide` starts fast.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import typer

from cli.output import Table, console, emit, err_console, esc, fmt_float
from cxr.errors import InvalidInput

commands = typer.Typer()


@commands.command("export-onnx")
def export_onnx_cmd(
    version: str = typer.Argument(..., help="A registered version: cxr:3 or cxr@production."),
    out: Path = typer.Option(..., "--out", help="Where to write the model (.onnx)."),
    int8: bool = typer.Option(
        False, "--int8", help="Int8 static quantization (QDQ, per-channel, reduced range), calibrated on the "
        "version's calibration images; runs in ONNX Runtime on CPUs."),
    calibration_images: int = typer.Option(256, help="Images that calibrate int8 activation ranges."),
    check_images: int = typer.Option(64, help="Images on which ONNX Runtime is compared with PyTorch."),
    tolerance: float = typer.Option(
        1e-3, help="Largest |Δlogit| allowed between ONNX Runtime and PyTorch for a float32 export (exit 1 above)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export a version to ONNX with its preprocessing and operating points in the model's metadata.

    The graph takes `image` (batch, 1, R, R) float32 in [-1024, 1024] and returns `logits`,
    `probabilities` and `features`; its metadata (`cxr_decide.preprocessing`, `.pathologies`,
    `.operating_points`, `.spec`, `.version`) is what a deployment needs. After writing, ONNX
    Runtime's outputs are compared with PyTorch's on the version's calibration images (random pixels
    when it has none) and the largest |Δ| is reported: rounding for float32 (must stay within
    --tolerance), the quantization error for --int8 (reported, not judged: the gate judges int8
    versions on held-out data). An int8 version already registered (e.g. by the quantization
    treatment) is written as it is, with its own classifier.

    The preprocessing is what `decide predict` does, film to tensor: `.preprocessing` says it in words.
    `.preprocessing_recipe` holds the same steps as values (functions and their exact arguments) to follow.
    Its resize is scikit-image's anti-aliased `resize` as torchxrayvision's `XRayResizer` calls it, not area averaging.

    Example: decide export-onnx cxr@production --out cxr.onnx
    """
    import numpy as np
    import torch

    from cxr.files import atomic_write
    from cxr.onnx_export import check_against_torch, export_onnx, ort_session, read_metadata
    from cxr.quantize import quantize_int8
    from decision.catalog import Catalog
    from registry import repo
    from registry.entities import DatasetRole
    from registry.session import session_scope
    from registry.settings import get_settings

    with session_scope(read_only=True) as s:
        v = repo.resolve_version(s, version)
        cal_sets = [d for d in (repo.list_datasets(s, ids=v.dataset_ids) if v.dataset_ids else [])
                    if d.role == DatasetRole.calibration]
    cat = Catalog(get_settings().home_dir)
    w = cat.weights(v)
    rng = np.random.default_rng(0)

    def sample(n: int) -> tuple[np.ndarray, str]:
        for d in cal_sets:
            ds = cat.dataset(d)
            if len(ds):
                idx = np.sort(rng.permutation(len(ds))[:n])
                return ds.images(idx), f"{len(idx)} images of {d.name}"
        r = w.spec.resolution
        return (rng.random((n, w.spec.in_channels, r, r), dtype=np.float32) * 2 - 1) * 1024, f"{n} random images"

    meta_kw = {"thresholds": v.thresholds, "site_thresholds": v.site_thresholds, "version": v.ref}
    x, where = sample(check_images)
    if w.spec.runtime == "onnxruntime":
        data = _registered_graph(w, v, meta_kw)
        int8, reference = True, "the version's own int8 graph"
        got, feats = ort_session(data).run(["logits", "features"], {"image": np.ascontiguousarray(x, np.float32)})
        z = torch.nn.functional.linear(torch.from_numpy(feats), w.state["classifier.weight"],
                                       w.state["classifier.bias"]).numpy()
        worst = {"logits": float(np.abs(got - z).max())}  # the graph's classifier vs the version's
    else:
        model = w.model()
        if int8:
            xq, cal_where = sample(calibration_images)
            with err_console.status(f"quantizing to int8 on {cal_where}"):
                data = quantize_int8(model, xq, **meta_kw)
        else:
            data = export_onnx(model, **meta_kw)
        reference = "PyTorch float32"
        worst = check_against_torch(model, data, x)
    atomic_write(out, data)
    result = {
        "version": v.ref, "out": str(out), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "int8": int8, "checked_on": where, "compared_with": reference, "max_abs_delta": worst,
        "tolerance": None if int8 else tolerance, "metadata": sorted(read_metadata(data)),
    }
    failed = not int8 and worst["logits"] > tolerance

    def render() -> None:
        t = Table(title=f"{esc(v.ref)} → {esc(out)} ({len(data) / 1e6:.2f} MB, {'int8' if int8 else 'float32'})")
        t.add_column("output")
        t.add_column(f"max |Δ| vs {reference}", justify="right")
        for k, val in worst.items():
            t.add_row(k, fmt_float(val, 6))
        console.print(t)
        console.print(f"checked on {esc(where)}; metadata: {', '.join(esc(k) for k in result['metadata'])}")

    emit(result, as_json, render)
    if failed:
        err_console.print(f"[red]ONNX Runtime differs from PyTorch by {worst['logits']:.2e} > {tolerance:g}[/]")
        raise typer.Exit(1)


def _registered_graph(w, v, meta_kw: dict) -> bytes:
    """An int8 version's graph with its current classifier and this version's metadata (and preprocessing)."""
    import onnx
    from onnx import numpy_helper

    from cxr.onnx_export import preprocessing_metadata, set_metadata

    proto = onnx.load_from_string(w.onnx_bytes)
    gemm = [n for n in proto.graph.node if n.op_type == "Gemm"]
    if len(gemm) != 1:
        raise InvalidInput("the registered graph has no single classifier (Gemm) node", field="version")
    inits = {i.name: i for i in proto.graph.initializer}
    for name, key in zip(gemm[0].input[1:3], ("classifier.weight", "classifier.bias"), strict=True):
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(w.state[key].numpy(), name))
    set_metadata(proto, {
        "cxr_decide.operating_points": json.dumps({"default": dict(meta_kw["thresholds"]),
                                                   "sites": dict(meta_kw["site_thresholds"])}, sort_keys=True),
        "cxr_decide.version": meta_kw["version"],
        **preprocessing_metadata(w.spec),  # today's words, also for a graph quantized before they were true
    })
    return proto.SerializeToString()
