"""Is this study outside what the version was validated on? Per-study checks, before any finding is shown.

A phantom-trained model called Infiltration positive on an axial CT slice and on real NIH films
without a word of warning. Three kinds of check, each with a reason a person can read:

1. **Distance from the calibration split** (`ConformalMahalanobis`), on the pooled features and on
   the model-ready image's intensity histogram (`intensity_histogram`). The Mahalanobis distance
   d(x) = sqrt((x - m)' P (x - m)) uses the Ledoit-Wolf shrunk covariance (scikit-learn's
   `LedoitWolf`: (1 - s) S + s tr(S)/F I, invertible even when n is near F). Its cut-off is
   split-conformal: the calibration rows are split, seeded (`split_calibration`), into a fit part
   (m, P) and k held-out rows whose distances d_(1) <= ... <= d_(k) are kept; the cut-off for a
   stated rate a is d_(r), r = ceil((k + 1)(1 - a)).
   **Guarantee.** If a new study and the k held-out studies are exchangeable (drawn i.i.d. from the
   population the calibration split came from), P(d(new) > d_(r)) <= a, with the probability over
   the draw of the held-out rows and of the new study (the fit part only fixes m and P). Proof: by
   exchangeability the new distance's rank among the k + 1 is uniform (ties broken at random, which
   only lowers the chance of a strict excess), and d(new) > d_(r) needs a rank above r, so the
   probability is at most (k + 1 - r) / (k + 1) <= a since r >= (k + 1)(1 - a). Without ties it is
   also at least a - 1/(k + 1): the bound is tight. With `delta`, the promise holds for the fitted
   detector itself, not only on average over calibration draws: r is the smallest rank with
   P(Binomial(k, 1 - a) >= r) <= delta, so P_cal[P(d(new) > d_(r) | cal) <= a] >= 1 - delta
   (F(d_(r)) ~ Beta(r, k + 1 - r) for continuous distances; ties only make it conservative).
   Both tests share the rate (Bonferroni: each at a / 2 when the intensity detector is present),
   so an exchangeable study is flagged by either with probability <= a.
   **Not promised.** The rate is per study: N in-distribution studies give about N a false alarms.
   It holds only for studies like the calibration split: at another site, scanner, population or
   protocol the share flagged is not controlled (it is the signal the label-free monitor counts).
   No power is promised: an outside study whose features and histogram look ordinary passes. And
   a study not flagged is not thereby predicted correctly.
2. **Degenerate input** (`sanity_reasons`, `same_outputs`): constant or near-constant pixels,
   saturation, and a batch of >= 2 studies whose outputs are all the same (torchxrayvision#89: a
   preprocessing fault, e.g. pixels in [0, 1] instead of [-1024, 1024]). Fixed rules, no rate; the
   thresholds are named below with the measurements that placed them.
3. **DICOM metadata** (`metadata_reasons`): conservative — a study the header does not confirm as a
   frontal chest radiograph is flagged. PNG/JPEG carry no such metadata and are not judged here.

Pure numpy/scipy/scikit-learn, no torch, no database; `to_arrays()` gives plain arrays and a
JSON-able dict for the registry's blob store, `from_arrays()` rebuilds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom

from cxr.errors import InvalidInput

__all__ = ["DEFAULT_RATE", "FORMAT", "ConformalMahalanobis", "OodReference", "PixelStats", "StudyAssessment",
           "assess_studies", "conformal_rank", "intensity_histogram", "metadata_reasons", "pixel_stats",
           "same_outputs", "sanity_reasons", "split_calibration"]

FORMAT, FORMAT_VERSION = "cxr-decide/ood", 1
DEFAULT_RATE = 0.01
#: Held out for the cut-off: n = 1,000 gives k = 300, enough for a / 2 = 0.005 (k >= 199).
HELD_OUT_FRACTION = 0.3
#: Intensity histogram of the model-ready image: 32 bins of 64 units (8 grey levels of an 8-bit film).
HISTOGRAM_BINS, PIXEL_RANGE = 32, 1024.0
#: Near-constant: the middle 98 % of pixels (1st to 99th percentile, so a burnt-in label does not
#: count) span under 5 % of [-1024, 1024]. Measured: >= 798 on every real NIH sample film at 64 px,
#: >= 1381 on 2,000 phantom calibration films.
MIN_SPREAD = 0.05 * 2 * PIXEL_RANGE
#: Saturated: over 80 % of pixels within 1 % of the range (20.5 units, 2.5 grey levels) of either
#: end. Real NIH films reach 64 % at the black end (a film with a wide black border); 80 % leaves
#: less contrast than a chest film's lung fields alone need.
EXTREME_MARGIN, MAX_EXTREME_SHARE = 0.01 * 2 * PIXEL_RANGE, 0.80
#: Same outputs: every output's range across the batch under 0.001. Distinct phantom films differ
#: by >= 0.005 on some output (closest of 124,750 pairs), real NIH films by >= 0.018; pixels in
#: [0, 1] or [-1, 1] instead of [-1024, 1024] give a range of exactly 0 (measured, compact model).
SAME_OUTPUT_SPREAD = 1e-3
#: DICOM: CR and DX are the radiography modalities. DR is no DICOM term (digital radiographs are DX)
#: and OT / secondary capture may hold anything: neither confirms a chest radiograph, so both are
#: flagged, like a missing Modality. A site that writes DR may pass its own set to `metadata_reasons`.
RADIOGRAPHY = frozenset({"CR", "DX"})
CHEST_PARTS = frozenset({"CHEST"})
FRONTAL_VIEWS = frozenset({"AP", "PA"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT"})
_MODALITY_NOTES = {"OT": "other / secondary capture", "DR": "no DICOM modality; digital radiographs are DX"}


def _check_rate(value: float, field: str) -> None:
    if not 0.0 < value < 1.0:
        raise InvalidInput(f"must be strictly between 0 and 1, got {value}", field=field)


def _matrix(x, field: str, features: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or (features is not None and a.shape[1] != features):
        raise InvalidInput(f"expected an array shaped (n, {features or 'F'}), got {np.shape(x)}", field=field)
    return a


def split_calibration(n: int, held_out_fraction: float = HELD_OUT_FRACTION, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of n calibration rows: a seeded permutation, the first round(f n) held out."""
    _check_rate(held_out_fraction, "held_out_fraction")
    perm = np.random.default_rng(seed).permutation(n)
    k = round(held_out_fraction * n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def conformal_rank(k: int, rate: float, delta: float | None = None) -> int:
    """1-based rank r of the cut-off among k held-out distances; `InvalidInput` (naming the k needed) if none."""
    _check_rate(rate, "rate")
    if delta is None:
        r = math.ceil((k + 1) * (1.0 - rate) - 1e-9)
        need = math.ceil((1.0 - rate) / rate - 1e-9)
    else:
        _check_rate(delta, "delta")
        tail = binom.sf(np.arange(k + 1) - 1, k, 1.0 - rate)  # tail[r] = P(Binomial(k, 1 - a) >= r)
        ok = np.flatnonzero(tail <= delta)
        r = int(ok[0]) if ok.size else k + 1
        need = math.ceil(math.log(delta) / math.log(1.0 - rate))
    if not 1 <= r <= k:
        at = f" at delta={delta:g}" if delta is not None else ""
        raise InvalidInput(f"{k} held-out calibration studies cannot hold a {rate:g} false-alarm rate{at}: "
                           f"need at least {need}", field="rate")
    return r


@dataclass(frozen=True, eq=False)
class ConformalMahalanobis:
    """Mahalanobis distance from a calibration split with a split-conformal cut-off (module docstring)."""

    name: str
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F): inverse of the Ledoit-Wolf shrunk covariance of the fit part
    held_out: np.ndarray  # (k,) ascending distances of the held-out calibration rows
    shrinkage: float
    n_fit: int

    @property
    def features(self) -> int:
        return int(self.mean.size)

    @classmethod
    def fit(cls, x, *, name: str = "features", held_out_fraction: float = HELD_OUT_FRACTION, seed: int = 0
            ) -> ConformalMahalanobis:
        """Fit on calibration rows `x` (n × F): mean and precision on the fit part, distances of the rest.

        Raises `InvalidInput` for non-finite values or too few rows (the fit part needs >= 2).
        """
        from sklearn.covariance import LedoitWolf

        a = _matrix(x, name)
        if not np.isfinite(a).all():
            raise InvalidInput("calibration features must be finite", field=name)
        fit_rows, held = split_calibration(len(a), held_out_fraction, seed)
        if fit_rows.size < 2 or held.size < 1:
            raise InvalidInput(f"{len(a)} calibration rows are too few to fit and hold out", field=name)
        lw = LedoitWolf().fit(a[fit_rows])
        part = cls(name, lw.location_, lw.precision_, np.empty(0), float(lw.shrinkage_), int(fit_rows.size))
        return cls(**{**vars(part), "held_out": np.sort(part.distance(a[held]))})

    def distance(self, x) -> np.ndarray:
        """Mahalanobis distances of rows `x` (n × F, or one F-vector); inf for a row with NaN or inf."""
        a = _matrix(x, self.name, self.features)
        finite = np.isfinite(a).all(axis=1)
        c = np.where(finite[:, None], a, 0.0) - self.mean
        d2 = np.einsum("ij,ij->i", c @ self.precision, c)
        return np.where(finite, np.sqrt(np.maximum(d2, 0.0)), np.inf)

    def cutoff(self, rate: float = DEFAULT_RATE, delta: float | None = None) -> float:
        """The distance above which a study is flagged at `rate` (and `delta`): d_(r) of the held-out rows."""
        return float(self.held_out[conformal_rank(self.held_out.size, rate, delta) - 1])

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """(plain arrays: mean, precision, held_out; JSON-able dict) for storage; see `from_arrays`."""
        arrays = {"mean": self.mean, "precision": self.precision, "held_out": self.held_out}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": "conformal-mahalanobis", "name": self.name,
                "features": self.features, "held_out": int(self.held_out.size), "n_fit": self.n_fit,
                "shrinkage": self.shrinkage}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping) -> ConformalMahalanobis:
        """Rebuild from `to_arrays()`'s output; `InvalidInput` if the two disagree or are not this format."""
        if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise InvalidInput(f"not a {FORMAT} v{FORMAT_VERSION} detector", field="meta")
        try:
            mean, prec, held = (np.asarray(arrays[k], dtype=np.float64) for k in ("mean", "precision", "held_out"))
        except KeyError as exc:
            raise InvalidInput(f"missing array {exc.args[0]!r}", field="arrays") from None
        f, k = int(meta.get("features", -1)), int(meta.get("held_out", -1))
        if mean.shape != (f,) or prec.shape != (f, f) or held.shape != (k,):
            raise InvalidInput(f"array shapes {mean.shape}, {prec.shape}, {held.shape} do not match F={f}, k={k}",
                               field="arrays")
        if not all(np.isfinite(a).all() for a in (mean, prec, held)) or np.any(np.diff(held) < 0):
            raise InvalidInput("arrays must be finite and held_out sorted", field="arrays")
        return cls(str(meta.get("name", "features")), mean, prec, held, float(meta.get("shrinkage", math.nan)),
                   int(meta.get("n_fit", 0)))


