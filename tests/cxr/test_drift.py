"""Label-free window tests: false alarms by simulation, power, and every p-value against an independent reference.

Holm is checked against closed testing by brute force over all subsets; the permutation p-value against
scipy's exact enumeration of the same statistic computed independently; KS p-values against a
combinatorial value and a brute-force enumeration of the permutation distribution of D.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest, permutation_test

from cxr.drift import EMBEDDING, drift_reference, holm, median_bandwidth, mmd_permutation, window_drift
from cxr.errors import InvalidInput

ALPHA = 0.05
B = 399  # 19 tests at 0.05: the embedding test can reject alone once 1/(B+1) <= 0.05/19, i.e. B >= 379
P, LATENT, F = 18, 2, 16
NAMES = tuple(f"finding{j}" for j in range(P))
N_REF, M_REF = 300, 150


def _world(seed: int = 99):
    """A fixed 'network': features and 18 correlated output logits driven by the same 2-d latent study factors."""
    g = np.random.default_rng(seed)
    return g.normal(size=(LATENT, F)) / math.sqrt(LATENT), 0.6 * g.normal(size=(LATENT, P)), g.normal(size=P) - 1.5


def _studies(rng, n, world, feature_shift=0.0, score_shift=0.0):
    a, c, b = world
    z = rng.normal(size=(n, LATENT))
    features = z @ a + 0.5 * rng.normal(size=(n, F)) + feature_shift
    logits = z @ c + 0.2 * rng.normal(size=(n, P)) + b
    logits[:, 2] += score_shift  # finding2, whose logit has sd 1.2 in this world
    return 1.0 / (1.0 + np.exp(-logits)), features


def _reference(rng, world):
    scores, _ = _studies(rng, N_REF, world)
    _, features = _studies(rng, M_REF, world)
    return drift_reference(scores, features, NAMES)


def _windows(seed, n, count, **shift):
    """`count` windows of n studies, each against a fresh reference: the guarantee is over both draws."""
    rng, world = np.random.default_rng(seed), _world()
    out = []
    for _ in range(count):
        ref = _reference(rng, world)
        out.append(window_drift(ref, *_studies(rng, n, world, **shift), rng=rng, n_permutations=B))
    return out


@pytest.fixture(scope="module")
def null_windows():
    return {n: _windows(1000 + n, n, 200) for n in (50, 200)}


def _raw(result, name):
    return next(t.p_value for t in result.tests if t.name == name)


@pytest.mark.slow
@pytest.mark.parametrize("n", [50, 200])
def test_window_false_alarm_rate_is_at_most_alpha_for_every_window_size(null_windows, n):
    runs = null_windows[n]
    alarms = sum(r.shifted for r in runs)
    # A valid rule (FAR <= 0.05) exceeds this count with probability <= 1 %, whatever its true rate.
    limit = binom.isf(0.01, len(runs), ALPHA)
    assert alarms <= limit
    assert binomtest(alarms, len(runs)).proportion_ci(method="wilson").low <= ALPHA
    # The simulation has teeth: the same windows without the multiplicity correction alarm far too often.
    uncorrected = sum(min(t.p_value for t in r.tests) <= ALPHA for r in runs)
    assert uncorrected > 3 * limit


@pytest.mark.slow
def test_false_alarm_rate_meets_the_acceptance_bound_over_both_sizes(null_windows):
    runs = null_windows[50] + null_windows[200]
    alarms = sum(r.shifted for r in runs)
    assert alarms / len(runs) <= ALPHA
    assert binomtest(alarms, len(runs)).proportion_ci(method="wilson").high <= 0.08


@pytest.mark.slow
def test_null_p_values_of_each_kind_are_uniform_or_conservative(null_windows):
    runs = null_windows[50] + null_windows[200]
    mmd = np.array([_raw(r, EMBEDDING) for r in runs])
    ks = np.array([[_raw(r, name) for name in NAMES] for r in runs])
    for u in (0.05, 0.1, 0.25):
        # windows are independent: a binomial bound per output is exact; averaging outputs only tightens it
        assert (mmd <= u).sum() <= binom.isf(0.005, mmd.size, u)
        assert (ks <= u).mean() <= binom.isf(0.005, len(runs), u) / len(runs)
    assert (mmd <= 0.5).mean() == pytest.approx(0.5, abs=0.08) and (ks <= 0.5).mean() == pytest.approx(0.5, abs=0.08)


def test_a_modest_feature_shift_is_found_by_the_embedding_test():
    runs = _windows(7, 200, 40, feature_shift=0.3)  # every feature by about a third of its sd; scores unmoved
    assert sum(r.shifted for r in runs) >= 0.9 * len(runs)
    assert sum(EMBEDDING in r.rejected for r in runs) >= 0.9 * len(runs)


def test_a_score_shift_on_one_output_is_found_and_named_worst():
    runs = _windows(8, 200, 40, score_shift=0.7)  # 0.57 standard deviations of finding2's logit
    assert sum(r.shifted for r in runs) >= 0.9 * len(runs)
    assert sum(r.worst.name == "finding2" for r in runs) >= 0.9 * len(runs)
    r = runs[0]
    assert [t.p_adjusted for t in r.tests] == sorted(t.p_adjusted for t in r.tests)
    assert r.rejected == tuple(t.name for t in r.tests if t.rejected)
    assert "finding2" in r.summary and r.summary.startswith("Shift in 200 studies")


# --- Holm against closed testing -------------------------------------------------------------------


def _closed_testing(p):
    """Adjusted p of H_i by closed testing with Bonferroni local tests: max over subsets S containing i."""
    k = len(p)
    adj = []
    for i in range(k):
        worst = 0.0
        for size in range(1, k + 1):
            for subset in itertools.combinations(range(k), size):
                if i in subset:
                    worst = max(worst, min(1.0, size * min(p[j] for j in subset)))
        adj.append(worst)
    return np.array(adj)


def test_holm_by_hand_where_holm_and_bonferroni_differ():
    p = [0.5, 0.016, 0.6, 0.01]
    adjusted = holm(p)
    # sorted: 0.01 -> 4 * 0.01 = 0.04; 0.016 -> 3 * 0.016 = 0.048 (just under 0.05); 0.5 -> 1.0; 0.6 -> 1.0
    assert adjusted == pytest.approx([1.0, 0.048, 1.0, 0.04])
    assert list(adjusted <= ALPHA) == [False, True, False, True]
    assert [4 * q <= ALPHA for q in p] == [False, False, False, True]  # Bonferroni keeps 0.016
    assert list(holm([0.5, 0.017, 0.6, 0.01]) <= ALPHA) == [False, False, False, True]  # 3 * 0.017 > 0.05


def test_holm_matches_closed_testing_on_random_and_tied_p_values():
    rng = np.random.default_rng(3)
    cases = [rng.uniform(0, 0.1, size=k) for k in (1, 2, 5, 8)] + [np.array([0.02, 0.02, 0.02, 0.9])]
    cases += [np.round(rng.uniform(0, 0.06, size=6), 3) for _ in range(5)]
    for p in cases:
        assert holm(p) == pytest.approx(_closed_testing(p), abs=1e-15)


def test_window_adjusted_p_values_are_closed_testing_of_its_raw_ones():
    rng, world = np.random.default_rng(4), _world()
    ref = _reference(rng, world)
    names = (*NAMES[:5], None, "", *NAMES[7:9])  # unnamed outputs are not tested
    small = drift_reference(ref.scores[:, :9], ref.features, names)
    scores, features = _studies(rng, 60, world, score_shift=0.5)
    r = window_drift(small, scores[:, :9], features, rng=rng, alpha=0.1, n_permutations=B)
    assert {t.name for t in r.tests} == {*NAMES[:5], *NAMES[7:9], EMBEDDING} and len(r.tests) == 8
    expected = _closed_testing([t.p_value for t in r.tests])
    assert [t.p_adjusted for t in r.tests] == pytest.approx(list(expected), abs=1e-15)
    assert [t.rejected for t in r.tests] == [a <= 0.1 for a in expected]
    assert "8 tests" in r.family and "7 named outputs" in r.family


# --- the permutation MMD ----------------------------------------------------------------------------


def _mmd2_loops(x, y, h):
    """Biased MMD² written out from its definition, pair by pair."""

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * h * h))

    kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
    kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2 * kxy


def test_mmd_statistic_and_bandwidth_match_their_definitions():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(9, 3)), rng.normal(0.5, 1.0, size=(6, 3))
    h = median_bandwidth(x)
    assert h == pytest.approx(np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(x, 2)]))
    assert mmd_permutation(x, y, h, 9, rng).statistic == pytest.approx(_mmd2_loops(x, y, h), rel=1e-10)


def test_mmd_p_value_matches_scipys_exact_enumeration():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 2)), rng.normal(0.8, 1.0, size=(4, 2))
    h, pooled = median_bandwidth(x), np.vstack([x, y])
    exact = permutation_test(  # scipy permutes row numbers; the statistic looks the rows up
        (np.arange(6), np.arange(6, 10)), lambda a, b: _mmd2_loops(pooled[a], pooled[b], h),
        permutation_type="independent", vectorized=False, n_resamples=np.inf, alternative="greater",
    )  # fmt: skip
    assert 0.02 < exact.pvalue < 0.5  # an informative case, C(10, 4) = 210 labellings
    res = mmd_permutation(x, y, h, 20_000, np.random.default_rng(7))
    assert res.statistic == pytest.approx(exact.statistic, rel=1e-10)
    # Monte Carlo (b + 1) / (B + 1) around the exact value: within 4 binomial standard errors
    assert abs(res.p_value - exact.pvalue) <= 4 * math.sqrt(exact.pvalue * (1 - exact.pvalue) / 20_000) + 1e-4


def test_mmd_p_value_is_never_zero_and_counts_the_observed_labelling():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 10.0  # completely separated
    res = mmd_permutation(x, y, median_bandwidth(x), 99, rng)
    assert (res.n_exceed, res.p_value) == (0, 0.01)
    same = mmd_permutation(x, x[:20].copy(), median_bandwidth(x), 99, rng)
    assert 0 < same.p_value <= 1


# --- KS p-values against independent values ---------------------------------------------------------


def _one_output_reference(ref_scores, rng, m=8):
    return drift_reference(np.asarray(ref_scores, float)[:, None], rng.normal(size=(m, 2)), ["Effusion"])


def _ks_enumerated(a, b):
    """Exact permutation p of the two-sample KS D: every split of the pooled values, counted."""
    pooled, n = np.r_[a, b], len(b)
    grid = np.sort(np.unique(pooled))

    def d(win_idx):
        mask = np.zeros(pooled.size, bool)
        mask[list(win_idx)] = True
        fa = np.searchsorted(np.sort(pooled[~mask]), grid, "right") / (~mask).sum()
        fb = np.searchsorted(np.sort(pooled[mask]), grid, "right") / n
        return np.max(np.abs(fa - fb))

    observed = d(range(len(a), pooled.size))
    splits = list(itertools.combinations(range(pooled.size), n))
    return sum(d(s) >= observed - 1e-12 for s in splits) / len(splits)


def test_ks_p_value_for_separated_samples_is_the_combinatorial_value():
    rng = np.random.default_rng(9)
    ref = _one_output_reference(np.linspace(0.1, 0.2, 5), rng)
    r = window_drift(ref, np.linspace(0.6, 0.7, 5)[:, None], rng.normal(size=(5, 2)), rng=rng, n_permutations=99)
    ks = next(t for t in r.tests if t.name == "Effusion")
    # D = 1 is reached by 2 of the C(10, 5) = 252 equally likely splits (all low or all high)
    assert ks.statistic == 1.0 and ks.p_value == pytest.approx(2 / 252) and ks.method == "ks_2samp exact"


@pytest.mark.parametrize("decimals", [None, 1])
def test_ks_p_value_against_brute_force_enumeration_exact_or_conservative_with_ties(decimals):
    rng = np.random.default_rng(10)
    a, b = rng.uniform(size=7), rng.uniform(0.2, 1.2, size=5)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    ref = _one_output_reference(a, rng)
    r = window_drift(ref, b[:, None], rng.normal(size=(5, 2)), rng=rng, n_permutations=99)
    p = next(t.p_value for t in r.tests if t.name == "Effusion")
    brute = _ks_enumerated(a, b)
    if decimals is None:
        assert p == pytest.approx(brute, rel=1e-9)
    else:  # ties: the continuous null bounds the discrete one, so the p-value can only be larger
        assert p >= brute - 1e-12


# --- how much each study moved -----------------------------------------------------------------------


def test_witness_matches_its_definition():
    rng = np.random.default_rng(11)
    ref = drift_reference(rng.uniform(size=(10, 1)), rng.normal(size=(7, 3)), ["Edema"])
    win = rng.normal(size=(5, 3)) + 0.3
    r = window_drift(ref, rng.uniform(size=(5, 1)), win, rng=rng, n_permutations=99)
    h = ref.bandwidth

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * h * h))

    for i, z in enumerate(win):
        others = [k(z, w) for j, w in enumerate(win) if j != i]
        expected = sum(others) / len(others) - sum(k(z, x) for x in ref.features) / len(ref.features)
        assert r.witness[i] == pytest.approx(expected, abs=1e-12)
    assert sorted(r.most_shifted) == list(range(5))
    assert [r.witness[i] for i in r.most_shifted] == sorted(r.witness, reverse=True)


@pytest.mark.parametrize("max_window", [1000, 120])
def test_the_moved_studies_are_listed_first_also_when_the_window_is_subsampled(max_window):
    rng, world = np.random.default_rng(12), _world()
    ref = _reference(rng, world)
    scores, features = _studies(rng, 400, world)
    moved = rng.choice(400, size=40, replace=False)
    features[moved] += 1.5
    r = window_drift(ref, scores, features, rng=np.random.default_rng(13), n_permutations=B, max_window=max_window)
    assert r.n_window == 400 and len(r.witness) == 400 and all(map(math.isfinite, r.witness))
    assert r.n_embedding_window == min(400, max_window)
    assert len(set(r.most_shifted[:40]) & set(moved.tolist())) >= 36
    again = window_drift(ref, scores, features, rng=np.random.default_rng(13), n_permutations=B, max_window=max_window)
    assert again == r  # seeded: the same generator gives the same verdict, subsample and witness


# --- degenerate inputs -------------------------------------------------------------------------------


def test_a_constant_output_is_tested_and_says_so():
    rng, world = np.random.default_rng(14), _world()
    ref = _reference(rng, world)
    scores, features = _studies(rng, 50, world)
    ref_scores = ref.scores.copy()
    ref_scores[:, 3] = 0.5
    const = drift_reference(ref_scores, ref.features, NAMES)
    scores[:, 3] = 0.5
    same = window_drift(const, scores, features, rng=rng, n_permutations=B)
    t3 = next(t for t in same.tests if t.name == "finding3")
    assert t3.p_value == 1.0 and not t3.rejected and t3.note == "constant scores in reference and window"
    scores[:, 3] = 0.9
    moved = window_drift(const, scores, features, rng=rng, n_permutations=B)
    t3 = moved.worst
    assert t3.name == "finding3" and t3.statistic == 1.0 and t3.rejected and t3.note == "constant scores, moved"


def test_a_window_of_one_study_and_non_finite_rows_are_refused_by_name():
    rng, world = np.random.default_rng(15), _world()
    ref = _reference(rng, world)
    scores, features = _studies(rng, 30, world)
    with pytest.raises(InvalidInput, match="at least 2 studies") as err:
        window_drift(ref, scores[:1], features[:1], rng=rng)
    assert err.value.field == "window scores" and err.value.exit_code == 2
    features[[4, 9]] = np.nan
    with pytest.raises(InvalidInput, match=r"rows 4, 9") as err:
        window_drift(ref, scores, features, rng=rng)
    assert err.value.field == "window features"
    bad_ref = ref.scores.copy()
    bad_ref[0, 0] = np.inf
    with pytest.raises(InvalidInput) as err:
        drift_reference(bad_ref, ref.features, NAMES)
    assert err.value.field == "reference scores"


@pytest.mark.parametrize(
    "change, field",
    [({"scores": np.zeros((30, 17))}, "window scores"), ({"features": np.zeros((29, F))}, "window features"),
     ({"alpha": 0.0}, "alpha"), ({"n_permutations": 10}, "n_permutations"),
     ({"n_permutations": 0}, "n_permutations"), ({"max_window": 1}, "max_window")],
)  # fmt: skip
def test_bad_arguments_name_their_field(change, field):
    rng, world = np.random.default_rng(16), _world()
    ref = _reference(rng, world)
    scores, features = _studies(rng, 30, world)
    args = {"scores": scores, "features": features, "alpha": ALPHA, "n_permutations": B, "max_window": 1000}
    args.update(change)
    with pytest.raises(InvalidInput) as err:
        window_drift(ref, args.pop("scores"), args.pop("features"), rng=rng, **args)
    assert err.value.field == field


def test_a_reference_without_scale_is_refused():
    with pytest.raises(InvalidInput, match="no kernel scale"):
        drift_reference(np.random.default_rng(0).uniform(size=(5, 1)), np.ones((5, 3)), ["Mass"])
