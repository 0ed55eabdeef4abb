"""Who and how each film of a data set was taken: sex, age, view position and site, per row.

Per-subgroup evaluation needs these; `CXRDataset` keeps views and sites but not sex or age. They are
recovered here from the NIH ChestX-ray14 metadata that torchxrayvision ships, by image name: an NIH film
is named as NIH names it (`00000001_000.png`) and every phantom film is `SITE/00000001_000`, the NIH row
whose labels, patient, age, sex and view it was drawn from (`cxr.phantom.generate`). A folder data set
whose file names are NIH's is matched the same way. A film that matches no NIH row gets "unknown" for
sex and age (never a guess); its view and site are the data set's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxr.errors import NotFound

__all__ = ["FilmAttributes", "film_attributes", "nih_row_key"]

UNKNOWN = "unknown"


@dataclass(frozen=True)
class FilmAttributes:
    """Per-row attributes of a data set; `age` is NaN where unknown, `sex` is "M", "F" or "unknown"."""

    sex: tuple[str, ...]
    age: np.ndarray  # (N,) float, NaN = unknown
    view: tuple[str, ...]
    site: tuple[str, ...]
    matched: int  # rows found in NIH's metadata

    def __len__(self) -> int:
        return len(self.sex)


def nih_row_key(image_id: str) -> str:
    """The NIH image index an image id refers to: `site-a/00000001_000` and `00000001_000.png` both give
    `00000001_000.png`."""
    name = image_id.rsplit("/", 1)[-1]
    return name if name.endswith(".png") else f"{name}.png"


def film_attributes(image_ids: Sequence[str], views: Sequence[str], sites: Sequence[str],
                    nih_meta=None) -> FilmAttributes:
    """Sex, age, view and site of each film (see the module doc).

    `nih_meta` is an `cxr.nih.NIHMetadata` (default: the one shipped with torchxrayvision; without
    torchxrayvision every film's sex and age are unknown). Views: the data set's own where it has one,
    else NIH's; an empty view is "unknown". Raises nothing.
    """
    n = len(image_ids)
    if nih_meta is None:
        try:
            from cxr.nih import load_nih_metadata

            nih_meta = load_nih_metadata()
        except NotFound:
            nih_meta = None
    sex, age, view = [UNKNOWN] * n, np.full(n, np.nan), [str(v) if v else UNKNOWN for v in views]
    matched = 0
    if nih_meta is not None:
        pos = {str(k): i for i, k in enumerate(nih_meta.image_index)}
        for i, iid in enumerate(image_ids):
            r = pos.get(nih_row_key(str(iid)))
            if r is None:
                continue
            matched += 1
            sex[i] = "M" if nih_meta.male[r] else "F"
            age[i] = float(nih_meta.age[r])
            if view[i] == UNKNOWN:
                view[i] = "AP" if nih_meta.view_ap[r] else "PA"
    site = tuple(str(s) if s else UNKNOWN for s in sites)
    return FilmAttributes(tuple(sex), age, tuple(view), site, matched)
