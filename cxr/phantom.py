"""The phantom: deterministic synthetic chest radiographs with real NIH labels.

Why: nothing can be downloaded here or behind a hospital firewall, yet the
product must show real-looking errors end to end. Each phantom image takes its
labels, patient, age, sex and view (PA/AP) from a real row of NIH
ChestX-ray14's metadata (shipped in the torchxrayvision wheel), so prevalence
and co-occurrence are NIH's own. Patients are partitioned into sites (hospitals)
and, within a site, into splits — no patient appears in two splits or sites.
Sites differ as hospitals do (see `phantom_render.SITES`): `site-b` is
AP-heavy, and AP portable films magnify the heart, so a model trained at
`site-a` sees false Cardiomegaly there by itself.

Labels are text-mined at NIH (> 90 % accurate): here a share of positive
labels carry no visible sign, and mild signs are subtle. Output follows
torchxrayvision's conventions: one channel, values in [-1024, 1024], an
18-wide label vector with NaN where the label is unknown.

An image depends only on (seed, site, NIH row): asking for more images extends
a data set without changing the ones already drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from cxr.errors import InvalidInput
from cxr.nih import NIHMetadata, load_nih_metadata
from cxr.phantom_render import PATHOLOGY_ORDER, SITES, Anatomy, SiteProfile, detector, draw_anatomy
from cxr.phantom_signs import adjust_anatomy, draw_signs
from cxr.spec import NIH_PATHOLOGIES, XRV_PATHOLOGIES

GENERATOR_VERSION = "phantom-1"
SPLITS = ("train", "calibration", "evaluation", "feedback")
Split = Literal["train", "calibration", "evaluation", "feedback"]
#: share of patients per site, and per split within a site
_SITE_SHARE = {"site-a": 0.5, "site-b": 0.35, "site-c": 0.15}
_SPLIT_SHARE = {"train": 0.55, "calibration": 0.15, "evaluation": 0.15, "feedback": 0.15}
#: Sites that film another site's patients (its catchment) on other equipment: name → (whose patients, look).
#: They are not in `phantom_render.SITES`, whose sites never share a patient. `site-d` reads site-c's
#: district catchment on a new detector exported through a badly set look-up table — gamma 2.5 on the
#: contrast curve, which crushes the lung fields into the dark end (noise and blur as at site-a). Its
#: patients and views are site-c's (a third AP), so its shift is input-level only: the report that a
#: head-level treatment cannot fix and re-training the first dense block can
#: (`tests/e2e/test_early_block.py`). `site-e` reads the same catchment through a look-up table set the
#: other way — gamma 0.4, which washes the films out (lungs, heart and soft tissue pressed into the bright
#: end): the shift that breaks the demo's 64-px compact model, which the gamma-2.5 curve of site-d does
#: not (`decide demo`'s last chapter). Sites c, d and e share patients: never pool them as one population.
SHARED_CATCHMENT: dict[str, tuple[str, SiteProfile]] = {
    "site-d": ("site-c", SiteProfile("site-d", 0.35, 2.5, 1.0, 0.0, 0.020, 0.0, 0)),
    "site-e": ("site-c", SiteProfile("site-e", 0.35, 0.4, 1.0, 0.0, 0.020, 0.0, 0)),
}


def site_profile(site: str) -> SiteProfile:
    """How `site`'s films look (`phantom_render.SITES`, else `SHARED_CATCHMENT`)."""
    return SITES[site] if site in SITES else SHARED_CATCHMENT[site][1]


def _site_index(site: str) -> int:
    """The site's place in the random streams (the sites of `SITES` first, so their films never change)."""
    return [*SITES, *SHARED_CATCHMENT].index(site)


#: pathologies whose lesion boxes come from NIH's BBox_List
BOXED = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")

assert PATHOLOGY_ORDER == NIH_PATHOLOGIES