def intensity_histogram(pixels) -> np.ndarray:
    """Share of pixels in each of `HISTOGRAM_BINS` equal bins of [-1024, 1024] (values clipped into it)."""
    x = np.clip(np.asarray(pixels, dtype=np.float64).ravel(), -PIXEL_RANGE, PIXEL_RANGE)
    counts, _ = np.histogram(x, bins=HISTOGRAM_BINS, range=(-PIXEL_RANGE, PIXEL_RANGE))
    return counts / max(x.size, 1)


@dataclass(frozen=True, eq=False)
class PixelStats:
    """What the checks need of one image: its 1st-99th percentile spread, share at the ends, histogram."""

    spread: float
    extreme_share: float
    histogram: np.ndarray  # (HISTOGRAM_BINS,)


def pixel_stats(pixels) -> PixelStats:
    """Summary of one image in [-1024, 1024] (pass the model-ready R × R image: the histogram must match
    the one the reference was fitted on). `InvalidInput` for an empty image."""
    x = np.asarray(pixels, dtype=np.float64).ravel()
    if x.size == 0:
        raise InvalidInput("empty image", field="pixels")
    p1, p99 = np.percentile(x, [1, 99])
    ends = np.count_nonzero(np.abs(x) >= PIXEL_RANGE - EXTREME_MARGIN) / x.size
    return PixelStats(float(p99 - p1), float(ends), intensity_histogram(x))


