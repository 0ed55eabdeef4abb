"""Imaging commands: `phantom`, `train`, `predict`, `import-weights`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.output import Table, console, emit, err_console, esc, fmt_float
from cli.progress import quiet, train_progress
from cxr.errors import InvalidInput

if TYPE_CHECKING:
    from cxr.spec import ArchSpec

# Torch, the data sources, the registry and the policies are imported inside the commands that use them.
commands = typer.Typer()

# Help texts are built when `decide` starts, so they must not import the phantom or the data sources
# (numpy, pandas, scipy): copies of cxr.phantom.SPLITS and cxr.sources.HELP (tests/cli/test_fast_cli.py
# checks that they agree).
SPLITS = ("train", "calibration", "evaluation", "feedback")
PRESETS = ("densenet121", "compact", "tiny")  # cxr.spec.PRESETS' names (pydantic)
SOURCE_HELP = "phantom:SITE | folder:DIR[:CSV] | nih:DIR"


def _spec(value: str) -> ArchSpec:
    from cxr.spec import ArchSpec, preset

    if value in PRESETS:
        return preset(value)
    p = Path(value)
    if p.suffix == ".json" and p.is_file():
        return ArchSpec.from_json(p.read_text())
    raise InvalidInput(f"expected a preset ({', '.join(PRESETS)}) or a spec .json file, got {value!r}", field="spec")


@commands.command("phantom")
def phantom_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write PNG files and labels.csv into."),
    site: str = typer.Option("site-a", help="Hospital profile: site-a (PA-heavy), site-b (AP-heavy), site-c."),
    split: str = typer.Option("train", help=f"Patient split: {', '.join(SPLITS)}."),
    n: int = typer.Option(1000, help="Number of images."),
    resolution: int = typer.Option(64, help="Image size in pixels (square)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same images and labels."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a deterministic phantom chest X-ray set (PNG + labels.csv) to a folder.

    Labels, patients, ages, sexes and views come from real NIH ChestX-ray14 rows;
    read the folder back with `--data folder:OUT`.
    """
    from cxr.data import phantom_dataset
    from cxr.images import write_folder
    from cxr.phantom import PhantomConfig

    with err_console.status(f"rendering {n} phantom films"):
        ds = phantom_dataset(PhantomConfig(site=site, split=split, n=n, resolution=resolution, seed=seed))
        csv_path = write_folder(ds, out)
    summary = ds.summary() | {"out": str(out), "csv": str(csv_path)}
    emit(summary, as_json, lambda: _print_summary(summary))


def _print_summary(s: dict) -> None:
    t = Table("pathology", "positives", right=("positives",),
              title=f"{s['name']}: {s['n']} images, {s['patients']} patients, AP {s['ap_fraction']:.0%}")
    for p, k in s["positives"].items():
        t.add_row(p, str(k))
    console.print(t)
    console.print(f"digest {s['digest'][:16]}…  written to {s.get('out', '')}")


