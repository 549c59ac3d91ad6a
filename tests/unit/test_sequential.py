"""fleet.controller.rollout.sequential: the mSPRT, the chi-square test and what looking often costs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import chi2, chi2_contingency, norm

from fleet.controller.rollout.sequential import (
    Alternative,
    always_valid_p,
    chi2_sf,
    chi_square_homogeneity,
    log_mixture_ratio,
    mixture_ratio,
    one_sided_test,
    regularized_gamma_q,
    total_variation,
)

# --- the mixture likelihood ratio -----------------------------------------------------------------------


def marginal_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """∫ N(θ̂; θ, V) N(θ; θ0, τ²) dθ / N(θ̂; θ0, V), integrated numerically around the posterior."""
    sd = math.sqrt(variance)
    centre = (estimate * tau**2 + null * variance) / (variance + tau**2)
    spread = math.sqrt(variance * tau**2 / (variance + tau**2))

    def integrand(theta: float) -> float:
        return float(norm.pdf(estimate, theta, sd) * norm.pdf(theta, null, tau))

    low, high = centre - 30 * spread, centre + 30 * spread
    numerator, _ = integrate.quad(integrand, low, high, points=[centre], epsabs=0, epsrel=1e-12)
    return numerator / float(norm.pdf(estimate, null, sd))


@pytest.mark.parametrize(
    ("estimate", "null", "variance", "tau"),
    [
        (0.0, 0.0, 1e-3, 0.05),  # at the null: Λ = sqrt(V/(V+τ²)) < 1
        (-0.05, -0.02, 1.1e-3, 0.05),
        (-0.10, -0.02, 4.1e-4, 0.05),
        (0.03, 0.01, 4.95e-5, 0.01),
        (0.15, 0.10, 2.25e-4, 0.05),
        (1.3, 0.0, 0.25, 1.0),
        (-0.2, 0.1, 1e-2, 0.3),
        (0.5, 0.4, 1e-5, 0.001),
    ],
)
def test_mixture_ratio_is_the_ratio_of_marginal_likelihoods(
    estimate: float, null: float, variance: float, tau: float
) -> None:
    reference = marginal_ratio(estimate, null, variance, tau)
    assert mixture_ratio(estimate, null, variance, tau) == pytest.approx(reference, rel=1e-7)
    assert log_mixture_ratio(estimate, null, variance, tau) == pytest.approx(
        math.log(reference), rel=1e-7, abs=1e-9
    )


@given(
    estimate=st.floats(min_value=-1, max_value=1),
    null=st.floats(min_value=-1, max_value=1),
    variance=st.floats(min_value=1e-6, max_value=1),
    tau=st.floats(min_value=1e-3, max_value=2),
)
@settings(max_examples=200, database=None, deadline=None)
def test_log_ratio_is_the_log_of_two_normal_densities(
    estimate: float, null: float, variance: float, tau: float
) -> None:
    """N(θ̂; θ0, V + τ²) / N(θ̂; θ0, V): the closed form of the integral, in scipy's terms."""
    expected = norm.logpdf(estimate, null, math.sqrt(variance + tau**2)) - norm.logpdf(
        estimate, null, math.sqrt(variance)
    )
    assert log_mixture_ratio(estimate, null, variance, tau) == pytest.approx(
        expected, rel=1e-9, abs=1e-9
    )


def test_huge_evidence_does_not_overflow() -> None:
    log_ratio = log_mixture_ratio(-0.5, 0.0, 1e-8, 0.05)
    assert math.isfinite(log_ratio) and log_ratio > 1e6
    assert mixture_ratio(-0.5, 0.0, 1e-8, 0.05) == math.inf
    assert always_valid_p(log_ratio) == 0.0
    assert always_valid_p(-1.0) == 1.0 and always_valid_p(math.log(40)) == pytest.approx(0.025)