def sanity_reasons(stats: PixelStats) -> list[tuple[str, str]]:
    """(code, reason) for a constant / near-constant or saturated image; empty when neither."""
    out = []
    if stats.spread < MIN_SPREAD:
        what = "constant image" if stats.spread == 0 else "near-constant image"
        out.append(("constant", f"{what}: the middle 98 % of pixels span {stats.spread:.0f} of 2048 "
                                f"(under {MIN_SPREAD:.0f})"))
    if stats.extreme_share > MAX_EXTREME_SHARE:
        out.append(("saturated", f"saturated: {stats.extreme_share:.0%} of pixels at the ends of the range "
                                 f"(over {MAX_EXTREME_SHARE:.0%})"))
    return out


def same_outputs(probabilities) -> str | None:
    """The reason when a batch of >= 2 studies got (nearly) the same output vector, else None."""
    p = _matrix(probabilities, "probabilities")
    p = p[:, np.isfinite(p).all(axis=0)]
    if p.shape[0] < 2 or p.shape[1] == 0:
        return None
    spread = float(np.ptp(p, axis=0).max())
    if spread >= SAME_OUTPUT_SPREAD:
        return None
    return (f"every study in this batch of {p.shape[0]} got the same outputs (largest difference {spread:.2g} < "
            f"{SAME_OUTPUT_SPREAD:g}): a preprocessing fault (pixels not scaled to [-1024, 1024]?) "
            "or the same film repeated")


