"""Which version a person authorised for a site: the baseline the gate holds every candidate to.

The gate compares a candidate with its parent; a chain of promotions, each within the margin, could
walk a model far from what anyone signed off. So it also compares the candidate with the site's
*authorised baseline* (`decision.gate_lineage`). "Authorised" here means: the newest version that a
person put into production for the site, read from the append-only `promotion_grants`:

* an `override` (a person moved `production` with a reason: the first registration with `--promote`
  is one) or a `rollback` (a person, with a reason);
* a `gate` grant whose run was held for a person and approved (`decision.approvals`: the run recorded
  `needs_approval` with its verdict and was settled `accepted`). A plain `gate` grant is the machine's
  own verdict and authorises nothing: counting it would let the baseline creep with the chain.

The site's own grants (`production@site`) win over the all-sites ones (`production`). With no grant a
person made, the authorised version is the root of the version's lineage (registered without a parent,
so by a person). Chosen over "the root, always" because a person who knowingly accepts a new version
for a site (a rollback, an override with a reason) moves what that site was authorised to run.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.entities import RunOutcome
from registry.models import PromotionGrantRow, RunRow, VersionRow
from registry.repo_versions import _version_row

HUMAN_GRANTS = ("override", "rollback")


@dataclass(frozen=True)
class AuthorisedVersion:
    """The version a person authorised for `site` ('' = every site), how and by whom."""

    version_id: int
    ref: str  # "model:version"
    site: str  # the grant's site: '' when the all-sites grant (or the root) is what authorises it
    kind: str  # "override", "rollback", "approval" (a held gate verdict a person approved) or "root"
    actor: str
    reason: str

    @property
    def label(self) -> str:
        """One phrase for a check's detail: 'cxr:1 (override by alice: baseline)'."""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.ref} ({self.kind} by {self.actor}{why})"


def _approved_by_person(session: Session, run_id: int | None) -> bool:
    """A gate grant counts when its run was held for a person and then settled accepted."""
    if run_id is None:
        return False
    run = session.get(RunRow, run_id)
    if run is None or RunOutcome(run.outcome) is not RunOutcome.accepted:
        return False
    gate = (run.metrics or {}).get("gate") or {}
    return bool(gate.get("needs_approval"))


def authorised_version(session: Session, version_id: int, site: str = "") -> AuthorisedVersion:
    """The version a person authorised for `site`, for judging candidates made from `version_id`.

    See the module docstring for the rule. Raises `NotFound` for an unknown version.
    """
    v = _version_row(session, version_id)
    q = (select(PromotionGrantRow, VersionRow.version).join(VersionRow, VersionRow.id == PromotionGrantRow.version_id)
         .where(PromotionGrantRow.model_id == v.model_id, PromotionGrantRow.site.in_({site, ""}))
         .order_by(PromotionGrantRow.at.desc(), PromotionGrantRow.id.desc()))
    model = v.model.name
    found: dict[str, AuthorisedVersion] = {}
    for g, number in session.execute(q):
        if g.site in found:
            continue
        if g.kind in HUMAN_GRANTS:
            kind = g.kind
        elif g.kind == "gate" and _approved_by_person(session, g.run_id):
            kind = "approval"
        else:
            continue
        found[g.site] = AuthorisedVersion(g.version_id, f"{model}:{number}", g.site, kind, g.actor, g.reason)
    if site in found:
        return found[site]
    if "" in found:
        return found[""]
    root = v
    while root.parent_id is not None:  # parents are older rows: no cycles
        root = _version_row(session, root.parent_id)
    return AuthorisedVersion(root.id, f"{model}:{root.version}", "", "root", root.created_by, "registered baseline")
