"""Scoring films with a registered version, so that "positive" means what the registry says.

`decide predict --version cxr@production`, `decide findings` and the analysis commands start here:
resolve the version (per site when asked: the site's own alias and operating points), load its
weights verified by digest, and score a batch of films read by `cxr.images.read_batch`. A film is
called positive when its probability reaches the version's operating point for that pathology;
a pathology without one (masked, or never certified) is scored but never called, and is shown apart as
"not validated".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import InvalidInput
from cxr.images import Batch, list_films
from cxr.weights import Weights
from registry.entities import VersionEntity


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
               thresholds: dict[str, float | None]) -> list[dict[str, Any]]:
    """One JSON-ready row per film: per pathology its probability, operating point, call and whether it is
    validated (it has an operating point). Validated outputs come first — positives, then the rest, each
    by probability — and the outputs without one after them, listed again under `not_validated`: a
    probability the version was never validated on must not read like a finding."""
    rows = []
    for p, row in zip(paths, probs, strict=True):
        scores = {}
        for j, name in enumerate(pathologies):
            if not name:
                continue
            t = thresholds.get(name)
            scores[name] = {"probability": float(row[j]), "threshold": t,
                            "positive": None if t is None else bool(row[j] >= t), "validated": t is not None}
        order = sorted(scores, key=lambda n: (not scores[n]["validated"], not scores[n]["positive"],
                                              -scores[n]["probability"]))
        rows.append({"path": str(p), "scores": {n: scores[n] for n in order},
                     "not_validated": [n for n in order if not scores[n]["validated"]]})
    return rows