def test_one_sided_rejects_only_on_the_alternatives_side() -> None:
    common = dict(null=0.0, variance=1e-4, tau=0.05, alpha=0.05)
    below = one_sided_test(estimate=-0.05, alternative="less", **common)
    above = one_sided_test(estimate=0.05, alternative="less", **common)
    assert below.log_ratio == pytest.approx(above.log_ratio)  # Λ is symmetric
    assert below.reject and below.p_value == pytest.approx(math.exp(-below.log_ratio))
    assert not above.reject and above.p_value == 1.0
    mirrored = one_sided_test(estimate=0.05, alternative="greater", **common)
    assert mirrored == below
    # Λ exactly 1/alpha rejects: p = alpha
    weak = one_sided_test(estimate=-0.009, alternative="less", **common)
    assert weak.reject is (weak.p_value <= 0.05)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.0, 0.0, 0.05), "variance"),
        ((0.0, 0.0, -1.0, 0.05), "variance"),
        ((0.0, 0.0, 1.0, 0.0), "tau"),
        ((math.nan, 0.0, 1.0, 0.05), "estimate"),
    ],
)
def test_mixture_ratio_refuses_bad_arguments(
    args: tuple[float, float, float, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        log_mixture_ratio(*args)
    with pytest.raises(ValueError, match="alpha"):
        one_sided_test(estimate=0, null=0, variance=1, tau=1, alpha=1.0, alternative="less")


# --- chi-square -----------------------------------------------------------------------------------------

STATISTICS = [0.0, 1e-6, 0.01, 0.3, 0.99, 1.0, 2.5, 3.84, 7.0, 12.0, 19.9, 20.0, 21.0, 35.0, 60.0]
LARGE = [100.0, 250.0, 700.0, 1400.0]


@pytest.mark.parametrize("dof", range(1, 21))
def test_chi2_survival_matches_scipy(dof: int) -> None:
    for x in STATISTICS + LARGE:
        expected = float(chi2.sf(x, dof))
        assert chi2_sf(x, dof) == pytest.approx(expected, rel=1e-10, abs=1e-300), (x, dof)
    assert chi2_sf(1e6, dof) == 0.0 == float(chi2.sf(1e6, dof))


def test_upper_gamma_edges() -> None:
    assert regularized_gamma_q(3.0, 0.0) == 1.0
    assert regularized_gamma_q(0.5, math.inf) == 0.0
    assert regularized_gamma_q(1.0, 2.0) == pytest.approx(math.exp(-2.0), rel=1e-13)
    assert regularized_gamma_q(0.5, 2.0) == pytest.approx(math.erfc(math.sqrt(2.0)), rel=1e-12)
    assert chi2_sf(5.0, 0) == 1.0
    for bad in ((0.0, 1.0), (1.0, -1.0), (1.0, math.nan)):
        with pytest.raises(ValueError):
            regularized_gamma_q(*bad)
    with pytest.raises(ValueError):
        chi2_sf(-1.0, 2)


def test_homogeneity_by_hand() -> None:
    # 60/40 against 40/60: every expected count is 50, χ² = 4 · 10²/50 = 8 on 1 dof, p = erfc(2)
    result = chi_square_homogeneity([60, 40], [40, 60])
    assert result.statistic == pytest.approx(8.0) and result.dof == 1
    assert result.p_value == pytest.approx(math.erfc(2.0), rel=1e-12)
    assert total_variation([60, 40], [40, 60]) == pytest.approx(0.2)
    # a category empty in both arms is dropped: same statistic, same dof
    assert chi_square_homogeneity([60, 0, 40], [40, 0, 60]) == result
    same = chi_square_homogeneity([10, 20, 30], [20, 40, 60])
    assert same.statistic == pytest.approx(0.0, abs=1e-12) and same.p_value == pytest.approx(1.0)
    assert chi_square_homogeneity([5, 0], [7, 0]) == (0.0, 0, 1.0)


@given(
    table=st.integers(min_value=2, max_value=12).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(min_value=0, max_value=500), min_size=k, max_size=k),
            st.lists(st.integers(min_value=0, max_value=500), min_size=k, max_size=k),
        )
    )
)
@settings(max_examples=200, database=None, deadline=None)
def test_homogeneity_matches_scipy(table: tuple[list[int], list[int]]) -> None:
    a, b = table
    kept = [(x, y) for x, y in zip(a, b, strict=True) if x + y]
    if sum(a) == 0 or sum(b) == 0 or len(kept) < 2:
        return
    statistic, p, dof, _ = chi2_contingency(np.array(kept).T, correction=False)
    result = chi_square_homogeneity(a, b)
    assert result.dof == dof
    assert result.statistic == pytest.approx(statistic, rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-8, abs=1e-300)
    tv = 0.5 * np.abs(np.array(a) / sum(a) - np.array(b) / sum(b)).sum()
    assert total_variation(a, b) == pytest.approx(tv, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [([1, 2], [1, 2, 3], "categories"), ([1, -1], [1, 1], "negative"), ([0, 0], [1, 1], "one")],
)
def test_count_vectors_are_checked(a: list[int], b: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chi_square_homogeneity(a, b)
    with pytest.raises(ValueError, match=match):
        total_variation(a, b)


# --- what looking after every batch costs: a seeded simulation ---------------------------------------------

ALPHA = 0.05
BATCH = 25
LOOKS = 100  # up to 2,500 samples per arm
RUNS = 1500
Z_ALPHA = float(norm.ppf(1 - ALPHA))
MONTE_CARLO = 3 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)
"""Three standard errors of a rejection rate of alpha over RUNS runs."""


