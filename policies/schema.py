"""The policy schema: what each treatment costs and fixes, the SLOs, the gate, calibration and learning knobs.

A policy is data, not code: it is read from TOML, validated here, and its digest is
recorded with every decision so an auditor can see which rules made it. Every model
forbids unknown keys, so a typo (`prior_cots`) is an error, never a silent default.
The decision code that interprets these numbers lives in `decision/`; this package
must not import it.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cxr.kinds import IssueKind
from cxr.spec import XRV_PATHOLOGIES

__all__ = [
    "BUILTIN_TREATMENTS",
    "CALIBRATION_METHODS",
    "ISSUE_KINDS",
    "SLO",
    "ApprovalPolicy",
    "CalibrationPolicy",
    "CostModel",
    "GatePolicy",
    "IssueKind",
    "LabelFreePolicy",
    "Learning",
    "NotifyEndpoint",
    "NotifyPolicy",
    "NotifySmtp",
    "Policy",
    "Preconditions",
    "SLOs",
    "TreatmentPolicy",
]

ISSUE_KINDS: tuple[IssueKind, ...] = tuple(IssueKind)
#: how thresholds are chosen (`cxr.thresholds.GOALS`): two goals are named after the kind they fix
CalibrationMethod = Literal["youden", "f1", "precision_floor", "recall_floor", IssueKind.false_positives,
                            IssueKind.false_negatives]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
#: Built-in treatments, cheapest first (the paper's empirical cost matrix).
BUILTIN_TREATMENTS: tuple[str, ...] = (
    "no_action",
    "threshold_calibration",
    "surgical_correction",
    "head_retrain",
    "f_reoptimization",
    "augmentation_retrain",
    "full_retrain",
    # footprint treatments (issue kind `footprint` only)
    "lossless_compression",
    "quantization",
    "structured_pruning",
    "distillation",
    # the answer to an unlabelled signal (issue kind `distribution_shift` only): people label, nothing is retrained
    "request_labels",
)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Preconditions(_Strict):
    """What a report must carry before a treatment may be tried."""

    requires_case_evidence: bool = False  # e.g. surgery needs case-level false positives to attribute
    min_cases: int = Field(0, ge=0)  # the report's case count must reach this


class TreatmentPolicy(_Strict):
    """One treatment's prior cost (paper's scale: 0 nothing .. 10 full retrain), reach, odds and defaults."""

    enabled: bool = True
    prior_cost: float = Field(ge=0.0)
    fixes: tuple[IssueKind, ...] = ()
    preconditions: Preconditions = Preconditions()
    p_success: dict[IssueKind, Probability] = Field(default_factory=dict)  # prior p(success) per issue kind
    p_success_default: Probability = 0.5  # for a kind in `fixes` without its own entry
    needs_approval: bool = False
    params: dict[str, Any] = Field(default_factory=dict)  # free table, validated by the treatment plugin
    description: str = ""

    @field_validator("fixes")
    @classmethod
    def _sorted_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _p_for_fixed_kinds(self) -> TreatmentPolicy:
        stray = sorted(set(self.p_success) - set(self.fixes))
        if stray:
            raise ValueError(f"p_success given for kinds not in fixes: {', '.join(stray)}")
        return self

    def prior_p(self, kind: str) -> float:
        """Prior probability that this treatment fixes an issue of `kind`."""
        return self.p_success.get(kind, self.p_success_default)  # type: ignore[call-overload]


class SLO(_Strict):
    """Service levels for one pathology; None means no requirement."""

    min_recall: Probability | None = None
    max_fpr: Probability | None = None
    min_auroc: Rate | None = None


class SLOs(_Strict):
    """Default SLO plus per-pathology overrides (only the keys an override sets replace the default)."""

    default: SLO = SLO(min_recall=0.8, max_fpr=0.3, min_auroc=0.7)
    extra_pathologies: tuple[str, ...] = ()  # names beyond torchxrayvision's 18 that overrides may use
    pathologies: dict[str, SLO] = Field(default_factory=dict)

    @field_validator("pathologies")
    @classmethod
    def _known_pathologies(cls, v: dict[str, SLO], info: ValidationInfo) -> dict[str, SLO]:
        known = set(XRV_PATHOLOGIES) | set(info.data.get("extra_pathologies", ()))
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown pathology {', '.join(unknown)} (declare custom names in slos.extra_pathologies)")
        return v

    def for_pathology(self, name: str) -> SLO:
        """The default SLO with `name`'s override applied."""
        override = self.pathologies.get(name)
        if override is None:
            return self.default
        return self.default.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


