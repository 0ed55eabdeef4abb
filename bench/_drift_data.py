"""Films, model and cached outputs for bench/drift.py: which phantom films each experiment reads, and how.

What a window holds is only what the label-free monitor reads of a study — its output scores, its pooled
features and a summary of its model-ready image (`cxr.ood.PixelStats`) — plus the labels that "arrive later".
These are computed once per (weights, phantom config) and cached under `--cache` (`drift-bench/*.npz`), so a
rerun renders and scores nothing.

**The site-a pool of unshifted, unlabelled films** (false alarms, site-a estimates) must hold no film the
version was trained or calibrated on and no film twice. It is, in order, until it is large enough:
site-a evaluation and feedback of phantom seed 0 (the splits `decide demo` registers; every patient in
them is outside the train and calibration splits), then site-a films of phantom seeds 1, 2, … (every split:
the seed re-draws which NIH patients are site-a's and every film's anatomy, while the site's look — view
mix, contrast curve, noise, blur — is the same), dropping every film of a patient whom seed 0 put in
site-a's train or calibration split and every NIH row already in the pool. A phantom seed thus renders
new films of the same site with the same generator: the films are i.i.d. given the site, as new studies at
a site are.

Other sites (site-b, site-e: films the site-a version never saw) are read from phantom seed 0, split after
split (evaluation, feedback, calibration, train) until there are enough.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr.data import phantom_dataset
from cxr.errors import InvalidInput
from cxr.features import head_logits, sigmoid
from cxr.nih import load_nih_metadata
from cxr.ood import PixelStats, pixel_stats
from cxr.phantom import SPLITS, PhantomConfig, patient_assignment, select_rows
from cxr.phantom_render import SITES

CACHE_VERSION = "drift-bench-1"
OTHER_SPLITS = ("evaluation", "feedback", "calibration", "train")


@dataclass(frozen=True)
class Films:
    """Per film: output probabilities (n × P), pooled features (n × F), labels aligned to the outputs (NaN
    unknown), the image's pixel summary (spread, share at the range ends, intensity histogram), view and ids."""

    probs: np.ndarray
    feats: np.ndarray
    labels: np.ndarray
    spread: np.ndarray
    extreme: np.ndarray
    hist: np.ndarray
    views: np.ndarray
    image_ids: np.ndarray
    patient_ids: np.ndarray
    parts: tuple[str, ...] = ()  # where the films came from (site/split/seed: count), in row order
    sizes: tuple[int, ...] = ()  # rows of each part

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def take(self, idx) -> Films:
        idx = np.asarray(idx)
        return Films(*(getattr(self, k)[idx] for k in _ARRAYS))

    def stats(self, idx) -> list[PixelStats]:
        """The `PixelStats` that `cxr.ood.assess_studies` reads, for rows `idx`."""
        return [PixelStats(float(self.spread[i]), float(self.extreme[i]), self.hist[i]) for i in np.asarray(idx)]


_ARRAYS = ("probs", "feats", "labels", "spread", "extreme", "hist", "views", "image_ids", "patient_ids")


def concat(parts: list[Films]) -> Films:
    return Films(*(np.concatenate([getattr(p, k) for p in parts]) for k in _ARRAYS),
                 parts=tuple(x for p in parts for x in p.parts), sizes=tuple(x for p in parts for x in p.sizes))


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Model:
    module: torch.nn.Module
    spec: object
    digest: str  # weights_sha256: keys the cache
    source: str
    thresholds: dict[str, float | None] | None  # the registered version's, when read from a home


def _home_version(home: Path, version: int | None, model: str) -> tuple[str, dict, str]:
    """(weights digest, thresholds, ref) of a registered version, read straight from the home's SQLite file
    (read-only, no migration check: a demo home made by an older schema still reads). Default: the model's
    root version — the baseline trained at site-a and calibrated on its calibration split."""
    db = home / "registry.db"
    if not db.is_file():
        raise InvalidInput(f"no registry.db in {home}", field="home")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT v.version, v.parent_id, v.weights_digest, v.thresholds FROM model_versions v "
                           "JOIN models m ON m.id = v.model_id WHERE m.name = ? ORDER BY v.version",
                           (model,)).fetchall()
    finally:
        con.close()
    pick = [r for r in rows if (r[0] == version if version is not None else r[1] is None)]
    if not pick:
        raise InvalidInput(f"{model}:{version if version is not None else 'root'} not in {db}", field="version")
    v, _, digest, thresholds = pick[0]
    return digest, json.loads(thresholds), f"{model}:{v}"


