"""Structured pruning: channel slicing through every consumer, importance vs finite differences,
dual intervention, parameter budgets, least-squares reconstruction."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.channel_slicing import Keep, apply_keep, fold_norm2
from cxr.compress import max_abs_dlogit
from cxr.model import build_model, parameter_count
from cxr.prune import (
    channel_importance,
    prune_and_reconstruct,
    pruned_spec,
    ratio_for_parameters,
    select,
)
from cxr.reconstruct import reconstruct
from cxr.spec import preset


def _images(n, seed=0, r=32):
    return (np.random.default_rng(seed).random((n, 1, r, r), dtype=np.float32) * 2 - 1) * 1024


def calibrated(spec, seed=0):
    """Random weights, BatchNorm statistics of its own activations, logits spread like a trained model's."""
    m = build_model(spec, seed=seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        for k in range(4):
            m(torch.from_numpy(_images(32, 100 + k, spec.resolution)))
        m.eval()
        m.classifier.weight.mul_(2.0 / float(m(torch.from_numpy(_images(64, 99, spec.resolution))).std()))
    return m


def _model(spec, state):
    m = build_model(spec)
    m.load_state_dict(state, strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def folded():
    spec = preset("tiny").model_copy(update={"growth_rate": 6, "block_config": (2, 2, 2, 2)})
    m = calibrated(spec)
    s2, st = fold_norm2(m.spec, m.state_dict())
    return m, _model(s2, st)


def test_removing_a_silent_growth_channel_is_exact_through_every_consumer(folded):
    """A growth channel every consumer ignores (zero norm1/norm/norm5 affine) can go: if any consumer's
    slice were wrong, the outputs would change."""
    _, m = folded
    spec = m.spec
    state = {k: v.clone() for k, v in m.state_dict().items()}
    silenced = {"denseblock1.denselayer1": 2, "denseblock4.denselayer1": 4}
    for key, g in silenced.items():
        b, i = int(key[10]), int(key[-1])
        idx = spec.widths()[b - 1][i - 1] + g
        consumers = [f"features.denseblock{b}.denselayer{j}.norm1." for j in range(i + 1, 3)]
        consumers.append(f"features.transition{b}.norm." if b < 4 else "features.norm5.")
        for c in consumers:
            state[c + "weight"][idx] = 0.0
            state[c + "bias"][idx] = 0.0
    ref = _model(spec, state)
    keep = Keep(growth={k: np.array([j for j in range(6) if j != g]) for k, g in silenced.items()},
                bottleneck={"denseblock2.denselayer1": np.array([0, 3, 5])})
    # the removed bottleneck channels are silenced too (zero conv2 columns)
    state["features.denseblock2.denselayer1.conv2.weight"][:, [1, 2, 4]] = 0.0
    for j in (1, 2, 4, 6, 7, 8, 9, 10, 11):
        state["features.denseblock2.denselayer1.conv1.bias"][j] = -1.0  # and dead: relu(−1) = 0
        state["features.denseblock2.denselayer1.conv1.weight"][j] = 0.0
    keep.bottleneck["denseblock2.denselayer1"] = np.array([0, 3, 5])
    ref = _model(spec, state)
    s2, st2 = apply_keep(spec, state, keep)
    small = _model(s2, st2)
    assert s2.growth_channels == {"denseblock1.denselayer1": 5, "denseblock4.denselayer1": 5}
    assert s2.kept_channels["denseblock2.denselayer1"] == 3
    assert parameter_count(small) < parameter_count(ref)
    x = [torch.from_numpy(_images(8, 5))]
    assert max_abs_dlogit(ref, small, x) < 1e-5


def test_fisher_importance_matches_finite_differences(folded):
    """G_n = dL_n/dgate for a growth channel equals the derivative of image n's loss when the channel's
    conv2 row is scaled by (1 ± eps): an independent computation of the same quantity."""
    _, m = folded
    x = _images(6, 7)
    rng = np.random.default_rng(0)
    y = (rng.random((6, 18)) < 0.3).astype(np.float32)
    imp = channel_importance(m, x, y, method="fisher", batch_size=3)
    key, g, eps = "denseblock3.denselayer2", 1, 1e-3
    w_name = f"features.{key}.conv2.weight"

    def losses(scale):
        state = {k: v.clone() for k, v in m.state_dict().items()}
        state[w_name][g] *= scale
        with torch.no_grad():
            z = _model(m.spec, state)(torch.from_numpy(x)).double()
        return F.binary_cross_entropy_with_logits(z, torch.from_numpy(y).double(), reduction="none").sum(1)

    grad = (losses(1 + eps) - losses(1 - eps)) / (2 * eps)
    fisher = float((grad ** 2).mean())
    assert imp.growth[key][g] == pytest.approx(fisher, rel=2e-2, abs=1e-8)
    taylor = channel_importance(m, x, y, method="taylor", batch_size=6)
    assert taylor.growth[key][g] == pytest.approx(float(grad.mean() ** 2), rel=2e-2, abs=1e-8)
    assert not imp.dual


def test_dual_intervention_raises_only_the_adapted_channel(folded):
    raw, m = folded
    x, y = _images(8, 3), (np.random.default_rng(1).random((8, 18)) < 0.3).astype(np.float32)
    plain = channel_importance(m, x, y)
    same = channel_importance(m, x, y, reference=raw.state_dict(), reference_spec=raw.spec)
    assert same.dual
    for key in plain.growth:  # resetting to identical weights changes nothing: the scores are the plain ones
        np.testing.assert_allclose(same.growth[key], plain.growth[key], rtol=1e-6, atol=1e-12)
    ref = {k: v.clone() for k, v in raw.state_dict().items()}
    ref["features.denseblock3.denselayer1.conv2.weight"][2] *= -1.0  # adaptation flipped this channel
    dual = channel_importance(m, x, y, reference=ref, reference_spec=raw.spec)
    assert dual.growth["denseblock3.denselayer1"][2] > plain.growth["denseblock3.denselayer1"][2]
    others = [k for k in plain.growth if k != "denseblock3.denselayer1"]
    for key in others:
        np.testing.assert_allclose(dual.growth[key], plain.growth[key], rtol=1e-6, atol=1e-12)
    mismatched = channel_importance(m, x, y, reference=build_model(preset("tiny")).state_dict(),
                                    reference_spec=preset("tiny"))
    assert not mismatched.dual


def test_parameter_budget_gives_the_largest_fitting_ratio(folded):
    _, m = folded
    imp = channel_importance(m, _images(8, 1), np.zeros((8, 18), np.float32))
    budget = int(0.6 * parameter_count(m))
    r = ratio_for_parameters(m.spec, imp, budget)
    assert parameter_count(build_model(pruned_spec(m.spec, imp, r))) <= budget
    assert parameter_count(build_model(pruned_spec(m.spec, imp, min(1.0, r + 0.05)))) > budget
    keep = select(m.spec, imp, 0.5)
    assert all(len(v) == 3 for v in keep.growth.values())  # ⌈0.5 × 6⌉
    top = np.argsort(-imp.growth["denseblock2.denselayer2"])[:3]
    assert set(keep.growth["denseblock2.denselayer2"]) == set(top)


def test_reconstruction_recovers_what_pruning_lost(folded):
    _, m = folded
    x = _images(192, 11)
    imp = channel_importance(m, x[:16], (np.random.default_rng(2).random((16, 18)) < 0.3).astype(np.float32))
    keep = select(m.spec, imp, 0.6)
    spec, state = apply_keep(m.spec, m.state_dict(), keep)
    raw = _model(spec, state)
    fixed = _model(spec, {k: v.clone() for k, v in state.items()})
    errors = reconstruct(m, fixed, keep, x, positions=32)
    test = torch.from_numpy(_images(64, 12))  # images the fits never saw
    with torch.no_grad():
        z0 = m(test)
        rms = lambda net: float(((net(test) - z0) ** 2).mean().sqrt() / z0.std())  # noqa: E731
        before, after = rms(raw), rms(fixed)
    assert after < 0.75 * before
    assert set(errors) >= {"denseblock1.denselayer1", "classifier"}
    # nothing pruned: the least-squares fit reproduces the model
    same = _model(m.spec, {k: v.clone() for k, v in m.state_dict().items()})
    reconstruct(m, same, Keep(), x[:64], positions=32, ridge=1e-8)
    with torch.no_grad():
        assert rms(same) < 1e-3


def test_prune_and_reconstruct_end_to_end_within_budget():
    spec = preset("tiny").model_copy(update={"growth_rate": 6})
    m = calibrated(spec, seed=4)
    budget = int(0.5 * parameter_count(m))
    x = _images(48, 21)
    pr = prune_and_reconstruct(m, lambda s, imp: ratio_for_parameters(s, imp, budget), importance_images=x[:16],
                               importance_labels=np.zeros((16, 18), np.float32), reconstruct_images=x, positions=16)
    small = _model(pr.spec, pr.state)
    assert parameter_count(small) <= budget and 0 < pr.ratio < 1
    assert pr.spec.growth_channels and all(pr.spec.is_compressed_layer(b, 1) for b in range(1, 5))
    assert small(torch.from_numpy(x[:2])).shape == (2, 18)