class GatePolicy(_Strict):
    """What a candidate version must show on held-out data before it is promoted."""

    alpha: Probability = 0.05  # two-sided level of the DeLong intervals (0.05: 95%)
    noninferiority_margin: Rate = 0.02  # a pathology fails if lo(delta AUROC) < -margin
    target_rule: Literal["meet_target", "improve", "meet_or_improve"] = "meet_target"
    min_improvement: Rate = 0.0  # for "improve": the metric must move the right way by at least this
    max_tp_loss: int | None = Field(None, ge=0)  # absolute cap on the target's lost true positives
    max_tp_loss_fraction: Rate | None = 0.1  # ... and as a fraction of the parent's true positives
    recall_floor: Probability | None = None  # target recall floor; None: the target's SLO min_recall
    # What a non-inferiority check does when the data cannot show the margin (decision/power.py):
    # "block" fails it; "no_significant_harm" passes it unless the interval excludes zero on the harmful
    # side, flags the verdict `underpowered` and (underpowered_needs_approval) holds it for a person.
    underpowered: Literal["block", "no_significant_harm"] = "no_significant_harm"
    underpowered_needs_approval: bool = True
    # Fallback only: the power rule measures the candidate-parent AUROC correlation from the paired DeLong
    # covariance; this ρ is assumed only for a comparison stored without it (and the check says so).
    power_correlation: float = Field(0.95, ge=0.0, lt=1.0)
    # A candidate that passes at the report's site but not elsewhere may be promoted for that site only
    # (`production@site`); other sites keep their own production version.
    site_scoped_promotion: bool = True
    # No margin creep: the candidate is also compared with the site's authorised baseline (the version a person
    # authorised there, `registry.repo_authorised`); every pathology fails if lo(delta AUROC vs it) < -this.
    cumulative_margin: Rate = 0.05


class CalibrationPolicy(_Strict):
    """How threshold calibration picks an operating point, and when it must warn."""

    default_method: CalibrationMethod = "f1"
    delta: Probability = 0.05  # recall/precision floors hold with probability >= 1 - delta
    max_precision_drop: Rate = 0.2  # warn when calibration precision falls more than this
    min_precision: Probability | None = None  # precision floor for the false-negative chooser
    fpr_delta: Probability | None = None  # certify the FPR target on new data too (None: calibration data)
    # Aim false-positive fixes at (1 - headroom) x target, so that held-out data, another sample, meets it too.
    fpr_headroom: Rate = 0.0
    # "site": a calibration for one site's report changes that site's operating point only (an override);
    # "all_sites": the version's default threshold (every site without an override).
    scope: Literal["site", "all_sites"] = "site"
    # Feasibility before climbing (decision/feasibility.py): when no operating point of the parent's scores on
    # the site's labelled rows meets the report's target within the gate's TP-loss bound and recall floor, the
    # planner skips threshold calibration (and says why, with the numbers) — given at least this many rows.
    skip_infeasible: bool = True
    feasibility_min_positives: int = Field(10, ge=1)
    feasibility_min_negatives: int = Field(30, ge=1)


class CostModel(_Strict):
    """Maps a measured run to the cost scale: base + (wall_seconds / reference_seconds) ** time_exponent
    + parameter_weight * log10(1 + trainable_parameters / reference_parameters).

    The defaults reproduce the paper's matrix: <1 s -> ~1.1, 85 s with 18K parameters -> ~2.0,
    5-10 minutes -> ~2.8-3.5, 1.5-3 hours with 3.4M parameters -> ~8.4-11.
    """

    base: float = Field(1.0, ge=0.0)
    reference_seconds: float = Field(85.0, gt=0.0)
    time_exponent: float = Field(0.47, gt=0.0)
    parameter_weight: float = Field(0.25, ge=0.0)
    reference_parameters: float = Field(1e5, gt=0.0)


class ApprovalPolicy(_Strict):
    """Who may approve a decision that waits for a person."""

    # Four-eyes: the actor who created a decision (DECIDE_ACTOR, else the OS user) may not approve it.
    # false: a one-person lab; each self-approval is then recorded as "waived by policy".
    four_eyes: bool = True


class DiagnosisPolicy(_Strict):
    """How a recorded shift diagnosis (`cxr.shift`, made before a backbone treatment) steers the planner."""

    # A later report about the same version at the same site, whose recorded diagnosis says the shift
    # is input-level with at least this strength (0..1), skips the head-level rungs (calibration, surgery,
    # head retrain): they read features the shifted films already distorted. None (default): never skip —
    # a per-site threshold still fixes many rate reports under an input-level shift (the demo's site-b).
    skip_head_level_strength: Rate | None = None


