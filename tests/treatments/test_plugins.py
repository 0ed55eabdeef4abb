"""Plugins come through one door: entry points, checked against the protocol, then planned."""

from decision.planner import ReportView, TreatmentInfo, plan
from policies import load_policy, parse_policy
from tests.toy_plugins import install_plugin
from treatments.plugins import check_treatment, load_treatments


def _install_toy(tmp_path, monkeypatch, body: str, module: str, name: str = "toy"):
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path, body, module, name)))


TOY = """
    from treatments.base import TreatmentResult

    class Toy:
        name = "toy_relabel"
        fixes = frozenset({"false_positives"})
        head_only = True

        def applicable(self, report, planning):
            return True, "always"

        def apply(self, ctx):
            return TreatmentResult(thresholds=dict(ctx.thresholds), notes="nothing really")
"""


def test_builtins_load_through_entry_points():
    loaded = load_treatments()
    assert {"threshold_calibration", "surgical_correction", "head_retrain"} <= set(loaded.treatments)


def test_a_third_party_plugin_is_discovered_and_planned(tmp_path, monkeypatch):
    _install_toy(tmp_path, monkeypatch, TOY, "toy_plugin_ok")
    loaded = load_treatments()
    assert "toy_relabel" in loaded.treatments, loaded.errors
    raw = load_policy().model_dump(mode="json")
    raw["treatments"]["toy_relabel"] = {"prior_cost": 0.5, "fixes": ["false_positives"], "p_success_default": 0.9}
    policy = parse_policy(raw)
    report = ReportView(1, "cxr", 1, "Cardiomegaly", "false_positives", "fpr", 0.4, 0.1, "site-b", True, 10)
    infos = [TreatmentInfo(t.name, t.fixes, True, "") for t in loaded.treatments.values()]
    p = plan(report, infos, policy, [])
    assert p.chosen is not None and p.chosen.treatment == "toy_relabel"  # cheapest, most likely


def test_a_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch):
    _install_toy(tmp_path, monkeypatch, "class Toy:\n    name = 'half'\n", "toy_plugin_broken")
    loaded = load_treatments()
    assert "toy" in loaded.errors and "Treatment protocol" in loaded.errors["toy"]
    assert "threshold_calibration" in loaded.treatments


def test_protocol_check_names_what_is_wrong():
    class Bad:
        name = "bad name"
        fixes = frozenset({"false_positives"})
        head_only = True

        def applicable(self, report, planning):
            return True, ""

        def apply(self, ctx):
            return None

    assert "snake_case" in check_treatment(Bad())
