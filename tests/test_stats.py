"""Statistics: the paired bootstrap CI and the sign-flip p-value agree with scipy and with
brute force; the verdict rule says `inconclusive` where few seeds cannot decide."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.stats import (
    arm_aggregates,
    bootstrap_ci,
    decide,
    expectation_outcome,
    iqm,
    metric_by_seed,
    min_seeds_for,
    paired_comparison,
    sign_flip_p,
)


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


# --------------------------------------------------------------------------- bootstrap CI
@pytest.mark.parametrize("n", [5, 8, 15, 30])
def test_bootstrap_ci_agrees_with_scipy_paired_percentile(n: int) -> None:
    rng = np.random.default_rng(n)
    base = rng.uniform(0.05, 0.3, n)
    cand = base + rng.normal(0.03, 0.05, n)
    ours = bootstrap_ci(cand - base)
    ref = scipy.stats.bootstrap((cand, base), _mean_diff, paired=True, vectorized=True,
                                method="percentile", n_resamples=10_000, confidence_level=0.95,
                                rng=np.random.default_rng(1)).confidence_interval
    # Monte-Carlo error of a 2.5% quantile at 10,000 resamples is about 0.03 bootstrap SE per
    # estimate; 0.15 SE is about 4 standard deviations of the difference of two estimates.
    se = np.std(cand - base) / np.sqrt(n)
    assert abs(ours[0] - ref.low) < 0.15 * se
    assert abs(ours[1] - ref.high) < 0.15 * se


def test_bootstrap_ci_is_deterministic_and_seeded() -> None:
    d = np.random.default_rng(0).normal(0.02, 0.05, 12)
    first = bootstrap_ci(d)
    # pinned (SEED 0, 10,000 resamples): the same interval in every process and session
    assert first == pytest.approx((0.0012756501125576174, 0.04128880151057896), abs=1e-12)
    assert bootstrap_ci(np.array([0.1, -0.2, 0.05, 0.3, 0.0])) == pytest.approx(
        (-0.09, 0.2), abs=1e-12)
    # other calls, other data and the global numpy state in between change nothing
    bootstrap_ci(d[::-1], seed=5)
    bootstrap_ci(np.arange(40.0), resamples=300)
    np.random.seed(123)
    np.random.random(1000)
    assert bootstrap_ci(d) == first
    assert bootstrap_ci(d, seed=1) != bootstrap_ci(d, seed=2)
    assert bootstrap_ci(d, seed=0) == first


def test_bootstrap_ci_degenerate_samples() -> None:
    assert bootstrap_ci(np.array([0.3])) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci(np.full(7, -0.1)) == pytest.approx((-0.1, -0.1))
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci(np.array([]))


def test_bootstrap_ci_levels_nest() -> None:
    d = np.random.default_rng(3).normal(0.0, 1.0, 15)
    lo50, hi50 = bootstrap_ci(d, confidence=0.5)
    lo95, hi95 = bootstrap_ci(d)
    lo99, hi99 = bootstrap_ci(d, confidence=0.99)
    assert lo99 < lo95 < lo50 < d.mean() < hi50 < hi95 < hi99


@pytest.mark.parametrize(("confidence", "low", "high"), [(0.95, 0.88, 0.97), (0.5, 0.42, 0.58)])
def test_bootstrap_ci_covers_the_true_mean_at_about_its_level(confidence: float, low: float,
                                                               high: float) -> None:
    # 400 samples of n=20 from N(0.1, 1): the percentile interval of the mean covers 0.1 about
    # `confidence` of the time (a little less at 95%: it ignores the t correction; about
    # 0.93 in theory, +-0.013 Monte-Carlo error here)
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(400):
        lo, hi = bootstrap_ci(rng.normal(0.1, 1.0, 20), confidence=confidence, resamples=2_000)
        hits += lo <= 0.1 <= hi
    assert low <= hits / 400 <= high


# --------------------------------------------------------------------------- sign-flip p
def _brute_force_p(d: np.ndarray) -> float:
    obs = abs(d.sum())
    hits = sum(abs(np.dot(signs, d)) >= obs - 1e-12
               for signs in itertools.product((1, -1), repeat=d.size))
    return hits / 2**d.size


@pytest.mark.parametrize("n", [2, 3, 5, 8, 10])
def test_sign_flip_p_matches_brute_force_and_scipy_permutation_test(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    base = rng.uniform(0, 0.3, n)
    cand = base + rng.normal(0.02, 0.05, n)
    d = cand - base
    ref = scipy.stats.permutation_test((cand, base), _mean_diff, permutation_type="samples",
                                       vectorized=True, n_resamples=np.inf,
                                       alternative="two-sided")
    assert sign_flip_p(d) == pytest.approx(_brute_force_p(d), abs=1e-12)
    assert sign_flip_p(d) == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_one_sided_sign_flip_p_matches_scipy(alternative: str) -> None:
    rng = np.random.default_rng(7)
    base, cand = rng.uniform(0, 0.3, 9), rng.uniform(0, 0.3, 9)
    ref = scipy.stats.permutation_test((cand, base), _mean_diff, permutation_type="samples",
                                       vectorized=True, n_resamples=np.inf,
                                       alternative=alternative)
    assert sign_flip_p(cand - base, alternative=alternative) == pytest.approx(ref.pvalue,
                                                                             abs=1e-12)


def test_monte_carlo_p_above_exact_max_n_is_close_to_exact() -> None:
    d = np.random.default_rng(3).normal(0.01, 0.05, 22)
    exact = sign_flip_p(d, exact_max_n=22)
    mc = sign_flip_p(d, permutations=40_000)
    assert abs(mc - exact) < 4 * np.sqrt(exact * (1 - exact) / 40_000) + 1e-4
    assert mc == sign_flip_p(d, permutations=40_000)  # seeded


def test_smallest_p_is_two_over_two_to_the_n() -> None:
    for n in range(1, 9):
        assert sign_flip_p(np.full(n, 0.1)) == pytest.approx(min(1.0, 2 / 2**n))
    assert min_seeds_for(0.05) == 6 and min_seeds_for(0.01) == 8 and min_seeds_for(0.5) == 3


# --------------------------------------------------------------------------- verdicts
def _cmp(diffs: list[float], **kw: object) -> object:
    base = {s: 0.2 for s in range(len(diffs))}
    return paired_comparison({s: 0.2 + d for s, d in enumerate(diffs)}, base, **kw)


def test_five_seeds_all_better_is_inconclusive_six_improves() -> None:
    r5 = _cmp([0.05, 0.06, 0.07, 0.08, 0.09])
    assert r5.verdict == "inconclusive" and r5.wins == 5 and r5.ci[0] > 0
    assert "5 seeds < 6 needed" in r5.reason
    r6 = _cmp([0.05, 0.06, 0.07, 0.08, 0.09, 0.1])
    assert r6.verdict == "improves" and r6.p_value == pytest.approx(2 / 64)


def test_clear_regression_and_equivalence_and_mixed() -> None:
    assert _cmp([-0.1, -0.08, -0.12, -0.09, -0.11, -0.1, -0.07]).verdict == "regresses"
    eq = _cmp([0.001, -0.002, 0.0, 0.002, -0.001, 0.001, 0.0, -0.001])
    assert eq.verdict == "no_difference" and eq.p_equivalence < 0.05
    mixed = _cmp([0.1, -0.1, 0.05, -0.04, 0.08, -0.09, 0.02, -0.03])
    assert mixed.verdict == "inconclusive" and "includes 0" in mixed.reason


def test_ci_excluding_zero_without_significant_p_is_inconclusive() -> None:
    v, why = decide(8, (0.01, 0.05), 0.07, 1.0)
    assert v == "inconclusive" and "p 0.07" in why


def test_a_ci_off_zero_but_inside_the_margin_can_be_no_difference() -> None:
    # the CI excludes 0 without a credible p, yet lies inside +-margin and the equivalence test
    # rejects: equivalent (before, the one-sided CI returned inconclusive before the
    # equivalence test was reached)
    r = _cmp([-0.004, -0.003, -0.002, -0.005, -0.001, 0.0015])
    assert r.ci[1] < 0 and r.p_value >= 0.05 and r.p_equivalence < 0.05
    assert r.verdict == "no_difference", r.reason
    assert expectation_outcome(r, "no_difference")[0] == "pass"
    # a credible effect inside the margin stays an effect
    assert _cmp([-0.001] * 6).verdict == "regresses"
    assert decide(8, (0.001, 0.01), 0.01, 0.001)[0] == "improves"


def test_ties_are_named_when_they_rule_out_a_credible_p() -> None:
    r = _cmp([0.1, 0.2, 0.3, 0.4, 0.5, 0.0])  # one tie at 6 seeds: the smallest p is 4/64
    assert r.ties == 1 and r.p_value == pytest.approx(4 / 64) and r.verdict == "inconclusive"
    assert "1 of 6 seeds tie, so the smallest sign-flip p is 0.0625" in r.reason
    r = _cmp([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0])  # 8 seeds, one tie: 4/256 is possible
    assert r.verdict == "improves" and "tie" not in r.reason


def test_lower_is_better_metrics_improve_when_the_difference_is_negative() -> None:
    r = _cmp([-0.1, -0.08, -0.12, -0.09, -0.11, -0.1], higher_is_better=False)
    assert r.verdict == "improves" and r.wins == 6 and r.losses == 0


def test_no_common_seed_is_inconclusive() -> None:
    r = paired_comparison({0: 0.1, 1: 0.2}, {2: 0.1, 3: None})
    assert r.n == 0 and r.verdict == "inconclusive" and r.ci is None and r.p_value is None


def test_pairs_only_common_seeds_with_values() -> None:
    r = paired_comparison({0: 0.3, 1: 0.4, 2: 0.5, 5: 0.1}, {0: 0.1, 1: None, 2: 0.2, 3: 0.0})
    assert r.seeds == (0, 2) and r.diffs == pytest.approx((0.2, 0.3))


@pytest.mark.parametrize(("diffs", "expect", "outcome"), [
    ([0.1] * 6, "improves", "pass"),
    ([-0.1] * 6, "improves", "fail"),
    ([0.0] * 8, "improves", "fail"),            # credibly equivalent: not an improvement
    ([0.1] * 3, "improves", "inconclusive"),
    ([-0.1] * 6, "no_worse", "fail"),
    ([0.1, -0.1, 0.05, -0.05, 0.0, 0.02], "no_worse", "pass"),
    ([-0.1] * 3, "no_worse", "inconclusive"),   # all worse, too few seeds to be credible
    ([0.1] * 3, "no_worse", "pass"),
    ([0.0] * 8, "no_difference", "pass"),
    ([0.1] * 6, "no_difference", "fail"),
    ([0.1, -0.1] * 4, "no_difference", "inconclusive"),
])
def test_expectation_outcome(diffs: list[float], expect: str, outcome: str) -> None:
    assert expectation_outcome(_cmp(diffs), expect)[0] == outcome


# --------------------------------------------------------------------------- properties
diff_lists = st.lists(st.floats(-1, 1, allow_nan=False, allow_infinity=False).map(
    lambda x: round(x, 4)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(diff_lists)
def test_sign_flip_p_properties(diffs: list[float]) -> None:
    d = np.array(diffs)
    p = sign_flip_p(d)
    assert min(1.0, 2 / 2**d.size) - 1e-12 <= p <= 1.0
    assert sign_flip_p(-d) == pytest.approx(p)
    assert sign_flip_p(d[::-1]) == pytest.approx(p)


@settings(max_examples=60, deadline=None)
@given(diff_lists)
def test_bootstrap_ci_properties(diffs: list[float]) -> None:
    d = np.array(diffs)
    lo, hi = bootstrap_ci(d, resamples=2_000)
    assert d.min() - 1e-12 <= lo <= hi <= d.max() + 1e-12


@settings(max_examples=60, deadline=None)
@given(diff_lists)
def test_verdict_properties(diffs: list[float]) -> None:
    r = _cmp(diffs, resamples=2_000)
    swapped = paired_comparison({s: 0.2 for s in range(len(diffs))},
                                {s: 0.2 + x for s, x in enumerate(diffs)}, resamples=2_000)
    mirror = {"improves": "regresses", "regresses": "improves"}
    assert swapped.verdict == mirror.get(r.verdict, r.verdict)
    assert swapped.p_value == pytest.approx(r.p_value)
    assert r.wins + r.losses + r.ties == r.n
    if r.n < r.min_seeds:
        assert r.verdict == "inconclusive"
    if r.verdict == "improves":
        assert r.ci[0] > 0 and r.p_value < r.alpha and r.n >= r.min_seeds
    if r.verdict == "regresses":
        assert r.ci[1] < 0 and r.p_value < r.alpha
    if r.verdict == "no_difference":
        assert -r.margin <= r.ci[0] and r.ci[1] <= r.margin and r.p_equivalence < r.alpha


# --------------------------------------------------------------------------- aggregates
def test_iqm_is_scipy_trim_mean_quarter() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 8, 11):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def _cell(seed: int, status: str, test: float, carry: list[float]) -> dict:
    return {"model": "tiny", "method": "reinforce", "controller": "es", "seed": seed,
            "status": status, "end_of_chain": {"pass1_test": test, "pass1_eval": test + 0.1},
            "aggregates": {"mean_peak": 0.5, "mean_end": 0.3, "mean_gap": 0.2,
                           "collapse_rate": 0.5, "carryover": carry}}


def test_arm_aggregates_and_metric_by_seed_use_finished_cells_only() -> None:
    cells = [_cell(0, "finished", 0.1, [0.0, 0.02]), _cell(1, "finished", 0.3, []),
             _cell(2, "partial", 0.9, [0.5])]
    agg = arm_aggregates(cells)
    assert agg["n"] == 2 and agg["seeds"] == [0, 1]
    assert agg["end_of_chain_pass1_test"]["mean"] == pytest.approx(0.2)
    assert agg["collapse_rate"]["iqm"] == pytest.approx(0.5)
    assert agg["carryover"]["mean"] == pytest.approx(0.01)
    by_seed = metric_by_seed(cells, "end_of_chain_pass1_eval", model="tiny", method="reinforce",
                             controller="es")
    assert by_seed == pytest.approx({0: 0.2, 1: 0.4})