def rejected_at_some_look(
    estimates: np.ndarray, variances: np.ndarray, rejects: Callable[[float, float], bool]
) -> float:
    """Share of runs (rows) rejected at any look (column), stopping each run at its first rejection."""
    hits = 0
    for run_estimates, run_variances in zip(estimates, variances, strict=True):
        hits += any(rejects(e, v) for e, v in zip(run_estimates, run_variances, strict=True))
    return hits / len(estimates)


def haldane(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The accuracy gate's correction: an arm all right or all wrong is taken at (x + 1/2)/(n + 1)."""
    return np.where((p > 0) & (p < 1), p, (p * n + 0.5) / (n + 1))


def two_arms(
    rng: np.random.Generator, p_canary: float, p_stable: float
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy difference and its unpooled variance at each look, as the accuracy gate takes them."""
    n = BATCH * np.arange(1, LOOKS + 1)
    pc = rng.binomial(BATCH, p_canary, size=(RUNS, LOOKS)).cumsum(axis=1) / n
    ps = rng.binomial(BATCH, p_stable, size=(RUNS, LOOKS)).cumsum(axis=1) / n
    variance = sum(h * (1 - h) / n for h in (haldane(pc, n), haldane(ps, n)))
    return pc - ps, variance


def one_arm(rng: np.random.Generator, rate: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Observed rate at each look, and the null boundary's variance the rate gates use."""
    n = BATCH * np.arange(1, LOOKS + 1)
    observed = rng.binomial(BATCH, rate, size=(RUNS, LOOKS)).cumsum(axis=1) / n
    return observed, np.broadcast_to(bound * (1 - bound) / n, observed.shape)


def msprt(null: float, tau: float, alternative: Alternative) -> Callable[[float, float], bool]:
    """The sequential test at alpha; the side is checked first only to skip half the work."""

    def rejects(estimate: float, variance: float) -> bool:
        on_side = estimate < null if alternative == "less" else estimate > null
        return (
            on_side
            and one_sided_test(
                estimate=estimate,
                null=null,
                variance=variance,
                tau=tau,
                alpha=ALPHA,
                alternative=alternative,
            ).reject
        )

    return rejects


def wald(null: float, alternative: Alternative) -> Callable[[float, float], bool]:
    """The fixed-sample test at alpha, as the accuracy gate did on every look before."""
    sign = -1 if alternative == "less" else 1

    def rejects(estimate: float, variance: float) -> bool:
        return sign * (estimate - null) / math.sqrt(variance) > Z_ALPHA

    return rejects


def test_looking_every_batch_inflates_a_fixed_alpha_but_not_the_msprt() -> None:
    rng = np.random.default_rng(20260301)
    # accuracy: the canary exactly as good as stable, tested against δ = 0 (H0's boundary)
    difference, variance = two_arms(rng, 0.90, 0.90)
    old = rejected_at_some_look(difference, variance, wald(0.0, "less"))
    new = rejected_at_some_look(difference, variance, msprt(0.0, 0.05, "less"))
    assert old > 3 * ALPHA, f"fixed alpha at every look rolled back {old:.1%}"
    assert new <= ALPHA + MONTE_CARLO, f"mSPRT rolled back {new:.1%} under H0"
    # agreement: disagreement exactly at its bound
    rate, boundary = one_arm(rng, 0.10, 0.10)
    old = rejected_at_some_look(rate, boundary, wald(0.10, "greater"))
    new = rejected_at_some_look(rate, boundary, msprt(0.10, 0.05, "greater"))
    assert old > 3 * ALPHA, f"fixed alpha at every look rolled back {old:.1%}"
    assert new <= ALPHA + MONTE_CARLO, f"mSPRT rolled back {new:.1%} under H0"


def test_the_msprt_catches_a_canary_five_points_worse() -> None:
    rng = np.random.default_rng(7)
    difference, variance = two_arms(rng, 0.85, 0.90)
    assert rejected_at_some_look(difference, variance, msprt(0.0, 0.05, "less")) > 0.9
    rate, boundary = one_arm(rng, 0.15, 0.10)
    assert rejected_at_some_look(rate, boundary, msprt(0.10, 0.05, "greater")) > 0.9