def metadata_reasons(info: Mapping | None, *, modalities: frozenset[str] = RADIOGRAPHY,
                     body_parts: frozenset[str] = CHEST_PARTS) -> list[tuple[str, str]]:
    """(code, reason) for each way a DICOM header (`Film.info`; None for PNG/JPEG: nothing to judge)
    says the study is not a frontal chest radiograph. Blank values count as absent; a missing Modality
    is flagged (not confirmed), a missing BodyPartExamined or ViewPosition is not."""
    if info is None:
        return []
    get = lambda k: str(info.get(k) or "").strip()  # noqa: E731
    out = []
    modality = get("Modality").upper()
    if not modality:
        out.append(("not_radiograph", "no Modality in the DICOM header: not confirmed as a chest radiograph"))
    elif modality not in modalities:
        note = _MODALITY_NOTES.get(modality)
        allowed = "/".join(sorted(modalities))
        out.append(("not_radiograph", f"Modality {modality} ({note}) is not confirmed as a radiograph ({allowed})"
                    if note else f"Modality {modality} is not a radiograph ({allowed})"))
    part = get("BodyPartExamined")
    if part and part.upper() not in body_parts:
        out.append(("not_chest", f"BodyPartExamined {part} is not {'/'.join(sorted(body_parts))}"))
    view = get("ViewPosition")
    toks = re.split(r"[^A-Z0-9]+", view.upper())
    if any(t in LATERAL_VIEWS for t in toks):
        out.append(("not_frontal", f"ViewPosition {view} is a lateral view: the model was validated on "
                                   "frontal (AP/PA) films"))
    elif view and not any(t in FRONTAL_VIEWS for t in toks):
        out.append(("not_frontal", f"ViewPosition {view} is not a frontal view (AP/PA)"))
    return out