@dataclass(frozen=True)
class PhantomConfig:
    site: str = "site-a"
    split: Split = "train"
    n: int = 1000
    resolution: int = 64
    seed: int = 0
    #: share of positive labels whose sign is absent (text-mined label noise)
    missing_sign_rate: float = 0.10

    def __post_init__(self) -> None:
        if self.site not in SITES and self.site not in SHARED_CATCHMENT:
            raise InvalidInput(f"unknown site {self.site!r}; choose one of {sorted([*SITES, *SHARED_CATCHMENT])}",
                               field="site")
        if self.split not in SPLITS:
            raise InvalidInput(f"unknown split {self.split!r}; choose one of {list(SPLITS)}", field="split")
        if not 1 <= self.n <= 200_000:
            raise InvalidInput("must be between 1 and 200000", field="n")
        if not 16 <= self.resolution <= 1024:
            raise InvalidInput("must be between 16 and 1024", field="resolution")
        if not 0.0 <= self.missing_sign_rate < 1.0:
            raise InvalidInput("must be in [0, 1)", field="missing_sign_rate")

    def key(self) -> str:
        """The cache key of these films: generator, config, and the site's look when it was revised."""
        rev = site_profile(self.site).revision
        text = json.dumps({"generator": GENERATOR_VERSION, **asdict(self), **({"look": rev} if rev > 1 else {})},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PhantomData:
    config: PhantomConfig
    images: np.ndarray  # (N, R, R) uint8
    labels: np.ndarray  # (N, 18) float32, NaN for the 4 non-NIH outputs
    image_ids: list[str]
    patient_ids: list[str]
    views: list[str]
    ages: list[int]
    sexes: list[str]
    #: which signs were actually drawn (N, 14) — ground truth beyond the noisy labels
    signs: np.ndarray


def _unit_hash(*parts: object) -> float:
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def patient_assignment(meta: NIHMetadata, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Site and split of every NIH row, decided per patient (hash of patient id)."""
    pids = np.unique(meta.patient_id)
    sites, splits = list(_SITE_SHARE), list(_SPLIT_SHARE)
    site_edges = np.cumsum([_SITE_SHARE[s] for s in sites])
    split_edges = np.cumsum([_SPLIT_SHARE[s] for s in splits])
    site_of = np.empty(pids.max() + 1, dtype=np.int8)
    split_of = np.empty(pids.max() + 1, dtype=np.int8)
    for pid in pids:
        site_of[pid] = min(np.searchsorted(site_edges, _unit_hash(seed, "site", pid), side="right"), len(sites) - 1)
        split_of[pid] = min(np.searchsorted(split_edges, _unit_hash(seed, "split", pid), side="right"), len(splits) - 1)
    return site_of[meta.patient_id], split_of[meta.patient_id]


_ASSIGN_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def select_rows(meta: NIHMetadata, cfg: PhantomConfig) -> np.ndarray:
    """NIH row indices for this site/split: the site's AP share, prefix-stable in n."""
    if cfg.seed not in _ASSIGN_CACHE:
        _ASSIGN_CACHE[cfg.seed] = patient_assignment(meta, cfg.seed)
    site_idx, split_idx = _ASSIGN_CACHE[cfg.seed]
    patients_of = SHARED_CATCHMENT[cfg.site][0] if cfg.site in SHARED_CATCHMENT else cfg.site
    pool = np.flatnonzero((site_idx == list(_SITE_SHARE).index(patients_of)) & (split_idx == SPLITS.index(cfg.split)))
    rng = np.random.default_rng([cfg.seed, _site_index(cfg.site), SPLITS.index(cfg.split), 7])
    ap, pa = rng.permutation(pool[meta.view_ap[pool]]), rng.permutation(pool[~meta.view_ap[pool]])
    n_ap = round(cfg.n * site_profile(cfg.site).ap_fraction)
    n_pa = cfg.n - n_ap
    if n_ap > len(ap) or n_pa > len(pa):
        raise InvalidInput(
            f"{cfg.site}/{cfg.split} has {len(ap)} AP and {len(pa)} PA films; {n_ap} AP + {n_pa} PA requested",
            field="n",
        )
    rows = np.concatenate([ap[:n_ap], pa[:n_pa]])
    # Interleave deterministically so that any prefix keeps the site's AP share.
    order = np.argsort(np.concatenate([(np.arange(n_ap) + 0.5) / max(n_ap, 1), (np.arange(n_pa) + 0.5) / max(n_pa, 1)]))
    return rows[order]


def render_row(meta: NIHMetadata, row: int, cfg: PhantomConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one NIH row as a phantom film: (uint8 image, 14 labels, 14 drawn signs)."""
    site = site_profile(cfg.site)
    rng = np.random.default_rng([cfg.seed, int(row), _site_index(cfg.site), 11])
    labels = meta.labels[row].astype(np.float32)
    male, age, ap = bool(meta.male[row]), int(meta.age[row]), bool(meta.view_ap[row])
    size = rng.normal(1.0, 0.035) + (0.03 if male else -0.02)
    a = Anatomy(
        cx=0.5 + rng.normal(0, 0.012),
        top=0.14 + rng.normal(0, 0.012),
        half_width=0.36 * size,
        dome_r=0.70 + rng.normal(0, 0.02),
        dome_l=0.72 + rng.normal(0, 0.02),
        ctr=float(np.clip(rng.normal(0.43 + 0.0004 * (age - 50), 0.03), 0.33, 0.49)),
        heart_cy=0.0,
        mediastinum=0.065 * size,
        ap=ap,
        lung_scale=1.0,
    )
    sev: dict[str, float] = {}
    signs = np.zeros(len(NIH_PATHOLOGIES), dtype=np.uint8)
    for j, p in enumerate(NIH_PATHOLOGIES):
        if labels[j] > 0 and rng.random() >= cfg.missing_sign_rate:
            sev[p] = float(rng.uniform(0.1, 1.0))
            signs[j] = 1
    adjust_anatomy(a, sev, rng)
    if ap:  # portable films: heart magnified, lower inspiration, wider mediastinum
        a.ctr *= rng.normal(1.13, 0.025)
        a.dome_r -= 0.03
        a.dome_l -= 0.03
        a.mediastinum *= 1.12
    a.heart_cy = min(a.dome_r, a.dome_l) - 0.55 * a.ctr * a.half_width
    own = {lab: box for lab, box in meta.boxes_by_image.get(str(meta.image_index[row]), [])}
    boxes = {}
    for p in sev:
        if p in BOXED:
            pool = meta.boxes.get(p)
            boxes[p] = own.get(p) if p in own else (pool[rng.integers(len(pool))] if pool is not None else None)
    att, lung = draw_anatomy(rng, cfg.resolution, a, male, age)
    draw_signs(att, lung, a, sev, boxes, rng)
    return detector(att, site, rng, ap), labels, signs


def _render_chunk(args: tuple[PhantomConfig, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg, rows = args
    meta = load_nih_metadata()
    imgs = np.empty((len(rows), cfg.resolution, cfg.resolution), dtype=np.uint8)
    labs = np.empty((len(rows), len(NIH_PATHOLOGIES)), dtype=np.float32)
    signs = np.empty((len(rows), len(NIH_PATHOLOGIES)), dtype=np.uint8)
    for i, r in enumerate(rows):
        imgs[i], labs[i], signs[i] = render_row(meta, int(r), cfg)
    return imgs, labs, signs


def generate(cfg: PhantomConfig, workers: int | None = None) -> PhantomData:
    """Render the data set for `cfg` (in parallel over `workers` processes)."""
    meta = load_nih_metadata()
    rows = select_rows(meta, cfg)
    workers = workers or min(os.cpu_count() or 1, 4)
    chunks = [c for c in np.array_split(rows, max(1, workers * 4)) if len(c)]
    if workers > 1 and len(rows) >= 256:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            parts = list(ex.map(_render_chunk, [(cfg, c) for c in chunks]))
    else:
        parts = [_render_chunk((cfg, c)) for c in chunks]
    images = np.concatenate([p[0] for p in parts])
    nih_labels = np.concatenate([p[1] for p in parts])
    signs = np.concatenate([p[2] for p in parts])
    labels = np.full((len(rows), len(XRV_PATHOLOGIES)), np.nan, dtype=np.float32)
    labels[:, : len(NIH_PATHOLOGIES)] = nih_labels
    return PhantomData(
        config=cfg,
        images=images,
        labels=labels,
        image_ids=[f"{cfg.site}/{meta.image_index[r].removesuffix('.png')}" for r in rows],
        patient_ids=[f"{cfg.site}/{meta.patient_id[r]}" for r in rows],
        views=["AP" if meta.view_ap[r] else "PA" for r in rows],
        ages=[int(meta.age[r]) for r in rows],
        sexes=["M" if meta.male[r] else "F" for r in rows],
        signs=signs,
    )


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, R, R) -> float32 (N, 1, R, R) in [-1024, 1024] (torchxrayvision's normalize)."""
    return ((images_u8.astype(np.float32) / 255.0) * 2.0 - 1.0)[:, None] * 1024.0
