"""Scoring films with a registered version, so that "positive" means what the registry says.

`decide predict --version cxr@production`, `decide findings` and the analysis commands start here:
resolve the version (per site when asked: the site's own alias and operating points), load its
weights verified by digest, and score a batch of films read by `cxr.images.read_batch`. A film is
called positive when its probability reaches the version's operating point for that pathology;
a pathology without one (masked, or never certified) is scored but never called, and is shown apart as
"not validated".

Before any finding, each study is checked against what the version was validated on (`OodCheck`: the
version's reference statistics through `cxr.ood`, at the policy's per-study rate or the smallest rate the
reference can hold, said when it differs). A study whose DICOM header says it is not a frontal chest
radiograph, or whose input is degenerate, is withheld: no call is made on it. One flagged only by the
distance tests keeps its findings, under a warning. Without a reference (an unregistered weights file, a
version without a calibration split) each study says "no reference statistics: not checked"; the header
and degenerate-input checks, which need no reference, still run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr.errors import InvalidInput
from cxr.images import Batch, list_films
from cxr.weights import Weights
from registry.entities import VersionEntity

if TYPE_CHECKING:
    from cxr.ood import OodReference, StudyAssessment


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version ready to score: its entity, verified weights and the operating points in force."""

    entity: VersionEntity
    weights: Weights
    thresholds: dict[str, float | None]
    site: str | None

    @property
    def ref(self) -> str:
        return self.entity.ref


