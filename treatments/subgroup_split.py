"""The rows of a split that belong to a report's subgroup ("view=AP" at site-b), for treatments that use them.

Sex, age and view of each film come from the NIH row it is (or was drawn from, for a phantom film):
`cxr.film_attributes`; a film matching no NIH row belongs to no subgroup that names one of them. The
serving model has one operating point per site (and a default), none per subgroup: a treatment that
chooses a threshold on a subgroup's rows changes it for every film of the site, and says so
(`PER_SITE_ONLY`).
"""

from __future__ import annotations

import numpy as np

from cxr.subgroup_key import describe, matches, parse
from treatments.base import FeatureSplit, TreatmentDeclined

PER_SITE_ONLY = ("the serving model has one operating point per site, none per subgroup: the threshold chosen "
                 "on the subgroup's cases applies to every film of the site")


def subgroup_rows(split: FeatureSplit, where: str, subgroup: str, minimum: int) -> tuple[FeatureSplit, str]:
    """`split`'s rows in `subgroup` and where they came from ("site site-b, AP films"); `TreatmentDeclined`
    when fewer than `minimum` rows are in it."""
    from cxr.film_attributes import film_attributes

    pairs = parse(subgroup)
    fa = film_attributes(split.image_ids, [""] * len(split), split.sites)
    mask = np.array([matches(pairs, sex=fa.sex[i], age=float(fa.age[i]), view=fa.view[i]) for i in range(len(split))],
                    dtype=bool)
    if int(mask.sum()) < minimum:
        raise TreatmentDeclined(f"only {int(mask.sum())} calibration case(s) of {describe(subgroup)} ({subgroup}) on "
                                f"{where} (needs {minimum}); {PER_SITE_ONLY}")
    return split.rows(mask), f"{where}, {describe(subgroup)} only"
