"""Checks on a decision's ladder shared by the end-to-end tests."""

from __future__ import annotations


def assert_calibration_tried_or_skipped_as_infeasible(order: list[str], rationale: str) -> list[str]:
    """Threshold calibration runs before head retrain, or (issue 20: feasibility before climbing) is skipped
    because no operating point of the parent's scores meets the target within the TP-loss bound, with the best
    reachable FPR in the rationale. Returns the head-level treatments that ran."""
    if "threshold_calibration" in order:
        assert order.index("threshold_calibration") < order.index("head_retrain") < order.index("f_reoptimization")
        return ["threshold_calibration", "head_retrain"]
    assert "threshold_calibration: no operating point of" in rationale and "best FPR at recall" in rationale, rationale
    assert order.index("head_retrain") < order.index("f_reoptimization")
    return ["head_retrain"]