@dataclass(frozen=True)
class OodReference:
    """A version's per-study OOD reference: the feature detector and, optionally, the intensity one."""

    features: ConformalMahalanobis
    intensity: ConformalMahalanobis | None = None

    @classmethod
    def fit(cls, features, images: Sequence | None = None, *, held_out_fraction: float = HELD_OUT_FRACTION,
            seed: int = 0) -> OodReference:
        """Fit on the calibration split's pooled features (n × F) and, if given, its model-ready images (or
        their `PixelStats`, so that a large split need not be held in memory)."""
        feat = ConformalMahalanobis.fit(features, name="features", held_out_fraction=held_out_fraction, seed=seed)
        if images is None:
            return cls(feat)
        hist = np.stack([im.histogram if isinstance(im, PixelStats) else intensity_histogram(im)
                         for im in _per_study(images, len(np.asarray(features)), "images")])
        return cls(feat, ConformalMahalanobis.fit(hist, name="intensity", held_out_fraction=held_out_fraction,
                                                  seed=seed))

    @property
    def tests(self) -> int:
        return 1 + (self.intensity is not None)

    def smallest_rate(self) -> float:
        """The smallest false-alarm rate its held-out studies can hold (each test at rate/tests needs
        rate/tests ≥ 1/(k+1)): a small calibration split cannot promise a small rate."""
        k = min(len(d.held_out) for d in filter(None, (self.features, self.intensity)))
        return self.tests / (k + 1)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Flat arrays named `<detector>.<array>` and {"format", "version", "detectors": {name: meta}}."""
        arrays, metas = {}, {}
        for det in filter(None, (self.features, self.intensity)):
            a, m = det.to_arrays()
            arrays |= {f"{det.name}.{k}": v for k, v in a.items()}
            metas[det.name] = m
        return arrays, {"format": FORMAT, "version": FORMAT_VERSION, "detectors": metas}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping) -> OodReference:
        """Rebuild from `to_arrays()`'s output (`InvalidInput` as `ConformalMahalanobis.from_arrays`)."""
        dets = meta.get("detectors") or {}
        if "features" not in dets:
            raise InvalidInput("no features detector", field="meta")
        part = lambda n: ConformalMahalanobis.from_arrays(  # noqa: E731
            {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{n}.")}, dets[n])
        return cls(part("features"), part("intensity") if "intensity" in dets else None)


@dataclass(frozen=True)
class StudyAssessment:
    """One study's verdict: `outside` when any check fired; `reasons` (plain language) and `flags`
    (codes: distance, intensity, not_radiograph, not_chest, not_frontal, constant, saturated,
    same_outputs, not_finite) are parallel. `distance`/`cutoff` are the pooled-feature test's;
    `rate` is the stated false-alarm rate of the distance tests together."""

    outside: bool
    degenerate: bool
    distance: float
    cutoff: float
    rate: float
    reasons: tuple[str, ...]
    flags: tuple[str, ...]
    intensity_distance: float | None = None
    intensity_cutoff: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready: tuples become lists on dumping, a non-finite distance becomes None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def _per_study(values: Sequence | None, n: int, field: str) -> list:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise InvalidInput(f"{len(values)} given for {n} studies", field=field)
    return list(values)


def assess_studies(reference: OodReference, features, *, images: Sequence | None = None,
                   metadata: Sequence[Mapping | None] | None = None, probabilities=None,
                   rate: float = DEFAULT_RATE, delta: float | None = None) -> list[StudyAssessment]:
    """Judge a batch: features (n × F pooled), per study its model-ready image or `PixelStats` (or None),
    its DICOM `Film.info` (None for PNG/JPEG), and the batch's output probabilities (n × K).

    Returns one `StudyAssessment` per study, in order. Raises `InvalidInput` for mismatched lengths,
    a feature width the reference was not fitted on, or a rate too small for the held-out size.
    """
    _check_rate(rate, "rate")
    feats = _matrix(features, "features", reference.features.features)
    n = len(feats)
    stats = [s if s is None or isinstance(s, PixelStats) else pixel_stats(s) for s in _per_study(images, n, "images")]
    infos = _per_study(metadata, n, "metadata")
    probs = None if probabilities is None else _per_study(_matrix(probabilities, "probabilities"), n, "probabilities")
    batch = same_outputs(probs) if probs is not None else None
    per_test = rate / reference.tests
    share = (f"{_pct(per_test)} false-alarm rate; {_pct(rate)} with the other distance test" if reference.tests > 1
             else f"{_pct(rate)} false-alarm rate")
    cut = reference.features.cutoff(per_test, delta)
    icut = reference.intensity.cutoff(per_test, delta) if reference.intensity is not None else None
    dist = reference.features.distance(feats)
    out = []
    for i in range(n):
        found = metadata_reasons(infos[i]) + (sanity_reasons(stats[i]) if stats[i] is not None else [])
        found += [("same_outputs", batch)] if batch else []
        if not np.isfinite(dist[i]):
            found.append(("not_finite", "pooled features are not finite (NaN or inf): no distance"))
        elif dist[i] > cut:
            found.append(("distance", f"feature distance {dist[i]:.3g} > cut-off {cut:.3g} ({share})"))
        idist = None
        if stats[i] is not None and reference.intensity is not None:
            idist = float(reference.intensity.distance(stats[i].histogram)[0])
            if idist > icut:
                found.append(("intensity", f"intensity histogram distance {idist:.3g} > cut-off {icut:.3g} ({share})"))
        flags = tuple(c for c, _ in found)
        out.append(StudyAssessment(
            outside=bool(found), degenerate=bool(set(flags) & {"constant", "saturated", "same_outputs"}),
            distance=float(dist[i]), cutoff=cut, rate=rate, reasons=tuple(r for _, r in found), flags=flags,
            intensity_distance=idist, intensity_cutoff=icut if idist is not None else None))
    return out