class SiteGroupsPolicy(_Strict):
    """Site-level decisions (`decision.site_groups`): open reports at one site on the same serving version whose
    shift diagnosis is the same (input- or feature-level) are treated together once their per-report head-level
    rungs (threshold calibration, surgery, head retrain) have had their try: one decision, one backbone candidate
    per rung, one gate judging every grouped report's target at the site."""

    enabled: bool = True
    min_reports: int = Field(2, ge=2)  # a group holds at least this many reports
    diagnosis_images: int = Field(600, ge=20)  # films per side when the engine diagnoses the site's shift itself


class LabelFreePolicy(_Strict):
    """Monitoring without labels (`decision.unlabelled`): the drift tests' false-alarm rate, the per-study
    OOD checks' rate, when a label-free estimate is not valid, and how many studies a label request lists."""

    # Window-level family-wise false-alarm rate of the drift tests (KS per named output + the embedding MMD,
    # Holm over that family: `cxr.drift`), the same for every window size.
    alpha: Probability = 0.05
    permutations: int = Field(500, ge=99)  # the MMD's permutation null; p = (b+1)/(B+1) is never 0
    max_window: int = Field(1000, ge=2)  # larger windows are subsampled (seeded) for the MMD only
    min_window: int = Field(25, ge=2)  # fewer studies: the window is not tested (too few to say anything)
    # Per-study false-alarm rate of the OOD checks (`cxr.ood`: two split-conformal distance tests at half each).
    ood_rate: Probability = 0.01
    # A label-free estimate is not valid when more than this share of the window is out of distribution, or
    # of its scores lie outside the calibration scores' support, or fewer positives/negatives are expected.
    max_ood_share: Rate = 0.10
    max_unsupported_share: Rate = 0.10
    min_expected: float = Field(5.0, ge=0)
    label_request_size: int = Field(50, ge=1)  # studies a label request lists, most shifted first


class Learning(_Strict):
    """How history updates the priors: pseudo-counts for the Beta prior and the cost blend."""

    prior_strength: float = Field(4.0, gt=0.0)
    cost_prior_strength: float | None = Field(None, gt=0.0)  # None: same as prior_strength
    #: what a run at another site than the report's counts for in p(success), as a share of a run at
    #: the report's site (1: every site's runs pooled; costs are always pooled)
    other_sites_weight: float = Field(1.0, ge=0.0, le=1.0)
    #: false (default): a treatment whose last run for the same (serving version, site, pathology, kind) failed
    #: the gate is not re-tried until new feedback is registered for the site or the policy changes
    #: (decision/retry.py); true: re-try it whenever it ranks first
    retry_failed_without_new_evidence: bool = False
    cost_model: CostModel = CostModel()

    @property
    def cost_strength(self) -> float:
        return self.prior_strength if self.cost_prior_strength is None else self.cost_prior_strength



class SubgroupsPolicy(_Strict):
    """Per-subgroup evaluation (`decision.subgroups`): every pathology on every evaluation set, split by each
    attribute and each declared intersection. `age_bands` are the ascending edges in years: [40, 65] makes
    "<40" (age < 40), "40-64" (40 <= age < 65) and "65+" (age >= 65). A group with fewer than `min_positives`
    positives or `min_negatives` negatives for a pathology is reported as too small to judge, with the number of
    positives its AUROC interval would need to be no wider than ± `margin` (None: the gate's noninferiority
    margin); it is never dropped.

    The subgroup gate (`decision.gate_subgroups`, on when `gate`): in every judgeable group, a one-sided paired
    test of harm vs the parent — AUROC below -`margin` (paired DeLong), and with `gate_recall` recall at the
    operating point below the parent's (exact test on the discordant positives) — on the report's pathology
    (`gate_pathologies = "all"`: every evaluable pathology), Holm across the family at `gate.alpha`."""

    enabled: bool = True
    attributes: list[Literal["sex", "age_band", "view", "site"]] = ["sex", "age_band", "view", "site"]
    age_bands: list[int] = [40, 65]
    intersections: list[list[Literal["sex", "age_band", "view", "site"]]] = [["sex", "age_band"]]
    min_positives: int = Field(10, ge=1)
    min_negatives: int = Field(10, ge=1)
    margin: Rate | None = None
    gate: bool = True
    gate_pathologies: Literal["target", "all"] = "target"
    gate_recall: bool = True

    @field_validator("age_bands")
    @classmethod
    def _bands(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v) or any(b2 <= b1 for b1, b2 in itertools.pairwise(v)):
            raise ValueError("age_bands are strictly ascending positive ages in years")
        return v

    @field_validator("intersections")
    @classmethod
    def _pairs(cls, v: list[list[str]]) -> list[list[str]]:
        for combo in v:
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(f"an intersection names two or more distinct attributes, got {combo}")
        return v