def load_model(args, n_train: int, epochs: int, cache: Path | None) -> Model:
    """The site-a version: a home's registered version (--home), a weights blob (--weights), or a compact
    DenseNet trained here on site-a phantoms the way `decide demo` trains its baseline (seeded; kept in the cache)."""
    from cxr.weights import from_bytes, to_bytes

    if args.home:
        digest, thresholds, ref = _home_version(Path(args.home), args.version, args.model)
        data = (Path(args.home) / "blobs" / digest[:2] / digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise InvalidInput(f"blob {digest[:12]} does not match its digest", field="home")
        w = from_bytes(data, source=ref)
        return Model(w.model(), w.spec, w.weights_sha256, f"{ref} of {args.home}", thresholds)
    if args.weights:
        w = from_bytes(Path(args.weights).read_bytes(), source=args.weights)
        return Model(w.model(), w.spec, w.weights_sha256, f"weights {Path(args.weights).name[:12]}", None)
    from cxr.spec import preset
    from cxr.train import TrainConfig, train

    spec = preset("compact")
    key = hashlib.sha256(json.dumps([CACHE_VERSION, spec.to_json(), n_train, epochs, args.seed]).encode()).hexdigest()
    path = cache / "drift-bench" / f"model-{key[:16]}.safetensors" if cache else None
    source = f"compact trained here ({n_train} site-a films, {epochs} epochs, seed {args.seed})"
    if path is not None and path.is_file():
        w = from_bytes(path.read_bytes(), source=str(path))
        return Model(w.model(), w.spec, w.weights_sha256, source + ", cached", None)
    train_set = phantom_dataset(PhantomConfig(site="site-a", split="train", n=n_train, resolution=spec.resolution),
                                cache_dir=cache)
    model = train(spec, train_set, TrainConfig(epochs=epochs, seed=args.seed, threads=args.threads)).model
    data, w = to_bytes(spec, model.state_dict())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return Model(w.model(), w.spec, w.weights_sha256, source, None)


def score(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, pooled features) of model-ready images (N, 1, R, R), as `cxr.features` computes them."""
    probs, feats = [], []
    model.eval()
    w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    for i in range(0, len(x), 256):
        with torch.inference_mode():
            f = model.pooled(torch.from_numpy(np.ascontiguousarray(x[i:i + 256], dtype=np.float32))).numpy()
        probs.append(sigmoid(head_logits(f, w, b)))
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


# ---------------------------------------------------------------- films, cached


def films(model: Model, cfg: PhantomConfig, cache: Path | None, phantom_cache: Path | None = None) -> Films:
    """Scores, features and pixel summaries of the phantom films of `cfg` (cached by weights and config)."""
    key = hashlib.sha256(f"{CACHE_VERSION}|{model.digest}|{cfg.key()}".encode()).hexdigest()
    path = cache / "drift-bench" / f"{key[:24]}.npz" if cache else None
    part = (f"{cfg.site}/{cfg.split}/seed {cfg.seed}: {cfg.n}",)
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Films(*(z[k] for k in _ARRAYS), parts=part, sizes=(cfg.n,))
    ds = phantom_dataset(cfg, cache_dir=phantom_cache)
    names = list(model.spec.pathologies)
    chunks = []
    for lo in range(0, len(ds), 1024):
        x = ds.images(np.arange(lo, min(lo + 1024, len(ds))))
        p, f = score(model.module, x)
        st = [pixel_stats(im[0]) for im in x]
        chunks.append((p, f, np.array([s.spread for s in st]), np.array([s.extreme_share for s in st]),
                       np.stack([s.histogram for s in st])))
    out = Films(*(np.concatenate([c[i] for c in chunks]) for i in range(2)), ds.aligned_labels(names),
                *(np.concatenate([c[i] for c in chunks]) for i in range(2, 5)), np.array(ds.views),
                np.array(ds.image_ids), np.array(ds.patient_ids), parts=part, sizes=(cfg.n,))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: getattr(out, k) for k in _ARRAYS})
        tmp.replace(path)
    return out


def capacity(site: str, split: str, seed: int, res: int) -> int:
    """The most films `PhantomConfig(site, split, seed)` can render while keeping the site's AP share."""
    meta = load_nih_metadata()
    lo, hi = 1, 200_000
    while lo < hi:  # select_rows refuses an n the split cannot hold; AP and PA counts grow with n
        mid = (lo + hi + 1) // 2
        try:
            select_rows(meta, PhantomConfig(site=site, split=split, n=mid, resolution=res, seed=seed))
            lo = mid
        except InvalidInput:
            hi = mid - 1
    return lo


def _seed0_fitted_patients() -> set[str]:
    """Patient ids ("site-a/<NIH patient>") that phantom seed 0 puts in site-a's train or calibration split."""
    meta = load_nih_metadata()
    site_idx, split_idx = patient_assignment(meta, 0)
    assert next(iter(SITES)) == "site-a"  # patient_assignment numbers the sites of SITES in order
    used = (site_idx == 0) & np.isin(split_idx, [SPLITS.index("train"), SPLITS.index("calibration")])
    return {f"site-a/{p}" for p in np.unique(meta.patient_id[used])}


def site_a_pool(model: Model, need: int, res: int, cache: Path | None) -> Films:
    """At least `need` site-a films the version never saw, each once (module docstring), in a fixed order."""
    fitted, seen, parts, total = _seed0_fitted_patients(), set(), [], 0
    for seed in range(0, 20):
        for split in ("evaluation", "feedback") if seed == 0 else OTHER_SPLITS:
            if total >= need:
                return concat(parts)
            cap = capacity("site-a", split, seed, res)
            # seed 0's splits lose no film; about 40 % of a later seed's are dropped (fitted patients, rows seen)
            n = min(cap, need - total) if seed == 0 else min(cap, int((need - total) * 1.7) + 100)
            f = films(model, PhantomConfig(site="site-a", split=split, n=n, resolution=res, seed=seed), cache)
            keep = np.array([p not in fitted and i not in seen for p, i in zip(f.patient_ids, f.image_ids,
                                                                               strict=True)])
            f = f.take(np.flatnonzero(keep))
            parts.append(Films(*(getattr(f, k) for k in _ARRAYS),
                               parts=(f"site-a/{split}/seed {seed}: {len(f)} of {n} kept",), sizes=(len(f),)))
            seen.update(f.image_ids.tolist())
            total += len(f)
    return concat(parts)


def site_pool(model: Model, site: str, need: int, res: int, cache: Path | None) -> Films:
    """At least `need` films of another site (phantom seed 0), split after split; all of them if fewer exist."""
    parts, total = [], 0
    for split in OTHER_SPLITS:
        if total >= need:
            break
        n = min(capacity(site, split, 0, res), need - total)
        parts.append(films(model, PhantomConfig(site=site, split=split, n=n, resolution=res, seed=0), cache))
        total += n
    return concat(parts)