@commands.command("train")
def train_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Where to write the trained weights (.safetensors)."),
    data: str = typer.Option("phantom:site-a", help=f"Training data: {SOURCE_HELP}."),
    spec: str = typer.Option("compact", help=f"Architecture: a preset ({', '.join(PRESETS)}) or a spec .json."),
    n: int = typer.Option(8000, help="Training images to use."),
    epochs: int = typer.Option(5, help="Epochs."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(4e-3, help="Peak learning rate (one-cycle)."),
    seed: int = typer.Option(0, help="Seed for weights, data order and augmentation."),
    checkpoints: Path | None = typer.Option(
        None, help="Checkpoint folder: written every epoch, resumed from when the job matches."
    ),
    model: str = typer.Option("cxr", help="Registry model name to register the result under."),
    register: bool = typer.Option(
        True, "--register/--no-register", help="Register the result when DECIDE_HOME has a registry."
    ),
    promote: bool = typer.Option(False, "--promote", help="Make the registered version `production`."),
    n_eval: int = typer.Option(2000, help="Calibration and evaluation images used when registering."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a torchxrayvision-style DenseNet on a data source and save safetensors weights.

    Interrupted? Run the same command again with the same --checkpoints folder: it resumes.
    When DECIDE_HOME holds a registry (`decide init`), the result is registered as a version of
    --model: thresholds chosen on the source's calibration split, evaluated on its evaluation split.
    """
    from cxr.sources import open_source
    from cxr.train import TrainConfig, train
    from cxr.weights import save_model
    from decision.baseline import register_from_source
    from policies import load_policy
    from registry.session import NoRegistry, check_schema
    from registry.settings import get_settings

    arch = _spec(spec)
    home = get_settings().home_dir
    with err_console.status("preparing data"):
        ds = open_source(data, resolution=arch.resolution, split="train", n=n, seed=seed, cache_dir=home / "cache")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    with train_progress(epochs, enabled=not (as_json or quiet(ctx))) as cb:
        res = train(arch, ds, cfg, checkpoint_dir=checkpoints, progress=cb)
    w = save_model(out, res.model)
    version = None
    if register:
        try:
            check_schema()
        except NoRegistry:
            version = None
        else:
            with err_console.status("registering: thresholds on the calibration split, evaluation"):
                version = register_from_source(None, home, model, w, data, n_train=n, n_eval=n_eval, seed=seed,
                                               policy=load_policy(get_settings().policy), promote=promote).version
    result = {
        "registered": version.ref if version else None,
        "out": str(out),
        "weights_sha256": w.weights_sha256,
        "spec": json.loads(arch.to_json()),
        "data": ds.summary(),
        "epochs": res.history,
        "resumed_from_epoch": res.resumed_from_epoch,
        "seconds": round(res.seconds, 2),
    }
    reg = f"; registered as {version.ref}" if version else " (no registry here: `decide init` to register)"
    emit(result, as_json, lambda: console.print(
        f"trained {len(ds)} images × {epochs} epochs in {res.seconds:.1f}s → {out} "
        f"(sha256 {w.weights_sha256[:16]}…){reg}"
    ))


@commands.command("predict")
def predict_cmd(
    images: list[Path] = typer.Argument(..., help="Chest X-rays: PNG (8/16-bit, RGB/RGBA), JPEG or DICOM files, "
                                        "or folders of them."),
    weights: Path | None = typer.Option(None, "--weights", help="An unregistered .safetensors file (digest-checked); "
                                        "its .thresholds.json sibling, when present, gives the operating points."),
    version: str | None = typer.Option(
        None, "--version", help="A registered version: cxr:3, cxr@production (its operating points decide "
        "'positive'; needs a home)."),
    site: str | None = typer.Option(None, "--site", help="With --version: the site's own alias and operating points."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Score the films that can be read, list the rest "
                                    "(exit 1 when some failed). Without it, any unreadable file stops the batch "
                                    "(exit 2) before anything is scored."),
    top: int = typer.Option(5, help="Findings to show per image in the table."),
    show_all: bool = typer.Option(False, "--all", help="Also list, apart, the outputs without an operating point "
                                  "(never validated: never called positive)."),
    as_json: bool = typer.Option(False, "--json", help="Print every probability as JSON."),
) -> None:
    """Score chest X-ray films (torchxrayvision normalisation: [-1024, 1024], center crop, resize).

    Example: decide predict films/ --version cxr@production --site site-b --keep-going

    DICOM goes through its modality LUT, VOI window and MONOCHROME1 inversion first. With --version
    each pathology is called positive at that version's operating point (per site with --site). The
    table leads with the findings called at an operating point; outputs the version has no operating
    point for were never validated and are not shown (`--all` lists them apart; `--json` marks each
    output `validated` or not).

    Before any finding, each study is checked against what the version was validated on (its reference
    statistics, at the policy's per-study false-alarm rate). A DICOM whose header says it is not a frontal
    chest radiograph (a CT, a lateral, a spine) or a degenerate image (constant, saturated) is not scored:
    no finding is shown. A study only far from the reference keeps its findings under an "outside" warning.
    `--json` gives each study's `ood` verdict and, for a withheld one, `withheld` (its calls are null).
    """
    from cxr.images import read_batch
    from cxr.weights import load_model
    from decision.registration import load_thresholds
    from decision.scoring import (
        expand_inputs,
        load_version,
        ood_check,
        pct,
        policy_ood_rate,
        refuse_failures,
        score_images,
        score_rows,
    )

    if (weights is None) == (version is None):
        raise InvalidInput("give exactly one of --weights FILE or --version REF", field="weights")
    rate = policy_ood_rate()
    loaded = None
    if weights is not None:
        model, _w = load_model(weights)
        sibling = weights.with_suffix(".thresholds.json")
        thresholds = load_thresholds(sibling) if sibling.is_file() else {}
        ref = None
    else:
        loaded = load_version(version, site=site)
        model, thresholds, ref = loaded.weights.model(), loaded.thresholds, loaded.ref
    batch = read_batch(expand_inputs(images), model.spec.resolution)
    refuse_failures(batch, keep_going)
    probs, feats = score_images(model, batch.images)
    check = ood_check(loaded, rate)
    verdicts = check.assess(feats, images=batch.images, probabilities=probs,
                            metadata=[f.info if f.format == "DICOM" else None for f in batch.films])
    rows = score_rows(batch.paths, probs, model.spec.pathologies, thresholds, verdicts)
    for r in rows:
        if ref:
            r["version"], r["site"] = ref, site
    rows += [{"path": path, "error": reason, "scores": None} for path, reason in batch.failures]

    def render() -> None:
        validated = any(t is not None for t in thresholds.values())
        head = (f"top {top} findings at the operating points (probability, + = positive)" if validated else
                f"top {top} outputs (probability; no operating points: nothing is called, nothing validated)")
        t = Table("image", head, *(["not validated"] if validated and show_all else []),
                  f"outside what {ref or 'the model'} was validated on?",
                  title=f"{len(batch.paths)} image(s)" + (f" scored by {ref}" if ref else "")
                  + (f" at {site}" if site else ""))
        hidden = 0
        for r, verdict in zip(rows, verdicts, strict=False):
            shown = [(k, v) for k, v in r["scores"].items() if v["validated"] or not validated][:top]
            cells = [esc(Path(r["path"]).name), ", ".join(
                f"{k} {fmt_float(v['probability'])}{' +' if v['positive'] else ''}" for k, v in shown)]
            if verdict.withheld:
                cells[1] = f"[bold red]{esc(verdict.withheld)}[/]"
            if validated and show_all:
                cells.append("" if verdict.withheld else
                             ", ".join(f"{k} {fmt_float(r['scores'][k]['probability'])}" for k in r["not_validated"]))
            cells.append(_ood_cell(verdict))
            hidden = max(hidden, len(r["not_validated"]))
            t.add_row(*cells)
        console.print(t)
        if validated and hidden and not show_all:
            console.print(f"[dim]{hidden} output(s) without an operating point are not shown: the version was never "
                          "validated on them (--all lists them apart; --json has every probability).[/]")
        if check.note:
            console.print(f"[yellow]{esc(check.note)}[/]")
        if any(v.outside for v in verdicts):
            what = (f"unlike the films {ref} was calibrated on (at a {pct(check.rate)} per-study false-alarm "
                    "rate), no frontal chest radiograph, or degenerate" if check.rate is not None else
                    "no frontal chest radiograph (DICOM header), or degenerate")
            console.print(f"[dim]outside: the study is {what}; the findings of an outside study may be "
                          "meaningless, and those of a withheld one are not shown (--json has every reason).[/]")
        for _path, reason in batch.failures:  # the reason names the file
            err_console.print(f"[yellow]not scored:[/] {esc(reason)}")

    emit(rows, as_json, render)
    if batch.failures:
        raise typer.Exit(1)


def _ood_cell(verdict) -> str:
    """The table's OOD cell: "outside" with the first reason not already given as the withheld reason."""
    if not verdict.outside:
        return "" if verdict.checked else "[dim]no reference statistics: not checked[/]"
    shown = verdict.withheld or ""
    rest = [r for r in verdict.short_reasons() if r not in shown]
    if verdict.withheld:
        also = f"; also {esc(rest[0])}" if rest else "" if verdict.checked else " (distances not checked)"
        return "[bold red]outside[/]" + also
    more = f" (+{len(rest) - 1} more)" if len(rest) > 1 else ""
    return f"[bold yellow]outside:[/] {esc(rest[0])}{more}"


@commands.command("explain")
def explain_cmd(
    images: list[Path] = typer.Argument(..., help="Chest X-rays: PNG, JPEG or DICOM files."),
    pathology: str = typer.Option(..., "--pathology", help="Whose logit to explain, e.g. Cardiomegaly."),
    weights: Path | None = typer.Option(None, "--weights", help="A .safetensors weights file (digest-checked)."),
    version: str | None = typer.Option(
        None, "--version", help="A registered version instead of a file: cxr:3, cxr@production (needs a home)."
    ),
    out: Path = typer.Option(Path("gradcam"), "--out", help="Folder for the overlays (IMAGE-PATHOLOGY.png)."),
    layer: str = typer.Option(
        "auto", "--layer", help="Module to explain at: auto (the deepest map at least 7 px wide: features for "
        "DenseNet121 at 224 px), features (the last map, exact CAM) or e.g. features.denseblock3."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Grad-CAM: where in each film the pathology's score comes from, written as PNG overlays.

    Example: decide explain film.png --pathology Cardiomegaly --version cxr@production --out heatmaps/

    Use it on the films behind a report's worst false positives (its cases name them).
    """
    import numpy as np

    from cxr.features import sigmoid
    from cxr.gradcam import grad_cam, save_overlay
    from cxr.images import load_image_file
    from cxr.weights import load_model

    if (weights is None) == (version is None):
        raise InvalidInput("give exactly one of --weights FILE or --version REF", field="weights")
    if weights is not None:
        model, _w = load_model(weights)
    else:
        from decision.catalog import Catalog
        from registry import repo
        from registry.session import session_scope
        from registry.settings import get_settings

        with session_scope(read_only=True) as s:
            v = repo.resolve_version(s, version)
        cat = Catalog(get_settings().home_dir)
        model = cat.model(cat.weights(v))
    x = np.stack([load_image_file(p, model.spec.resolution) for p in images])
    exp = grad_cam(model, x, pathology, layer=layer)
    rows = []
    for p, img, heat, logit in zip(images, x, exp.maps, exp.logits, strict=True):
        prob = float(sigmoid(np.array([logit]))[0])
        png = save_overlay(img, heat, out / f"{p.stem}-{pathology}.png", title=f"{pathology} p={prob:.2f}")
        rows.append({"image": str(p), "pathology": pathology, "layer": exp.layer, "probability": prob,
                     "overlay": str(png)})

    def render() -> None:
        t = Table("image", "probability", "overlay", title=f"Grad-CAM of {pathology} at {exp.layer}")
        for r in rows:
            t.add_row(Path(r["image"]).name, fmt_float(r["probability"]), r["overlay"])
        console.print(t)

    emit(rows, as_json, render)


@commands.command("import-weights")
def import_weights_cmd(
    source: str = typer.Argument(..., help="A checkpoint path, or a torchxrayvision weights name in its cache dir."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="Allow unpickling (torchxrayvision's files are pickled modules). Only for trusted files.",
    ),
    cache_dir: Path | None = typer.Option(
        None, help="torchxrayvision cache dir (default ~/.torchxrayvision/models_data)."
    ),
    register_it: bool = typer.Option(
        False, "--register", help="Also register the result as a version of --model (needs `decide init`)."
    ),
    model_name: str = typer.Option("cxr", "--model", help="Registry model name for --register."),
    promote: bool = typer.Option(False, "--promote", help="With --register: make it `production`."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert a torchxrayvision checkpoint (e.g. densenet121-res224-all) to safetensors. Never downloads.

    Writes OUT and OUT's thresholds next to it (OUT with suffix .thresholds.json); NaN
    operating thresholds are masked (null), never turned into 0.5. The compressed-CheXNet release
    (`{"alive_per_block", "state_dict"}`, norm2 = Identity) loads without --trust-pickle.

    Example: decide import-weights compressed_model.pt --out chexnet-c.safetensors --register --promote
    """
    from cxr.weights import save_model
    from cxr.xrv_import import import_checkpoint

    imp = import_checkpoint(source, trust_pickle=trust_pickle, cache_dir=cache_dir)
    from cxr.model import build_model, parameter_count

    model = build_model(imp.spec)
    model.load_state_dict(imp.state, strict=True)
    w = save_model(out, model)
    thr_path = out.with_suffix(".thresholds.json")
    thr_path.write_text(json.dumps(imp.thresholds, indent=2))
    result = {
        "source": imp.source_path,
        "source_sha256": imp.source_sha256,
        "unpickled": imp.unpickled,
        "out": str(out),
        "weights_sha256": w.weights_sha256,
        "thresholds": str(thr_path),
        "parameters": parameter_count(model),
        "spec": json.loads(imp.spec.to_json()),
        "registered": None,
    }
    if register_it:
        from decision.registration import register_weights_file
        from registry.session import check_schema, session_scope

        check_schema()
        with session_scope() as s:
            v = register_weights_file(s, out, model_name, promote=promote,
                                      reason=f"imported from {imp.source_path} (sha256 {imp.source_sha256[:16]}…)")
        result["registered"] = v.ref
    reg = f"; registered as {result['registered']}" if result["registered"] else ""
    emit(result, as_json, lambda: console.print(
        f"imported {imp.source_path} ({result['parameters']:,} parameters) → {out} "
        f"(sha256 {w.weights_sha256[:16]}…){reg}"
    ))