class NotifySmtp(_Strict):
    """E-mail through SMTP (`decision.notify_email`). `host` empty: `$DECIDE_SMTP_URL` (smtp://[user@]host:port
    or smtps://…), else no e-mail. STARTTLS whenever the server offers it, required unless the host is the
    loopback; `ssl`: TLS from the first byte (port 465). The password is a reference, never a value."""

    host: str = ""
    port: int = Field(587, ge=1, le=65535)
    user: str = ""
    password: str = ""  # env:NAME or file:/PATH (the worker reads it when it sends); "": no login
    sender: str = Field("cxr-decide@localhost", min_length=3)
    ssl: bool = False
    timeout_s: float = Field(10.0, gt=0, le=120)

    @field_validator("password")
    @classmethod
    def _reference(cls, v: str) -> str:
        if v and not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/.{1,510}", v):
            raise ValueError("a password is a reference, env:NAME or file:/PATH, never the value itself")
        return v


class NotifyEndpoint(_Strict):
    """An endpoint declared in the policy, upserted by `decide notify sync` (keyed by url and site): an
    https:// webhook (secret: env:NAME or file:/PATH — a key is never written in a policy file) or
    mailto:ADDRESS (no secret)."""

    url: str = Field(min_length=8, max_length=2048)
    events: list[Annotated[str, Field(pattern=r"^[a-z_]+\.[a-z_]+$")]] = []  # empty: every type
    site: str = ""  # "": every site
    secret: str = ""

    @model_validator(mode="after")
    def _secret(self) -> NotifyEndpoint:
        mail = self.url.startswith("mailto:")
        if mail and self.secret:
            raise ValueError("a mailto: endpoint has no secret")
        if not mail and not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/.{1,510}", self.secret):
            raise ValueError("a webhook's secret is a reference, env:NAME or file:/PATH (never the key itself)")
        return self


class NotifyPolicy(_Strict):
    """Notifications (`decision.notify`): Alertmanager-style grouping per (event type, site, pathology) at
    fan-out — the first event of a group waits `group_wait_s`, later ones go out with the group's next
    batch, at least `group_interval_s` after the last; an event identical (type, site, pathology, summary)
    to one sent within `repeat_interval_s` is collapsed into it (recorded, not sent) — SMTP settings and
    declared endpoints. Not part of the policy digest: it changes no decision."""

    group_wait_s: float = Field(30.0, ge=0, le=86400)
    group_interval_s: float = Field(300.0, ge=0, le=86400)
    repeat_interval_s: float = Field(14400.0, ge=0, le=7 * 86400)
    smtp: NotifySmtp = NotifySmtp()
    endpoints: list[NotifyEndpoint] = []


class Policy(_Strict):
    """A whole decision policy; `policies.policy_digest` identifies it in the audit trail."""

    name: str = "default"
    version: int = Field(1, ge=1)
    description: str = ""
    treatments: dict[str, TreatmentPolicy]
    slos: SLOs = SLOs()
    gate: GatePolicy = GatePolicy()
    calibration: CalibrationPolicy = CalibrationPolicy()
    learning: Learning = Learning()
    approvals: ApprovalPolicy = ApprovalPolicy()
    diagnosis: DiagnosisPolicy = DiagnosisPolicy()
    label_free: LabelFreePolicy = LabelFreePolicy()
    site_groups: SiteGroupsPolicy = SiteGroupsPolicy()
    subgroups: SubgroupsPolicy = SubgroupsPolicy()
    #: delivery settings, not decision rules: left out of the digest (`exclude`)
    notify: NotifyPolicy = Field(NotifyPolicy(), exclude=True)

    @field_validator("treatments")
    @classmethod
    def _names(cls, v: dict[str, TreatmentPolicy]) -> dict[str, TreatmentPolicy]:
        bad = [k for k in v if not _NAME.match(k)]
        if bad:
            raise ValueError(f"treatment names must be snake_case: {', '.join(bad)}")
        return v

    def treatment(self, name: str) -> TreatmentPolicy | None:
        return self.treatments.get(name)

    def unknown_treatments(self, installed) -> list[str]:
        """Policy entries with no installed plugin among `installed` (a likely typo), sorted."""
        return sorted(set(self.treatments) - set(installed))
