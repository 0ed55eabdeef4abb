"""Monitoring without labels on the phantom: false alarms, detection, estimates, OOD and timing, Evidently beside.

    python bench/drift.py [--quick] [--json] [--home DIR [--version N] | --weights BLOB] [--cache DIR]
                          [--evidently-python PY] [--threads N] [--seed N]

The site-a version — a home's registered baseline (--home, e.g. a `decide demo` home: its root version,
trained at site-a, with its stored thresholds), a weights blob (--weights), or a compact DenseNet trained
here on site-a phantoms as `decide demo` trains it — is judged through the product's own functions:
its reference is `cxr.reference.build_reference` on the site-a calibration split (features, scores,
labels, model-ready images, views), as `decision.reference` builds it; its operating points are the
version's thresholds, else `decision.baseline.choose_thresholds` on that split with the bundled policy
(what `register_baseline` stores); every window goes through `cxr.drift.window_drift`,
`cxr.ood.assess_studies` and `cxr.estimate.estimate_window` with `[label_free]` of policies/default.toml,
called as `decision.unlabelled.assess_unlabelled` calls them. Windows are drawn by bench/_drift_data.py
(its docstring says which films): windows of one size never share a film, except where a figure says
"resampled".

1. False alarms: unshifted site-a windows of 50 and 200 studies, one fixed reference (the product's, as
   deployed): the share flagged, its 95 % Wilson interval and a one-sided binomial test of "rate <= alpha".
   Where the Wilson upper bound passes 8 % at the first windows, more windows are run (--more-windows,
   disjoint while the pool lasts, then random subsets of it: "resampled") and both are reported, with the
   disjoint and resampled parts compared (Fisher's exact test).
2. Evidently (bench/_evidently_runner.py, in a separate venv given by --evidently-python): its default
   DataDriftPreset on the same 18 scores and its default embedding drift on the same pooled features, on
   the same disjoint windows (false alarms) and the first 25 detection windows of 50 and 200 studies.
3. Detection: the share of site-b windows (AP portable films, another contrast curve, noise and blur) and
   site-e windows (a washed-out look-up table) flagged at 25, 50, 100 and 200 studies.
4. Estimation: windows of 200 and 1,000 studies at site-a, site-b and site-e, with their phantom labels as
   the labels that arrive later. Per (pathology, window) with a valid estimate: are the estimated recall and
   FPR inside the realised value's exact (Clopper-Pearson) 95 % interval (computed here with scipy, not
   with the product's own check); how many pairs were declared not valid, and why. The product's own
   verdict (`check_against_labels`, Holm over the window's pathologies, as `decision.unlabelled` runs it)
   on the same labels, and in a concept-shift scenario: readers who call Effusion on 15 % of the films the
   site-a labels call clear (each negative Effusion label turned positive with probability 0.15, seeded per
   window); the films, and so every label-free figure, are unchanged.
5. OOD: the share of studies `assess_studies` flags at the policy's rate, per site, in batches of 200.
6. Timing of one window of 200 studies: the pixel summaries, the OOD checks, the drift tests and the
   estimates (the whole label-free assessment), and separately the model's inference on the 200 films.

--quick runs a few windows of each kind (its figures are smoke, not measurements).
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import _common
import numpy as np
import torch
from _drift_data import Films, capacity, load_model, score, site_a_pool, site_pool
from _drift_peers import coverage, evidently, nannyml, rate
from _drift_table import table
from scipy.stats import binomtest, fisher_exact

from cxr.data import phantom_dataset
from cxr.drift import holm, window_drift
from cxr.estimate import EstimateLimits, check_against_labels, estimate_window
from cxr.ood import assess_studies, pixel_stats
from cxr.phantom import PhantomConfig
from cxr.reference import build_reference
from decision.baseline import choose_thresholds
from policies import load_policy

EVIDENTLY_DETECTION = 25  # detection windows per site and size handed to Evidently (~0.4 s each there)
SHIFTED_FINDING, FLIPS = "Effusion", (0.15, 0.30)  # the concept-shift scenario (module docstring, 4)


def sizes(quick: bool) -> dict:
    if quick:
        return {"n_train": 2000, "epochs": 2, "n_cal": 1000, "null": (50, 200), "null_windows": 20,
                "more_windows": 0, "det": (25, 50, 100, 200), "det_windows": 6, "est": {200: (5, 5)},
                "timing": 3, "ood_batch": 200}
    # est: {window size: (site-a windows, other sites' windows)}
    return {"n_train": 8000, "epochs": 5, "n_cal": 2000, "null": (50, 200), "null_windows": 200,
            "more_windows": 1000, "det": (25, 50, 100, 200), "det_windows": 50, "est": {200: (100, 50), 1000: (20, 10)},
            "timing": 20, "ood_batch": 200}


def windows(n_pool: int, n: int, count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """`count` windows of `n` rows: disjoint while the pool lasts, then uniform random subsets (resampled).
    Returns the windows and how many are disjoint."""
    order = rng.permutation(n_pool)
    disjoint = min(count, n_pool // n)
    out = [order[i * n:(i + 1) * n] for i in range(disjoint)]
    out += [rng.choice(n_pool, size=n, replace=False) for _ in range(count - disjoint)]
    return out, disjoint


class Monitor:
    """The product's label-free calls for one version, with the policy's `[label_free]` settings."""

    def __init__(self, ref, thresholds: dict, policy, seed: int) -> None:
        self.ref, self.policy, self.lf, self.seed = ref, policy, policy.label_free, seed
        self.names = list(ref.pathologies)
        self.cols = {n: float(t) for n, t in thresholds.items() if t is not None and n in ref.maps}
        self.limits = EstimateLimits(max_ood_share=self.lf.max_ood_share,
                                     max_unsupported_share=self.lf.max_unsupported_share,
                                     min_expected=self.lf.min_expected)
        smallest = getattr(ref.ood, "smallest_rate", None)  # as decision.unlabelled: never below what the split holds
        self.ood_rate = max(self.lf.ood_rate, smallest()) if smallest else self.lf.ood_rate

    def wseed(self, tag: str, i: int) -> int:
        return zlib.crc32(f"{self.seed}|{tag}|{i}".encode())

    def drift(self, f: Films, idx, tag: str, i: int):
        return window_drift(self.ref.drift, f.probs[idx], f.feats[idx], rng=np.random.default_rng(self.wseed(tag, i)),
                            alpha=self.lf.alpha, n_permutations=self.lf.permutations, max_window=self.lf.max_window)

    def ood(self, f: Films, idx):
        return assess_studies(self.ref.ood, f.feats[idx], images=f.stats(idx), probabilities=f.probs[idx],
                              rate=self.ood_rate)

    def estimates(self, probs: np.ndarray, flags, seed: int, limits: EstimateLimits | None = None):
        targets = {n: self.policy.slos.for_pathology(n) for n in self.cols}
        return estimate_window(self.ref.maps, {n: probs[:, self.names.index(n)] for n in self.cols}, self.cols,
                               ood=flags, targets=targets, limits=limits or self.limits, seed=seed)

    def check(self, name: str, probs: np.ndarray, labels: np.ndarray, seed: int):
        j = self.names.index(name)
        return check_against_labels(self.ref.maps[name], probs[:, j], labels[:, j], self.cols[name], pathology=name,
                                    limits=self.limits, alpha=self.lf.alpha, seed=seed)


# ---------------------------------------------------------------- 1 and 3: drift windows


def drift_runs(mon: Monitor, f: Films, n: int, count: int, tag: str, rng) -> tuple[list[dict], int, list]:
    wins, disjoint = windows(len(f), n, count, rng)
    out = []
    for i, idx in enumerate(wins):
        d = mon.drift(f, idx, f"{tag}/{n}", i)
        out.append({"shifted": d.shifted, "rejected": list(d.rejected), "worst": d.worst.name,
                    "worst_p_adjusted": d.worst.p_adjusted})
    return out, disjoint, wins


def summarise_null(runs: list[dict], disjoint: int, alpha: float) -> dict:
    flags = [r["shifted"] for r in runs]
    s = rate(flags)
    s["disjoint_windows"] = disjoint
    s["p_rate_above_alpha"] = round(float(binomtest(s["k"], s["n"], alpha, alternative="greater").pvalue), 4)
    fired = [t for r in runs for t in r["rejected"]]
    s["rejections"] = {"embedding": fired.count("embedding"), "outputs": len(fired) - fired.count("embedding")}
    if disjoint < len(runs):
        a, b = flags[:disjoint], flags[disjoint:]
        table = [[sum(a), len(a) - sum(a)], [sum(b), len(b) - sum(b)]]
        s["disjoint_part"], s["resampled_part"] = rate(a), rate(b)
        s["fisher_p_disjoint_vs_resampled"] = round(float(fisher_exact(table).pvalue), 4)
    return s


# ---------------------------------------------------------------- 4: estimates against realised values



def estimation(mon: Monitor, f: Films, wins: list[np.ndarray], tag: str) -> tuple[dict, list[dict]]:
    """Estimates on labelled windows against what their labels realise; (summary, one record per pair)."""
    forced = EstimateLimits(max_ood_share=1.0, max_unsupported_share=1.0, min_expected=mon.lf.min_expected)
    records, ood_shares = [], []
    contradicted = 0
    shifted = {q: [0, 0, 0] for q in FLIPS}  # windows checked, contradicted alone, contradicted after Holm
    for i, idx in enumerate(wins):
        seed = mon.wseed(tag, i)
        probs, labels = f.probs[idx], f.labels[idx]
        flags = [a.outside for a in mon.ood(f, idx)]
        ood_shares.append(float(np.mean(flags)))
        unchecked = {e.pathology: e for e in mon.estimates(probs, None, seed, limits=forced)}
        checks = {}
        for e in mon.estimates(probs, flags, seed):
            j = mon.names.index(e.pathology)
            y, called = labels[:, j], probs[:, j] >= e.threshold
            pos, neg = y == 1, y == 0
            u = unchecked[e.pathology]
            records.append({"pathology": e.pathology, "window": i, "valid": e.valid, "reason": e.reason or "",
                            "recall": e.recall, "fpr": e.fpr, "forced_recall": u.recall, "forced_fpr": u.fpr,
                            "counts": (int((called & pos).sum()), int(pos.sum()), int((called & neg).sum()),
                                       int(neg.sum()))})
            if e.valid and pos.any() and neg.any():
                checks[e.pathology] = mon.check(e.pathology, probs, labels, seed)
        # the product's verdict (decision.unlabelled.record_realised): Holm over the window's checked pathologies
        tested = [n for n, c in checks.items() if c.p_value is not None]
        if not tested:
            continue
        contradicted += bool((holm([checks[n].p_value for n in tested]) <= mon.lf.alpha).any())
        if SHIFTED_FINDING not in tested:
            continue
        jj = mon.names.index(SHIFTED_FINDING)
        draw = np.random.default_rng([mon.seed, 77, i]).random(len(idx))
        for q in FLIPS:  # concept shift: the same films, readers calling Effusion on a share q of the clear ones
            moved = labels.copy()
            moved[:, jj] = np.where((moved[:, jj] == 0) & (draw < q), 1.0, moved[:, jj])
            c = mon.check(SHIFTED_FINDING, probs, moved, seed)
            p = [c.p_value if n == SHIFTED_FINDING else checks[n].p_value for n in tested]
            shifted[q][0] += 1
            shifted[q][1] += c.contradicted
            shifted[q][2] += bool(holm(p)[tested.index(SHIFTED_FINDING)] <= mon.lf.alpha)
    valid = [r for r in records if r["valid"]]
    summary = {
        "windows": len(wins), "window_size": len(wins[0]) if wins else 0, "pairs": len(records),
        "valid_pairs": len(valid), "not_valid_pairs": len(records) - len(valid),
        "not_valid_reasons": {k: sum(w in r["reason"] for r in records if not r["valid"]) for k, w in
                              (("ood share", "out of distribution"), ("unsupported scores", "calibration support"),
                               ("too few expected", "expected"))},
        "ours (valid pairs)": coverage(valid, "recall", "fpr"),
        "ours without the validity rules (all pairs)": coverage(records, "forced_recall", "forced_fpr"),
        "windows_contradicted_clean_labels": f"{contradicted}/{len(wins)}",
        "concept_shift": {"finding": SHIFTED_FINDING, **{
            f"negatives called positive {q:.0%}": {"windows_checked": v[0], "contradicted_alone": v[1],
                                                   "contradicted_after_holm": v[2]} for q, v in shifted.items()}},
        "mean_ood_share": round(float(np.mean(ood_shares)), 4) if ood_shares else None,
    }
    return summary, records


# ---------------------------------------------------------------- 5 and 6


def ood_share(mon: Monitor, f: Films, batch: int) -> dict:
    flags, kinds = [], {}
    for lo in range(0, len(f), batch):
        for a in mon.ood(f, np.arange(lo, min(lo + batch, len(f)))):
            flags.append(a.outside)
            for k in set(a.flags):
                kinds[k] = kinds.get(k, 0) + 1
    return {**rate(flags), "by_check": kinds}


def timing(mon: Monitor, model, res: int, count: int, cache: Path | None) -> dict:
    n = 200
    cfg = PhantomConfig(site="site-a", split="evaluation", n=min(count * n, capacity("site-a", "evaluation", 0, res)),
                        resolution=res)
    ds = phantom_dataset(cfg, cache_dir=cache)
    parts = {"inference": [], "pixel summaries": [], "ood checks": [], "drift tests": [], "estimates": []}
    totals = []
    for i in range(min(count, len(ds) // n)):
        x = ds.images(np.arange(i * n, (i + 1) * n))
        t0 = time.perf_counter()
        probs, feats = score(model.module, x)
        t1 = time.perf_counter()
        stats = [pixel_stats(im[0]) for im in x]
        t2 = time.perf_counter()
        flags = [a.outside for a in assess_studies(mon.ref.ood, feats, images=stats, probabilities=probs,
                                                   rate=mon.ood_rate)]
        t3 = time.perf_counter()
        window_drift(mon.ref.drift, probs, feats, rng=np.random.default_rng(i), alpha=mon.lf.alpha,
                     n_permutations=mon.lf.permutations, max_window=mon.lf.max_window)
        t4 = time.perf_counter()
        mon.estimates(probs, flags, i)
        t5 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[k].append(v)
        totals.append(t5 - t1)
    med = {k: round(1000 * float(np.median(v)), 1) for k, v in parts.items()}
    return {"window": n, "windows": len(totals), "median_ms": med,
            "label_free_assessment_ms": {"median": round(1000 * float(np.median(totals)), 1),
                                         "max": round(1000 * float(np.max(totals)), 1)},
            "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------- main


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--home", help="a decide home (e.g. a demo's): its model's root version, or --version")
    p.add_argument("--version", type=int, help="with --home: this version number instead of the root")
    p.add_argument("--model", default="cxr", help="with --home: the model name (default cxr)")
    p.add_argument("--weights", help="a version's safetensors weights blob")
    p.add_argument("--cache", help="folder for cached films, outputs and a trained model (read, written when missing)")
    p.add_argument("--evidently-python", help="python of a venv with evidently installed (never this project's venv)")
    p.add_argument("--nannyml-python", help="python of a venv with nannyml (CBPE beside our estimates)")
    p.add_argument("--more-windows", type=int, help="null windows when 8 %% is not met at the first ones "
                                                    "(default 1000; 0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = sizes(args.quick)
    if args.more_windows is not None:
        cfg["more_windows"] = args.more_windows
    cache = Path(args.cache) if args.cache else None
    t_all, stages = time.perf_counter(), {}

    def stage(name: str, t: float) -> None:
        stages[name] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    policy = load_policy()
    model = load_model(args, cfg["n_train"], cfg["epochs"], cache)
    res, names = model.spec.resolution, list(model.spec.pathologies)
    cal_ds = phantom_dataset(PhantomConfig(site="site-a", split="calibration", n=cfg["n_cal"], resolution=res),
                             cache_dir=cache)
    cal_x = cal_ds.images(np.arange(len(cal_ds)))
    cal_probs, cal_feats = score(model.module, cal_x)
    cal_labels = cal_ds.aligned_labels(names)
    ref = build_reference(names, cal_feats, cal_probs, cal_labels, images=cal_x, views=cal_ds.views, seed=0)
    del cal_x
    chosen, _ = choose_thresholds(cal_labels, cal_probs, names, policy)
    thresholds = model.thresholds or chosen
    same = ({k: abs((model.thresholds.get(k) or 0) - (chosen[k] or 0)) for k in chosen} if model.thresholds else None)
    mon = Monitor(ref, thresholds, policy, args.seed)
    stage("model and reference", t)

    t = time.perf_counter()
    need_a = cfg["null_windows"] * max(cfg["null"])
    pools = {"site-a": site_a_pool(model, need_a, res, cache)}
    for site in ("site-b", "site-e"):
        pools[site] = site_pool(model, site, cfg["det_windows"] * max(cfg["det"]), res, cache)
    stage("films", t)

    # 1. false alarms
    t = time.perf_counter()
    rng = np.random.default_rng([args.seed, 1])
    null, null_wins = {}, {}
    for n in cfg["null"]:
        runs, disjoint, wins = drift_runs(mon, pools["site-a"], n, cfg["null_windows"], "null", rng)
        first = summarise_null(runs, disjoint, mon.lf.alpha)
        null[n], null_wins[n] = {"first": first}, wins
        if first["wilson"][1] > 0.08 and cfg["more_windows"] > cfg["null_windows"]:
            more, d_more, _ = drift_runs(mon, pools["site-a"], n, cfg["more_windows"], "null-more", rng)
            null[n]["more"] = summarise_null(more, d_more, mon.lf.alpha)
    stage("false alarms", t)

    # 3. detection
    t = time.perf_counter()
    detection, det_wins = {}, {}
    for site in ("site-b", "site-e"):
        for n in cfg["det"]:
            runs, _, wins = drift_runs(mon, pools[site], n, min(cfg["det_windows"], len(pools[site]) // n), site,
                                       np.random.default_rng([args.seed, 3, n]))
            s = rate([r["shifted"] for r in runs])
            s["embedding_rejected"] = sum("embedding" in r["rejected"] for r in runs)
            s["outputs_rejected"] = sum(any(x != "embedding" for x in r["rejected"]) for r in runs)
            detection[f"{site} n={n}"], det_wins[(site, n)] = s, wins
    stage("detection", t)

    # 2. Evidently on the same windows
    t = time.perf_counter()
    groups = {f"site-a/null-{n}": null_wins[n][:null[n]["first"]["disjoint_windows"]] for n in cfg["null"]}
    groups |= {f"{site}/det-{n}": det_wins[(site, n)][:EVIDENTLY_DETECTION] for site in ("site-b", "site-e")
               for n in (50, 200) if (site, n) in det_wins}
    peer = evidently(args.evidently_python, ref, cal_feats, groups, pools, not args.quick)
    stage("evidently", t)

    # 4. estimation
    t = time.perf_counter()
    est, est_runs = {}, {}
    for n, (count_a, count_other) in cfg["est"].items():
        for site in ("site-a", "site-b", "site-e"):
            count = min(count_a if site == "site-a" else count_other, len(pools[site]) // n)
            wins, _ = windows(len(pools[site]), n, count, np.random.default_rng([args.seed, 4, n]))
            est[f"{site} n={n}"], records = estimation(mon, pools[site], wins, f"est/{site}/{n}")
            est_runs[f"{site} n={n}"] = (pools[site], wins, records)
    stage("estimation", t)
    t = time.perf_counter()
    cbpe = nannyml(args.nannyml_python, mon, cal_probs, cal_labels, est_runs)
    stage("nannyml", t)

    # 5. OOD shares
    t = time.perf_counter()
    a_eval = pools["site-a"].take(np.arange(pools["site-a"].sizes[0]))  # seed 0's site-a evaluation split
    ood = {"site-a evaluation": ood_share(mon, a_eval, cfg["ood_batch"]),
           "site-a unshifted pool": ood_share(mon, pools["site-a"], cfg["ood_batch"]),
           **{site: ood_share(mon, pools[site], cfg["ood_batch"]) for site in ("site-b", "site-e")}}
    stage("ood", t)

    # 6. timing
    t = time.perf_counter()
    timed = timing(mon, model, res, cfg["timing"], cache)
    stage("timing", t)

    figures = {
        "quick (smoke figures)": args.quick, "model": model.source, "features": int(cal_feats.shape[1]),
        "calibration": len(cal_ds), "reference": ref.summary(),
        "thresholds": {"source": "the version's stored thresholds" if model.thresholds else
                       "choose_thresholds on the calibration split (default policy)", "values": thresholds,
                       "max_abs_difference_to_choose_thresholds": max(same.values()) if same else None},
        "policy_label_free": policy.label_free.model_dump(), "ood_rate_used": mon.ood_rate,
        "pools": {k: {"films": len(v), "parts": list(v.parts)} for k, v in pools.items()},
        "false_alarms": {str(n): v for n, v in null.items()}, "evidently": peer, "detection": detection,
        "estimation": est, "nannyml_cbpe": cbpe, "ood_share": ood, "timing": timed, "seconds_by_stage": stages,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    shown = figures if args.json else {k: figures[k] for k in ("quick (smoke figures)", "model", "pools", "seconds")}
    shown |= {} if args.json else {"peers": {k: {x: v for x, v in figures[k].items() if x != "groups"}
                                             for k in ("evidently", "nannyml_cbpe")}}
    _common.output("monitoring without labels (phantom)", table(figures), shown, args.json)


if __name__ == "__main__":
    main()
