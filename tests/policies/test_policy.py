"""The policy schema, the bundled default, loading errors with dotted field names, and the digest."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from cxr.errors import InvalidInput, NotFound
from policies import (
    BUILTIN_TREATMENTS,
    ISSUE_KINDS,
    CostModel,
    Policy,
    load_policy,
    parse_policy,
    policy_digest,
    validate_policy_file,
)


def _default_dict() -> dict:
    return tomllib.loads(resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8"))


def test_default_policy_carries_the_papers_cost_matrix():
    policy = load_policy()
    assert isinstance(policy, Policy)
    assert tuple(policy.treatments) == BUILTIN_TREATMENTS
    costs = {name: t.prior_cost for name, t in policy.treatments.items()}
    assert costs == {"no_action": 0, "threshold_calibration": 1, "surgical_correction": 2, "head_retrain": 2,
                     "f_reoptimization": 3, "augmentation_retrain": 8, "full_retrain": 10,
                     "lossless_compression": 1, "quantization": 1.5, "structured_pruning": 3,
                     "distillation": 8, "request_labels": 0.5}  # fmt: skip
    approval = {name for name, t in policy.treatments.items() if t.needs_approval}
    assert approval == {"augmentation_retrain", "full_retrain", "distillation", "request_labels"}
    assert policy.treatments["request_labels"].fixes == ("distribution_shift",)
    surgery = policy.treatments["surgical_correction"]
    assert surgery.preconditions.requires_case_evidence and surgery.fixes == ("false_positives",)
    assert all(set(t.fixes) <= set(ISSUE_KINDS) for t in policy.treatments.values())


def test_prior_p_uses_the_kind_entry_then_the_default():
    t = load_policy().treatments["threshold_calibration"]
    assert t.prior_p("calibration_drift") == 0.8 and t.prior_p("false_positives") == 0.6


def test_slo_overrides_replace_only_the_keys_they_set():
    slos = load_policy().slos
    card, edema = slos.for_pathology("Cardiomegaly"), slos.for_pathology("Edema")
    assert card.max_fpr < slos.default.max_fpr and card.min_recall > slos.default.min_recall
    assert card.min_auroc == edema.min_auroc == slos.default.min_auroc  # not overridden: the default's
    assert edema.min_recall == slos.default.min_recall
    assert edema == slos.default


def test_toml_cost_model_matches_the_documented_defaults():
    assert load_policy().learning.cost_model == CostModel()
    assert load_policy().learning.cost_strength == 2.0


def test_digest_is_stable_canonical_and_sensitive():
    a, b = load_policy(), load_policy()
    assert policy_digest(a) == policy_digest(b) and len(policy_digest(a)) == 64
    data = _default_dict()
    reordered = dict(reversed(list(data.items())))  # key order does not matter
    assert policy_digest(parse_policy(reordered)) == policy_digest(a)
    data["gate"]["noninferiority_margin"] = 0.03
    assert policy_digest(parse_policy(data)) != policy_digest(a)
    changed = a.model_copy(update={"name": "other"})
    assert policy_digest(changed) != policy_digest(a)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["treatments"]["head_retrain"].update(prior_cots=2), "treatments.head_retrain.prior_cots"),
        (lambda d: d["treatments"]["head_retrain"].update(prior_cost=-1), "treatments.head_retrain.prior_cost"),
        (lambda d: d["treatments"]["head_retrain"].update(fixes=["typo"]), "treatments.head_retrain.fixes.0"),
        (lambda d: d["slos"]["pathologies"]["Cardiomegaly"].update(max_fpr=1.5),
         "slos.pathologies.Cardiomegaly.max_fpr"),
        (lambda d: d["slos"]["pathologies"].update(Cardiomegally={"max_fpr": 0.1}), "slos.pathologies"),
        (lambda d: d["gate"].update(margin=0.02), "gate.margin"),
        (lambda d: d["calibration"].update(default_method="magic"), "calibration.default_method"),
        (lambda d: d["learning"].update(prior_strength=0), "learning.prior_strength"),
        (lambda d: d["treatments"]["surgical_correction"].update(p_success={"auroc_drop": 0.5}),
         "treatments.surgical_correction"),
        (lambda d: d["treatments"].update({"Head-Retrain": d["treatments"]["head_retrain"]}), "treatments"),
    ],
)  # fmt: skip
def test_mistakes_are_invalid_input_naming_the_dotted_field(edit, field):
    data = _default_dict()
    edit(data)
    with pytest.raises(InvalidInput) as err:
        parse_policy(data)
    assert err.value.field == field and err.value.exit_code == 2


def test_custom_pathology_names_must_be_declared():
    data = _default_dict()
    data["slos"]["pathologies"]["Tuberculosis"] = {"min_recall": 0.9}
    with pytest.raises(InvalidInput, match="extra_pathologies"):
        parse_policy(data)
    data["slos"]["extra_pathologies"] = ["Tuberculosis"]
    assert parse_policy(data).slos.for_pathology("Tuberculosis").min_recall == 0.9


def test_validate_policy_file_reads_toml_and_reports_file_problems(tmp_path):
    good = tmp_path / "ok.toml"
    good.write_text(resources.files("policies").joinpath("default.toml").read_text(encoding="utf-8"))
    assert policy_digest(validate_policy_file(good)) == policy_digest(load_policy())
    assert policy_digest(load_policy(good)) == policy_digest(load_policy())
    broken = tmp_path / "broken.toml"
    broken.write_text("[treatments\n")
    with pytest.raises(InvalidInput) as err:
        validate_policy_file(broken)
    assert err.value.field == str(broken) and "TOML" in str(err.value)
    typo = tmp_path / "typo.toml"
    typo.write_text("[treatments.x]\nprior_cost = 1\nenabld = true\n")
    with pytest.raises(InvalidInput) as err:
        validate_policy_file(typo)
    assert err.value.field == "treatments.x.enabld" and "unknown key" in str(err.value)
    with pytest.raises(NotFound):
        validate_policy_file(tmp_path / "missing.toml")


def test_a_minimal_policy_gets_safe_defaults():
    policy = parse_policy({"treatments": {"threshold_calibration": {"prior_cost": 1, "fixes": ["false_positives"]}}})
    assert policy.gate.noninferiority_margin == 0.02 and policy.calibration.delta == 0.05
    assert policy.unknown_treatments(["head_retrain"]) == ["threshold_calibration"]
    with pytest.raises(InvalidInput) as err:
        parse_policy({})
    assert err.value.field == "treatments"
