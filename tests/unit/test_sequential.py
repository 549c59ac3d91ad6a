"""fleet.controller.rollout.sequential: the mSPRT, its confidence sequence and what looking often costs."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import norm

from fleet.controller.rollout.sequential import (
    Alternative,
    always_valid_p,
    confidence_radius,
    log_mixture_ratio,
    mixture_ratio,
    one_sided_test,
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


# --- the confidence sequence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variance", "tau", "alpha"),
    [
        (1e-3, 0.05, 0.05),
        (4.8e-3, 0.05, 0.025),
        (2.1e-4, 0.05, 0.0025),
        (1e-6, 0.01, 0.05),
        (0.25, 1.0, 0.5),
        (1e-2, 0.3, 1e-6),
    ],
)
def test_confidence_radius_inverts_the_msprt(variance: float, tau: float, alpha: float) -> None:
    """A null just outside the radius is rejected, one just inside is not, on either side."""
    w = confidence_radius(variance, tau, alpha)
    for estimate in (0.0, 0.37, -0.2):
        for side in (1, -1):
            for scale, rejects in ((1 + 1e-9, True), (1 - 1e-9, False)):
                null = estimate + side * w * scale
                log_ratio = log_mixture_ratio(estimate, null, variance, tau)
                assert (log_ratio >= -math.log(alpha)) is rejects, (estimate, side, scale)
                alternative: Alternative = "less" if side > 0 else "greater"
                test = one_sided_test(
                    estimate=estimate,
                    null=null,
                    variance=variance,
                    tau=tau,
                    alpha=alpha,
                    alternative=alternative,
                )
                assert test.reject is rejects


def test_confidence_radius_by_hand() -> None:
    # V = 0.0048, τ = 0.05, alpha = 0.025: V + τ² = 0.0073, 2V(V + τ²)/τ² = 0.028032,
    # log(1/alpha) + ½ log(0.0073/0.0048) = 3.688879 + 0.209629 = 3.898508, w = sqrt(0.109283) = 0.330580
    assert confidence_radius(0.0048, 0.05, 0.025) == pytest.approx(0.330580, abs=1e-6)
    # it shrinks with more data, and widens at a smaller alpha
    assert confidence_radius(0.00048, 0.05, 0.025) < confidence_radius(0.0048, 0.05, 0.025)
    assert confidence_radius(0.0048, 0.05, 0.0025) > confidence_radius(0.0048, 0.05, 0.025)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.05, 0.05), "variance"),
        ((math.inf, 0.05, 0.05), "variance"),
        ((1e-3, 0.0, 0.05), "tau"),
        ((1e-3, 0.05, 0.0), "alpha"),
        ((1e-3, 0.05, 1.0), "alpha"),
    ],
)
def test_confidence_radius_refuses_bad_arguments(
    args: tuple[float, float, float], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        confidence_radius(*args)


# --- total variation ---------------------------------------------------------------------------------------


def test_total_variation_by_hand() -> None:
    assert total_variation([60, 40], [40, 60]) == pytest.approx(0.2)
    assert total_variation([60, 0, 40], [40, 0, 60]) == pytest.approx(0.2)
    assert total_variation([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-15)
    assert total_variation([5, 0], [0, 7]) == pytest.approx(1.0)


@given(
    table=st.integers(min_value=2, max_value=12).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(min_value=0, max_value=500), min_size=k, max_size=k),
            st.lists(st.integers(min_value=0, max_value=500), min_size=k, max_size=k),
        )
    )
)
@settings(max_examples=200, database=None, deadline=None)
def test_total_variation_matches_numpy(table: tuple[list[int], list[int]]) -> None:
    a, b = table
    if sum(a) == 0 or sum(b) == 0:
        return
    tv = 0.5 * np.abs(np.array(a) / sum(a) - np.array(b) / sum(b)).sum()
    assert total_variation(a, b) == pytest.approx(tv, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [([1, 2], [1, 2, 3], "categories"), ([1, -1], [1, 1], "negative"), ([0, 0], [1, 1], "one")],
)
def test_count_vectors_are_checked(a: list[int], b: list[int], match: str) -> None:
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


def test_the_confidence_sequence_covers_at_every_look() -> None:
    """A proportion's running estimate stays within w of the truth at all 100 looks in ≥ 1 - alpha of runs."""
    rng = np.random.default_rng(11)
    rate, tau = 0.3, 0.05
    n = BATCH * np.arange(1, LOOKS + 1)
    estimate = rng.binomial(BATCH, rate, size=(RUNS, LOOKS)).cumsum(axis=1) / n
    radius = np.array([confidence_radius(rate * (1 - rate) / k, tau, ALPHA) for k in n])
    missed = (np.abs(estimate - rate) >= radius).any(axis=1).mean()
    assert missed <= ALPHA + MONTE_CARLO, f"the sequence missed in {missed:.1%} of runs"
    # a fixed-sample 95% interval, recomputed at every look, misses far more often
    fixed = (np.abs(estimate - rate) >= 1.96 * np.sqrt(rate * (1 - rate) / n)).any(axis=1).mean()
    assert fixed > 3 * ALPHA