def load_version(ref: str, *, site: str | None = None, url: str | None = None, home: Path | None = None
                 ) -> LoadedVersion:
    """Resolve `ref` (`cxr:3`, `cxr@production`, `cxr@production@site-b`) and load its weights.

    With `site`, an alias resolves to that site's own version when it has one, and the site's
    operating points override the defaults. Raises `NotFound` / `IntegrityFailure` as the registry does.
    """
    from decision.registration import load_version_weights
    from registry import repo
    from registry.session import session_scope
    from registry.settings import get_settings

    with session_scope(url, read_only=True) as s:
        v = repo.resolve_version(s, ref, site=site)
    w = load_version_weights(v, home or get_settings().home_dir)
    return LoadedVersion(v, w, v.thresholds_for(site), site)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder becomes the image files directly in it (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        out.extend(list_films(p) if p.is_dir() else [p])
    return out


def refuse_failures(batch: Batch, keep_going: bool) -> None:
    """Raise `InvalidInput` (one line, every failed file named) unless `keep_going` and something was read."""
    if not batch.failures or (keep_going and batch.paths):
        return
    total = len(batch.failures) + len(batch.paths)
    listed = "; ".join(f"{reason}" for _, reason in batch.failures[:5])
    more = f"; and {len(batch.failures) - 5} more" if len(batch.failures) > 5 else ""
    tail = "nothing scored" + ("" if keep_going else " (--keep-going scores the rest)")
    raise InvalidInput(f"{len(batch.failures)} of {total} file(s) could not be read — {listed}{more}; {tail}",
                       field="images")


def score_images(model: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N × outputs, pooled features N × F) of model-ready images (N, 1, R, R)."""
    import torch

    from cxr.features import head_logits, sigmoid

    model.eval()
    with torch.inference_mode():
        feats = model.pooled(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()
    logits = head_logits(feats, model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy())
    return sigmoid(logits), feats


def score_rows(paths: Sequence[str], probs: np.ndarray, pathologies: Sequence[str],
               thresholds: dict[str, float | None], verdicts: Sequence[OodVerdict] | None = None
               ) -> list[dict[str, Any]]:
    """One JSON-ready row per film: per pathology its probability, operating point, call and whether it is
    validated (it has an operating point). Validated outputs come first — positives, then the rest, each
    by probability — and the outputs without one after them, listed again under `not_validated`: a
    probability the version was never validated on must not read like a finding.

    With `verdicts` (one per film, `OodCheck.assess`) each row gets `ood` (`OodVerdict.as_dict()`) and
    `withheld` (the reason, or None): a withheld study's calls are all None — it is not a chest film, or
    its input is degenerate, so no output of it is a finding."""
    rows = []
    verdicts = [None] * len(paths) if verdicts is None else list(verdicts)
    for p, row, verdict in zip(paths, probs, verdicts, strict=True):
        withheld = verdict.withheld if verdict is not None else None
        scores = {}
        for j, name in enumerate(pathologies):
            if not name:
                continue
            t = thresholds.get(name)
            scores[name] = {"probability": float(row[j]), "threshold": t,
                            "positive": None if t is None or withheld else bool(row[j] >= t),
                            "validated": t is not None}
        order = sorted(scores, key=lambda n: (not scores[n]["validated"], not scores[n]["positive"],
                                              -scores[n]["probability"]))
        out = {"path": str(p), "scores": {n: scores[n] for n in order},
               "not_validated": [n for n in order if not scores[n]["validated"]]}
        if verdict is not None:
            out |= {"ood": verdict.as_dict(), "withheld": withheld}
        rows.append(out)
    return rows


# -- is a study outside what the version was validated on? (`cxr.ood`, shown before any finding) -------------

#: flags that withhold a study's findings: the input is not a frontal chest radiograph, or it is degenerate
#: (a study flagged only by the distance tests keeps its findings, under a warning)
WITHHOLD = ("not_radiograph", "not_chest", "not_frontal", "constant", "saturated", "same_outputs", "not_finite")
NOT_CHECKED = "no reference statistics: not checked"


@dataclass(frozen=True)
class OodVerdict:
    """One study's verdict as `predict` and `findings` show it: the checks of `cxr.ood.assess_studies`, or
    without a reference only the DICOM-header and degenerate-input checks (`checked` False, `note` says why)."""

    assessment: StudyAssessment
    checked: bool  # the distance tests against the version's reference ran
    reference: str | None  # whose reference ("cxr:1")
    requested_rate: float
    note: str | None  # why the distance tests did not run, or why they ran at a higher rate than requested

    @property
    def outside(self) -> bool:
        return self.assessment.outside

    @property
    def withheld(self) -> str | None:
        """Why the findings are not shown, or None (metadata / degenerate reasons, in order)."""
        why = [r for f, r in zip(self.assessment.flags, self.assessment.reasons, strict=True) if f in WITHHOLD]
        return "not scored as a chest film: " + "; ".join(why) if why else None

    def short_reasons(self) -> list[str]:
        """The reasons, the distance tests' without their rate (the table's cell; `as_dict` has them whole)."""
        a = self.assessment
        out = []
        for flag, reason in zip(a.flags, a.reasons, strict=True):
            if flag == "distance":
                out.append(f"features far from the reference ({a.distance:.3g} > {a.cutoff:.3g})")
            elif flag == "intensity" and a.intensity_distance is not None and a.intensity_cutoff is not None:
                out.append(f"grey levels unlike the reference ({a.intensity_distance:.3g} > {a.intensity_cutoff:.3g})")
            else:
                out.append(reason)
        return out

    def plain_reasons(self) -> list[str]:
        """The reasons in plain language, for a person reading one study (the clinical report's banner)."""
        a = self.assessment
        out = []
        for flag, reason in zip(a.flags, a.reasons, strict=True):
            if flag == "distance":
                out.append(f"what the model sees in this film (its pooled features) is farther from the films it "
                           f"was calibrated on than the cut-off (distance {a.distance:.3g} > {a.cutoff:.3g})")
            elif flag == "intensity" and a.intensity_distance is not None and a.intensity_cutoff is not None:
                out.append(f"the film's grey levels are spread unlike those of the films it was calibrated on "
                           f"(distance {a.intensity_distance:.3g} > {a.intensity_cutoff:.3g})")
            else:
                out.append(reason)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: `StudyAssessment.as_dict()` (distances and rate None when not checked) plus `checked`,
        `reference`, `requested_rate`, `note` and `withheld`."""
        return {**self.assessment.as_dict(), "checked": self.checked, "reference": self.reference,
                "requested_rate": self.requested_rate, "note": self.note, "withheld": self.withheld}


@dataclass(frozen=True)
class OodCheck:
    """The per-study check of one scoring run: a version's OOD reference at a rate it can hold, or none."""

    reference: OodReference | None
    rate: float | None  # what the distance tests run at (None without a reference)
    requested_rate: float  # the policy's `label_free.ood_rate`
    source: str | None  # whose reference ("cxr:1")
    note: str | None  # why not checked, or why `rate` is above `requested_rate`

    @classmethod
    def unavailable(cls, why: str, requested_rate: float) -> OodCheck:
        return cls(None, None, requested_rate, None, f"{NOT_CHECKED} ({why})")

    @classmethod
    def of(cls, reference: OodReference, source: str, requested_rate: float) -> OodCheck:
        """At `requested_rate`, or at the smallest rate the reference's held-out rows can hold, saying so."""
        rate, note = holdable_rate(reference, requested_rate)
        if rate is None:
            return cls.unavailable(f"{source}'s reference: {note}", requested_rate)
        return cls(reference, rate, requested_rate, source, note and f"{source}'s reference {note}")

    def assess(self, features, *, images=None, metadata=None, probabilities=None) -> list[OodVerdict]:
        """One verdict per study (arguments as `cxr.ood.assess_studies`: pooled features n × F, model-ready
        images or their `PixelStats`, `Film.info` for DICOM else None, the batch's probabilities)."""
        from cxr.ood import assess_studies

        if self.reference is not None and self.rate is not None:
            found = assess_studies(self.reference, features, images=images, metadata=metadata,
                                   probabilities=probabilities, rate=self.rate)
        else:
            found = _unreferenced(features, images, metadata, probabilities)
        return [OodVerdict(a, self.reference is not None, self.source, self.requested_rate, self.note) for a in found]


def holdable_rate(reference: OodReference, rate: float) -> tuple[float | None, str | None]:
    """(the rate to run the distance tests at, a note when it is not `rate`).

    `cxr.ood` splits the rate over its tests (rate / tests each) and a test with k held-out rows holds a
    per-test rate a only when a >= 1 / (k + 1) (`conformal_rank`). A reference too small for `rate` is used at
    the smallest rate it holds, tests / (k + 1), and the note says so; one that holds no rate below 1 gives None.
    """
    k = min(d.held_out.size for d in (reference.features, reference.intensity) if d is not None)
    lowest = reference.smallest_rate()
    if rate >= lowest:
        return rate, None
    if lowest >= 1.0:
        return None, f"{k} held-out calibration studies per distance test hold no false-alarm rate"
    per = rate / reference.tests
    need = math.ceil((1.0 - per) / per - 1e-9)
    return lowest, (f"holds out {k} calibration studies per distance test: too few for a {pct(rate)} per-study "
                    f"false-alarm rate ({need} needed); checked at {pct(lowest)}, the smallest it can hold")


def pct(rate: float) -> str:
    """A rate as people read it: 0.022 → "2.2 %"."""
    return f"{100 * rate:.3g} %"


def _unreferenced(features, images, metadata, probabilities) -> list[StudyAssessment]:
    """Without a reference: the checks that need none (DICOM header, degenerate pixels and outputs, finite
    features), in `assess_studies`' order; distances NaN (None in JSON)."""
    from cxr.ood import PixelStats, StudyAssessment, metadata_reasons, pixel_stats, same_outputs, sanity_reasons

    feats = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(feats)
    images = [None] * n if images is None else list(images)
    metadata = [None] * n if metadata is None else list(metadata)
    if len(images) != n or len(metadata) != n:
        raise InvalidInput(f"{len(images)} images and {len(metadata)} headers for {n} studies", field="images")
    batch = same_outputs(probabilities) if probabilities is not None else None
    out = []
    for i in range(n):
        im = images[i]
        stats = None if im is None else im if isinstance(im, PixelStats) else pixel_stats(im)
        found = metadata_reasons(metadata[i]) + (sanity_reasons(stats) if stats is not None else [])
        found += [("same_outputs", batch)] if batch else []
        if not np.isfinite(feats[i]).all():
            found.append(("not_finite", "pooled features are not finite (NaN or inf): no distance"))
        flags = tuple(c for c, _ in found)
        out.append(StudyAssessment(
            outside=bool(found), degenerate=bool(set(flags) & {"constant", "saturated", "same_outputs"}),
            distance=math.nan, cutoff=math.nan, rate=math.nan, reasons=tuple(r for _, r in found), flags=flags))
    return out


def ood_check(loaded: LoadedVersion | None, rate: float, *, home: Path | None = None, url: str | None = None
              ) -> OodCheck:
    """The check for a scoring run: `loaded`'s reference statistics (computed from its calibration split and
    stored on first use: `decision.reference.reference_for`), or none for an unregistered weights file
    (`loaded` None) or a version without a calibration split — said in each study's verdict, never silently.
    Raises `IntegrityFailure` when a stored reference no longer matches its digest."""
    if loaded is None:
        return OodCheck.unavailable("an unregistered weights file has no calibration split to compare with; "
                                    "register it with one", rate)
    from cxr.errors import NotFound
    from decision.catalog import Catalog
    from decision.reference import reference_for
    from registry.settings import get_settings

    try:
        ref = reference_for(Catalog(home or get_settings().home_dir), url, loaded.entity)
    except NotFound as exc:
        return OodCheck.unavailable(str(exc), rate)
    except InvalidInput as exc:  # a calibration split too small to fit a reference: the version's, not the user's
        return OodCheck.unavailable(f"{loaded.ref}'s reference cannot be built: {exc}", rate)
    return OodCheck.of(ref.ood, loaded.ref, rate)


def policy_ood_rate() -> float:
    """The per-study OOD false-alarm rate of the policy in force ($DECIDE_POLICY, else the bundled default)."""
    from policies import load_policy
    from registry.settings import get_settings

    return load_policy(get_settings().policy).label_free.ood_rate
