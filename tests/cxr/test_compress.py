"""Lossless compression, the generalised spec and float16 storage.

The constructed cases set BatchNorm affine parameters so that bottleneck channels are constant:
zero (removed without a trace), non-zero with a centre-only conv2 kernel (absorbed downstream) and
non-zero with a full kernel (kept: naive removal is shown to break the border pixels). Interval
bounds are checked against a brute-force search for the largest activation on random inputs.
"""

import numpy as np
import pytest
import torch

from cxr.channel_slicing import Keep, apply_keep, fold_norm2
from cxr.compress import bottleneck_bounds, compress_lossless, find_removable, max_abs_dlogit
from cxr.model import build_model, parameter_count
from cxr.spec import ArchSpec, preset
from cxr.weights import from_bytes, to_bytes


def _realistic(spec: ArchSpec, seed: int = 0) -> torch.nn.Module:
    """A model with BatchNorm statistics like a trained one (random init leaves them at 0/1)."""
    m = build_model(spec, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.uniform_(0.5, 1.5, generator=g)
                mod.bias.normal_(0, 0.2, generator=g)
    return m


def _batches(spec: ArchSpec, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = spec.resolution
    return [(torch.rand(8, spec.in_channels, r, r, generator=g) * 2 - 1) * 1024 for _ in range(n)]


def _rebuilt(spec, state):
    m = build_model(spec)
    m.load_state_dict(state, strict=True)
    return m.eval()


@pytest.fixture
def planted():
    """compact-sized model with planted constant channels in denseblock2.denselayer2."""
    m = _realistic(preset("compact"))
    layer = m.features.denseblock2.denselayer2
    with torch.no_grad():
        layer.norm2.weight[:6] = 0.0
        layer.norm2.bias[:3] = -0.5  # constant zero after relu: channels 0-2
        layer.norm2.bias[3:6] = 0.7  # constant 0.7: channels 3-5
        layer.conv2.weight[:, 4] = 0.0  # channel 4: centre tap only
        layer.conv2.weight[:, 4, 1, 1] = torch.linspace(-1, 1, layer.conv2.out_channels)
    return m


def test_constant_channels_are_classified_and_removed_losslessly(planted):
    found = {f.key: f for f in find_removable(planted)}["denseblock2.denselayer2"]
    assert found.constant_zero == (0, 1, 2)
    assert found.constant_folded == (4,)
    assert set(found.constant_kept) == {3, 5}
    c = compress_lossless(planted)
    assert c.removed_per_layer["denseblock2.denselayer2"] == 4
    assert c.spec.kept_channels["denseblock2.denselayer2"] == planted.spec.bottleneck(2, 2) - 4
    assert all(c.spec.is_compressed_layer(b, i) for b, i in [(1, 1), (4, 4)])  # norm2 folded everywhere
    assert c.parameters_after < c.parameters_before == parameter_count(planted)
    small = _rebuilt(c.spec, c.state)
    assert parameter_count(small) == c.parameters_after
    with torch.no_grad():
        scale = float(planted(_batches(planted.spec)[0]).abs().max())
    assert max_abs_dlogit(planted, small, _batches(planted.spec)) <= 1e-6 * max(scale, 1.0)
    assert isinstance(small.features.denseblock2.denselayer2.norm2, torch.nn.Identity)


def test_zero_and_nonzero_constants_on_a_trained_scale_model_keep_logits_within_1e5():
    """Logits of a trained model's size (|z| ~ 10): max |Δlogit| ≤ 1e-5 for both kinds of constant."""
    spec = preset("tiny")
    m = _realistic(spec, seed=1)
    with torch.no_grad():
        m.classifier.weight.mul_(1e-3)  # bring logits to a trained model's scale
        layer = m.features.denseblock3.denselayer1
        layer.norm2.weight[:3] = 0.0
        layer.norm2.bias[0] = 0.0  # exactly zero
        layer.norm2.bias[1] = -2.0
        layer.norm2.bias[2] = 1.5  # non-zero constant, centre-only kernel → absorbed
        layer.conv2.weight[:, 2] = 0.0
        layer.conv2.weight[:, 2, 1, 1] = 0.8
    c = compress_lossless(m)
    assert c.removed_per_layer["denseblock3.denselayer1"] == 3
    small = _rebuilt(c.spec, c.state)
    assert max_abs_dlogit(m, small, _batches(spec, 4)) <= 1e-5


def test_naive_removal_of_a_nonzero_constant_breaks_the_border(planted):
    """Why a constant > 0 with a full 3×3 kernel is kept: dropping it, even with the interior shift
    absorbed downstream, changes the output (the zero-padded border sees fewer taps)."""
    spec, state = fold_norm2(planted.spec, planted.state_dict())
    key = "denseblock2.denselayer2"
    n = spec.bottleneck(2, 2)
    k = 0.7
    w2 = state[f"features.{key}.conv2.weight"].double()
    d = (w2[:, 3].sum(dim=(1, 2)) * k)  # the interior contribution of channel 3
    offset = spec.widths()[1][1]
    for j in range(3, spec.block_config[1] + 1):
        rm = state[f"features.denseblock2.denselayer{j}.norm1.running_mean"]
        rm[offset:offset + len(d)] -= d.float()
    state["features.transition2.norm.running_mean"][offset:offset + len(d)] -= d.float()
    naive_spec, naive_state = apply_keep(spec, state, Keep(bottleneck={key: np.array([c for c in range(n) if c != 3])}))
    naive = _rebuilt(naive_spec, naive_state)
    assert max_abs_dlogit(planted, naive, _batches(planted.spec)) > 1e-3


def test_interval_bounds_contain_every_activation_and_find_dead_channels():
    spec = preset("tiny")
    m = _realistic(spec, seed=2)
    with torch.no_grad():  # a channel dead by interval only: negative weights into a positive-scale BN
        layer = m.features.denseblock1.denselayer1
        layer.conv1.weight[0] = -layer.conv1.weight[0].abs()
        layer.norm2.running_mean[0] = -0.01
        layer.norm2.bias[0] = -0.5
        layer.norm2.weight[0] = 1.0
    bounds = bottleneck_bounds(m)
    lo, hi = bounds["denseblock1.denselayer1"]
    assert hi[0] <= 0 and lo[0] < hi[0]
    # brute force: activations on random and extreme inputs stay inside the bounds
    acts = []
    hook = layer.norm2.register_forward_hook(lambda _m, _i, out: acts.append(out.detach().clone()))
    g = torch.Generator().manual_seed(0)
    xs = [(torch.rand(16, 1, 32, 32, generator=g) * 2 - 1) * 1024,
          torch.where(torch.rand(16, 1, 32, 32, generator=g) < 0.5, -1024.0, 1024.0)]
    with torch.no_grad():
        for x in xs:
            m(x)
    hook.remove()
    a = torch.cat(acts)
    tol = 1e-5 * np.abs(np.stack([lo, hi])).max(0) + 1e-4  # float32 activations vs float64 bounds
    assert (a.amax(dim=(0, 2, 3)).numpy() <= hi + tol).all()
    assert (a.amin(dim=(0, 2, 3)).numpy() >= lo - tol).all()
    found = {f.key: f for f in find_removable(m)}["denseblock1.denselayer1"]
    assert 0 in found.interval_dead
    c = compress_lossless(m)
    with torch.no_grad():
        scale = max(1.0, float(m(xs[0]).abs().max()))
    assert max_abs_dlogit(m, _rebuilt(c.spec, c.state), xs) <= 1e-4 * scale


def test_spec_digests_of_existing_specs_are_unchanged():
    """Digests computed by the code before the spec grew pruning / dtype fields (registry rows hold them)."""
    assert preset("densenet121").digest() == "fe9944a94e97b588e999f20b9c13d7fbd1812b36a02f760300248b3145bd4a14"
    assert preset("compact").digest() == "5e446f4900645ade5f288ae9f746f502aed4aa0c1375271e9c6729c112fa7e26"
    assert preset("tiny").digest() == "4cb7c0d3bc80245b57b04e32126e58474f05f278761fc9d6b153ee2c92df6892"
    old = preset("tiny").model_copy(update={"kept_channels": {"denseblock1.denselayer1": 3}})
    assert old.digest() == "c6337c28562345489731149deb04459a416748a9720ce6901e864c06a048df44"
    assert "growth_channels" not in old.to_json() and "dtype" not in old.to_json()
    new = old.model_copy(update={"growth_channels": {"denseblock1.denselayer1": 2}, "dtype": "float16"})
    assert ArchSpec.from_json(new.to_json()) == new and new.digest() != old.digest()


def test_pruned_spec_builds_the_described_widths():
    spec = preset("tiny").model_copy(update={
        "growth_channels": {"denseblock1.denselayer1": 2, "denseblock4.denselayer1": 3},
        "transition_channels": {"transition2": 3}})
    spec = ArchSpec.from_json(spec.to_json())
    m = build_model(spec).eval()
    assert m.features.denseblock1.denselayer1.conv2.out_channels == 2
    assert m.features.transition1.norm.num_features == 8 + 2
    assert m.features.transition2.conv.out_channels == 3
    assert m.classifier.in_features == spec.num_features == spec.widths()[-1][-1]
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 18)


@pytest.mark.parametrize(("update", "match"), [
    ({"growth_channels": {"denseblock1.denselayer1": 99}}, "growth_channels"),
    ({"growth_channels": {"denseblock9.denselayer1": 1}}, "growth_channels"),
    ({"transition_channels": {"transition4": 2}}, "transition_channels"),
    ({"dtype": "int8"}, "onnxruntime"),
])
def test_invalid_pruned_specs_are_refused(update, match):
    from cxr.errors import InvalidInput

    with pytest.raises(InvalidInput, match=match):
        ArchSpec.from_json(preset("tiny").model_dump(mode="json") | update)


def test_float16_storage_halves_the_file_and_loads_as_float32():
    spec = preset("compact")
    m = _realistic(spec, seed=3)
    data32, _ = to_bytes(spec, m.state_dict())
    data16, w16 = to_bytes(spec.model_copy(update={"dtype": "float16"}), m.state_dict())
    assert len(data16) < 0.56 * len(data32)
    loaded = from_bytes(data16)
    assert loaded.weights_sha256 == w16.weights_sha256
    assert all(t.dtype in (torch.float32, torch.int64) for t in loaded.state.values())
    assert all(torch.equal(loaded.state[k], w16.state[k]) for k in loaded.state)
    x = _batches(spec, 1)[0]
    with torch.no_grad():
        rel = (loaded.model()(x) - m(x)).abs().max() / m(x).abs().max()
    assert 0 < rel < 1e-2
    tampered = bytearray(data16)
    tampered[-3] ^= 0x10
    from cxr.errors import IntegrityFailure

    with pytest.raises(IntegrityFailure):
        from_bytes(bytes(tampered))
