"""Footprint treatments side by side: parameters, MB on disk, CPU ms/image, ΔAUROC — in one run.

Two models:

* the compact phantom baseline (trained here as bench/baseline.py trains it, or read with
  --compact-weights): every treatment — lossless compression, structured pruning (bottleneck +
  growth channels, least-squares reconstruction) at a sweep of keep ratios, each also after a short
  distillation fine-tune (--finetune-ratios), float16 storage, int8 through ONNX Runtime, a
  distilled student — with mean / worst per-pathology ΔAUROC on the site-a evaluation split (the 14
  NIH labels with ≥ 20 positives and ≥ 20 negatives there) and the worst lower bound of the paired
  DeLong interval (the gate's non-inferiority check at margin 0.02: `gate_ok`);
* DenseNet121 at 224² with random weights (BatchNorm statistics set on random pixels, see
  `calibrated`): latency only (accuracy needs trained weights): the
  original, bottleneck-only pruning (what the compressed-CheXNet release removed), bottleneck +
  growth pruning at ≥ 50 % fewer backbone parameters, float16 storage, ONNX Runtime float32 and int8.

Latency of every variant of a model is measured interleaved in one `measure_latency` call (medians of
repeats, rotating order), so ratios hold on a noisy shared machine; the CPU flags and the load average
are printed with them. On a machine busier than its cores (load average above the core count) pass
`--threads 1`: with more threads than free cores every operator waits at a barrier for a descheduled
thread, and the figures measure the scheduler (DenseNet121 at batch 8 ran 3× slower with 2 threads
than with 1 at load 7 on 2 cores).

    python bench/footprint.py [--quick] [--json] [--threads N] [--repeats K] [--no-dn121] [--no-compact]
                              [--compact-weights FILE] [--ratios R,...] [--finetune-ratios R,...]
                              [--finetune-epochs E] [--finetune-images N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import _common
import numpy as np
import torch

from cxr.channel_slicing import apply_keep
from cxr.compress import compress_lossless
from cxr.data import phantom_dataset
from cxr.distill import DistillConfig, distill
from cxr.footprint import backbone_parameters, measure_latency, ort_runner, torch_runner
from cxr.infer import predict_logits
from cxr.model import build_model, parameter_count
from cxr.onnx_export import export_onnx, ort_session
from cxr.phantom import PhantomConfig
from cxr.prune import Importance, channel_importance, pruned_spec, search_ratio, select
from cxr.quantize import float16_spec, quantize_int8
from cxr.reconstruct import reconstruct
from cxr.spec import NIH_PATHOLOGIES, preset
from cxr.stats import delong_paired
from cxr.train import TrainConfig, train
from cxr.weights import load_model, to_bytes
from decision.evaluate import evaluate_scores
from decision.gate import UNDERPOWERED, noninferiority_check
from policies import load_policy

POLICY = load_policy()  # the bundled default.toml: its gate's margin, alpha and underpowered rule
MARGIN = POLICY.gate.noninferiority_margin


def accuracy(y: np.ndarray, z_ref: np.ndarray, z: np.ndarray, pathologies) -> dict:
    """Mean / worst ΔAUROC over the 14 NIH labels with ≥ 20 positives, the worst DeLong lower bound,
    and what the default policy's gate would say about non-inferiority on every pathology.

    `gate`: "accept" (every lower bound ≥ −margin), "held" (passes only on the underpowered rule —
    no significant harm — so a person must approve it), or "refuse: NAME …" (the pathologies that fail).
    """
    deltas, los = [], []
    for j in range(len(NIH_PATHOLOGIES)):
        known = ~np.isnan(y[:, j])
        yy = y[known, j]
        if yy.sum() < 20 or (1 - yy).sum() < 20:
            continue
        r = delong_paired(yy.astype(int), z[known, j], z_ref[known, j])
        deltas.append(r.delta)
        los.append(r.lo)
    sig = lambda a: 1 / (1 + np.exp(-a.astype(np.float64)))  # noqa: E731
    ev = evaluate_scores(y, sig(z), sig(z_ref), pathologies=list(pathologies))
    checks = [noninferiority_check(r, POLICY) for r in ev.results if r.evaluable]
    failed = [c.name[len("noninferiority["):-1] for c in checks if not c.passed]
    held = [c.name[len("noninferiority["):-1] for c in checks if c.passed and c.flag == UNDERPOWERED]
    gate = (f"refuse: {' '.join(failed)}" if failed else f"held: {' '.join(held)} underpowered" if held
            else "accept")
    return {"mean_dauroc": round(float(np.mean(deltas)), 4), "worst_dauroc": round(float(np.min(deltas)), 4),
            "worst_delong_lo": round(float(np.min(los)), 4), "gate_noninferior": bool(min(los) >= -MARGIN),
            "gate": gate}


def _model(spec, state):
    m = build_model(spec)
    m.load_state_dict(state, strict=True)
    return m.eval()


def compact_part(args, log) -> tuple[list[dict], dict]:
    spec = preset("compact")
    n_train, n_eval, epochs = (600, 400, 1) if args.quick else (8000, 2000, 5)
    with tempfile.TemporaryDirectory() as cache:
        mk = lambda site, split, n: phantom_dataset(  # noqa: E731
            PhantomConfig(site=site, split=split, n=n, resolution=spec.resolution, seed=0), cache_dir=cache)
        tr, cal, ev = mk("site-a", "train", n_train), mk("site-a", "calibration", n_eval), mk(
            "site-a", "evaluation", n_eval)
        t0 = time.perf_counter()
        if args.compact_weights:
            parent, w = load_model(args.compact_weights)
            if w.spec != spec:
                raise SystemExit(f"{args.compact_weights} is not the compact preset")
            log(f"compact baseline read from {args.compact_weights}")
        else:
            parent = train(spec, tr, TrainConfig(epochs=epochs, seed=0, threads=args.threads)).model.eval()
            log(f"compact baseline trained in {time.perf_counter() - t0:.0f}s")
        y = ev.aligned_labels(spec.pathologies)
        z0 = predict_logits(parent, ev)
        cal_x = cal.images(np.arange(min(512, len(cal))))
        cal_y = cal.aligned_labels(spec.pathologies)[:len(cal_x)]
        rec_x = tr.images(np.sort(np.random.default_rng(1).permutation(len(tr))[:512]))
        variants: dict[str, dict] = {"original": {"model": parent, "spec": spec, "state": parent.state_dict()}}
        comp = compress_lossless(parent)
        cs = comp.summary()
        variants["lossless"] = {
            "model": _model(comp.spec, comp.state), "spec": comp.spec, "state": comp.state,
            "notes": f"{comp.removed_channels} bottleneck channels removed ({cs['constant_zero']} constant zero, "
                     f"{cs['interval_dead']} dead by interval bounds, {cs['constant_folded']} folded; "
                     f"{cs['constant_kept']} non-zero constants kept), norm2 folded into conv1"}
        folded = variants["lossless"]["model"]
        t0 = time.perf_counter()
        imp = channel_importance(folded, cal_x, cal_y, method="fisher")
        log(f"Fisher importance on {len(cal_x)} calibration images in {time.perf_counter() - t0:.0f}s")
        ft_data = tr if len(tr) <= args.finetune_images else tr.subset(
            np.sort(np.random.default_rng(2).permutation(len(tr))[:args.finetune_images]))
        for r in args.ratios:
            t0 = time.perf_counter()
            keep = select(comp.spec, imp, r)
            pspec, pstate = apply_keep(comp.spec, comp.state, keep)
            recon = _model(pspec, pstate)
            err = reconstruct(folded, recon, keep, rec_x)
            variants[f"pruned r={r} LS"] = {
                "model": recon, "spec": pspec, "state": recon.state_dict(),
                "notes": f"least squares on {len(rec_x)} training images (worst relative error "
                         f"{max(err.values()):.3f}), no fine-tune; {time.perf_counter() - t0:.0f}s"}
            log(f"pruned r={r}: {variants[f'pruned r={r} LS']['notes']}")
            if r not in args.finetune_ratios:
                continue
            t0 = time.perf_counter()
            cfg = DistillConfig(epochs=args.finetune_epochs, lr=1e-3, seed=0, threads=args.threads)
            ft = distill(pspec, parent, ft_data, cfg, init_state=recon.state_dict())
            variants[f"pruned r={r} +ft"] = {
                "model": ft.model.eval(), "spec": pspec, "state": ft.model.state_dict(),
                "notes": f"then {args.finetune_epochs} distillation epochs on {len(ft_data)} training images "
                         f"from the parent's logits; {time.perf_counter() - t0:.0f}s"}
            log(f"pruned r={r}: {variants[f'pruned r={r} +ft']['notes']}")
        w16 = to_bytes(float16_spec(spec), parent.state_dict())[1]
        variants["float16"] = {"model": w16.model(), "spec": w16.spec, "state": parent.state_dict()}
        q = quantize_int8(parent, cal.images(np.arange(min(256, len(cal)))))
        variants["int8 (ORT)"] = {"session": ort_session(q, args.threads), "bytes": q}
        variants["float32 (ORT)"] = {"session": ort_session(export_onnx(parent), args.threads),
                                     "bytes": export_onnx(parent)}
        if args.student_epochs:
            student = spec.model_copy(update={"growth_rate": 6})
            t0 = time.perf_counter()
            st = distill(student, parent, tr, DistillConfig(epochs=args.student_epochs, seed=0, threads=args.threads))
            variants["distilled g=6"] = {
                "model": st.model.eval(), "spec": student, "state": st.model.state_dict(),
                "notes": f"student (growth rate 6) trained {args.student_epochs} epochs on {len(tr)} training "
                         f"images from the parent's logits; {time.perf_counter() - t0:.0f}s"}
            log(f"distilled student: {variants['distilled g=6']['notes']}")
        rows = _rows("compact", variants, spec, y, z0, ev, args)
    return rows, {"compact_n_train": n_train, "compact_n_eval": n_eval}


def _size(v: dict) -> int:
    return len(v["bytes"]) if "bytes" in v else len(to_bytes(v["spec"], v["state"])[0])


def _rows(name, variants, spec, y, z0, ev, args, batches: tuple[int, ...] | None = None) -> list[dict]:
    batches = batches or ((1, 32) if args.quick else (1, 8, 32))
    runners = {k: ort_runner(v["session"]) if "session" in v else torch_runner(v["model"]) for k, v in variants.items()}
    lat = measure_latency(runners, (spec.in_channels, spec.resolution, spec.resolution), batches,
                          repeats=args.repeats, threads=args.threads)
    ms = lat["ms_per_image"]
    n0, b0 = parameter_count(build_model(spec)), backbone_parameters(spec)
    rows = []
    for k, v in variants.items():
        vspec = v.get("spec", spec)
        n = parameter_count(build_model(vspec))
        row = {"model": name, "variant": k, "params": n, "param_frac": round(n / n0, 3),
               "backbone_frac": round(backbone_parameters(vspec) / b0, 3), "MB": round(_size(v) / 1e6, 3)}
        for b in batches:
            row[f"ms@{b}"] = round(ms[k][b], 2)
        for b in batches[1:]:
            row[f"x@{b}"] = round(ms[k][b] / ms["original"][b], 3)
        if ev is not None:
            z = (v["session"].run(["logits"], {"image": ev.images(np.arange(len(ev)))})[0] if "session" in v
                 else predict_logits(v["model"], ev))
            acc = accuracy(y, z0, z, spec.pathologies)
            row |= {"dAUC_mean": acc["mean_dauroc"], "dAUC_worst": acc["worst_dauroc"],
                    "delong_lo_worst": acc["worst_delong_lo"], "gate": acc["gate"],
                    "max_dlogit": float(f"{float(np.abs(z - z0).max()):.3g}")}
        if v.get("notes"):
            row["notes"] = v["notes"]
        rows.append(row)
    rows[0]["cpu"] = lat["cpu"]
    return rows


@torch.no_grad()
def calibrated(spec, seed: int = 0, batches: int = 2, batch: int = 8) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of its own activations on random pixels.

    A freshly built network in eval mode normalises with mean 0 / variance 1, so activations grow
    layer after layer until they overflow or turn denormal, and denormal arithmetic is 10-100× slower
    on x86: timing such a model measures the numbers, not the network.
    """
    m = build_model(spec, seed=seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # a cumulative average over the calibration batches
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        m(torch.from_numpy((rng.random((batch, spec.in_channels, spec.resolution, spec.resolution),
                                       dtype=np.float32) * 2 - 1) * 1024))
    return m.eval()


def dn121_part(args, log) -> list[dict]:
    spec = preset("densenet121")
    parent = calibrated(spec)
    uniform = Importance({f"denseblock{b}.denselayer{i}": np.arange(spec.bottleneck(b, i), 0, -1.0)
                          for b, n in enumerate(spec.block_config, 1) for i in range(1, n + 1)},
                         {f"denseblock{b}.denselayer{i}": np.arange(spec.growth(b, i), 0, -1.0)
                          for b, n in enumerate(spec.block_config, 1) for i in range(1, n + 1)}, "uniform", 0)
    b0 = backbone_parameters(spec)
    r = search_ratio(lambda x: backbone_parameters(pruned_spec(spec, uniform, x)) <= 0.5 * b0)
    both = pruned_spec(spec, uniform, r)
    bottleneck = pruned_spec(spec, uniform, 0.5, kinds=("bottleneck",))
    log(f"DenseNet121: keep ratio {r:.3f} for ≤ 50 % of the backbone")
    x_cal = (np.random.default_rng(0).random((32, 1, 224, 224), dtype=np.float32) * 2 - 1) * 1024
    g16 = spec.model_copy(update={"growth_rate": 16})
    variants = {
        "original": {"model": parent, "spec": spec, "state": parent.state_dict()},
        "bottleneck only r=0.5": {"model": calibrated(bottleneck), "spec": bottleneck},
        f"pruned r={r:.2f}": {"model": calibrated(both), "spec": both},
        "growth rate 16": {"model": calibrated(g16), "spec": g16},
        "float16": {"model": to_bytes(float16_spec(spec), parent.state_dict())[1].model(),
                    "spec": float16_spec(spec), "state": parent.state_dict()},
    }
    for v in variants.values():
        v.setdefault("state", v["model"].state_dict())
    if args.quick:  # the acceptance pair only: pruned vs original, and what the paper's pruning bought
        variants = {k: v for k, v in variants.items() if k in ("original", "bottleneck only r=0.5")
                    or k.startswith("pruned")}
        return _rows("densenet121-224", variants, spec, None, None, None, args, batches=(1, 8))
    t0 = time.perf_counter()
    f32 = export_onnx(parent)
    q = quantize_int8(parent, x_cal)
    log(f"DenseNet121: ONNX export + int8 quantization in {time.perf_counter() - t0:.0f}s")
    variants["float32 (ORT)"] = {"session": ort_session(f32, args.threads), "bytes": f32}
    variants["int8 (ORT)"] = {"session": ort_session(q, args.threads), "bytes": q}
    return _rows("densenet121-224", variants, spec, None, None, None, args)


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="latency repeats per variant and batch")
    p.add_argument("--no-dn121", action="store_true", help="skip DenseNet121")
    p.add_argument("--no-compact", action="store_true", help="skip the compact model")
    p.add_argument("--compact-weights", default=None,
                   help="trained compact weights (.safetensors, e.g. a demo home's v1 blob) instead of training one")
    p.add_argument("--ratios", default=None, help="keep ratios to prune the compact model to (comma-separated)")
    p.add_argument("--finetune-ratios", default=None,
                   help="the keep ratios that are also fine-tuned after reconstruction (default: all; 'none')")
    p.add_argument("--finetune-epochs", type=int, default=None, help="distillation epochs after reconstruction")
    p.add_argument("--finetune-images", type=int, default=8000, help="training images of the fine-tune")
    p.add_argument("--student-epochs", type=int, default=None, help="epochs of the distilled student (0: none)")
    args = p.parse_args()
    args.ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else (
        [0.6] if args.quick else [0.9, 0.75, 0.6, 0.5, 0.4])
    args.finetune_ratios = (args.ratios if args.finetune_ratios is None else [] if args.finetune_ratios == "none"
                            else [float(r) for r in args.finetune_ratios.split(",")])
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if args.quick else 5)
    args.student_epochs = args.student_epochs if args.student_epochs is not None else (0 if args.quick else 5)
    args.threads = args.threads or torch.get_num_threads()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.threads > 1 and load > cores:
        print(f"warning: load average {load:.1f} on {cores} cores: with {args.threads} threads the timings measure "
              "the scheduler (every operator waits for a descheduled thread); consider --threads 1",
              file=sys.stderr)
    args.repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = sys.stderr if args.json else sys.stdout  # progress never mixes with the JSON object
    log = lambda m: print(f"[{time.perf_counter() - t0:6.0f}s] {m}", file=out, flush=True)  # noqa: E731
    rows, figures = [], {}
    if not args.no_compact:
        got, figures = compact_part(args, log)
        rows += got
    if not args.no_dn121:
        rows += dn121_part(args, log)
    cpu = {r["model"]: r.pop("cpu") for r in rows if "cpu" in r}  # where and how busy, per model's timing
    figures |= {"cpu": cpu, "threads": args.threads, "repeats": args.repeats,
                "seconds": round(time.perf_counter() - t0)}
    if not args.json:  # the table stays readable; the JSON keeps the notes in their rows
        figures["notes"] = {f"{r['model']} {r['variant']}": r.pop("notes") for r in rows if "notes" in r}
    _common.output("footprint treatments, side by side", rows, figures, args.json)


if __name__ == "__main__":
    main()
