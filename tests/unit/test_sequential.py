"""fleet.controller.rollout.sequential: the mSPRT, its one-sided e-process carried across stages, its
confidence sequence and what looking often costs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import log_ndtr
from scipy.stats import norm

from fleet.controller.rollout.sequential import (
    Alternative,
    SequentialTest,
    always_valid_p,
    confidence_radius,
    log_e_value,
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


# --- the one-sided (half-normal) mixture: an e-process for the composite null ----------------------------


def half_normal_ratio(
    estimate: float, null: float, variance: float, tau: float, alternative: Alternative
) -> float:
    """∫_{H1's side} N(θ̂; θ, V) 2 N(θ; θ0, τ²) dθ / N(θ̂; θ0, V), integrated numerically."""
    sd = math.sqrt(variance)
    centre = (estimate * tau**2 + null * variance) / (variance + tau**2)
    spread = math.sqrt(variance * tau**2 / (variance + tau**2))

    def integrand(theta: float) -> float:
        return float(norm.pdf(estimate, theta, sd) * 2 * norm.pdf(theta, null, tau))

    # the integrand's mass lies within 30 posterior sds of its centre; cut at the null on H1's side
    low, high = centre - 30 * spread, centre + 30 * spread
    low, high = (low, min(high, null)) if alternative == "less" else (max(low, null), high)
    if low >= high:
        return 0.0
    inside = [p for p in (centre,) if low < p < high]
    numerator, _ = integrate.quad(
        integrand, low, high, points=inside or None, epsabs=0, epsrel=1e-12
    )
    return numerator / float(norm.pdf(estimate, null, sd))


@pytest.mark.parametrize("alternative", ["less", "greater"])
@pytest.mark.parametrize(
    ("estimate", "null", "variance", "tau"),
    [
        (0.0, 0.0, 1e-3, 0.05),  # at the null: E = sqrt(V/(V+τ²)), as for Λ
        (-0.05, -0.02, 1.1e-3, 0.05),
        (-0.10, -0.02, 4.1e-4, 0.05),
        (0.03, 0.01, 4.95e-5, 0.01),
        (0.15, 0.10, 2.25e-4, 0.05),
        (0.11, 0.10, 2.25e-4, 0.05),
        (1.3, 0.0, 0.25, 1.0),
        (-0.2, 0.1, 1e-2, 0.3),
        (0.5, 0.4, 1e-5, 0.001),
    ],
)
def test_half_normal_mixture_is_the_ratio_of_marginal_likelihoods(
    estimate: float, null: float, variance: float, tau: float, alternative: Alternative
) -> None:
    reference = half_normal_ratio(estimate, null, variance, tau, alternative)
    log_e = log_e_value(estimate, null, variance, tau, alternative)
    assert math.exp(log_e) == pytest.approx(reference, rel=1e-7, abs=1e-300)
    # the closed form: two-sided log Λ + log(2 Φ(s (θ̂ - θ0) τ / sqrt(V (V + τ²))))
    s = -1 if alternative == "less" else 1
    x = s * (estimate - null) * tau / math.sqrt(variance * (variance + tau**2))
    closed = log_mixture_ratio(estimate, null, variance, tau) + math.log(2 * norm.cdf(x))
    assert log_e == pytest.approx(closed, rel=1e-9, abs=1e-9)


@given(
    estimate=st.floats(min_value=-1, max_value=1),
    null=st.floats(min_value=-1, max_value=1),
    variance=st.floats(min_value=1e-8, max_value=1),
    tau=st.floats(min_value=1e-3, max_value=2),
    alternative=st.sampled_from(["less", "greater"]),
)
@settings(max_examples=300, database=None, deadline=None)
def test_log_e_value_in_scipys_terms_and_off_the_alternatives_side(
    estimate: float, null: float, variance: float, tau: float, alternative: Alternative
) -> None:
    """log Λ + log 2 + log Φ(x) with scipy's log_ndtr, far into either tail; and E < 1 off H1's side."""
    s = -1 if alternative == "less" else 1
    x = s * (estimate - null) * tau / math.sqrt(variance * (variance + tau**2))
    expected = log_mixture_ratio(estimate, null, variance, tau) + math.log(2) + float(log_ndtr(x))
    log_e = log_e_value(estimate, null, variance, tau, alternative)
    assert math.isfinite(log_e)
    assert log_e == pytest.approx(expected, rel=1e-8, abs=1e-8)
    if s * (estimate - null) <= 0:  # at the null or on its side: below sqrt(V/(V + τ²)) < 1
        assert log_e <= 0.5 * math.log(variance / (variance + tau**2)) + 1e-12
    else:  # on H1's side: more than Λ, at most 2Λ
        log_ratio = log_mixture_ratio(estimate, null, variance, tau)
        slack = 1e-12 * max(1.0, abs(log_ratio))  # rounding of the large terms
        assert log_ratio - slack <= log_e <= log_ratio + math.log(2) + slack


def test_log_e_value_is_continuous_where_it_changes_method() -> None:
    """The series takes over from erfc at x = -35; both agree there to 1e-12."""
    variance, tau = 1e-4, 0.05
    scale = tau / math.sqrt(variance * (variance + tau**2))
    values = [log_e_value(x / scale, 0.0, variance, tau, "greater") for x in (-35 - 1e-9, -35.0)]
    assert values[0] == pytest.approx(values[1], abs=1e-9)
    # an estimate 100 sds on the wrong side is overwhelming evidence FOR the null, and still finite
    far = log_e_value(-1.0, 0.0, 1e-4, 0.05, "greater")
    assert math.isfinite(far) and far < -5


def test_one_sided_rejects_only_on_the_alternatives_side() -> None:
    common = dict(null=0.0, variance=1e-4, tau=0.05, alpha=0.05)
    below = one_sided_test(estimate=-0.05, alternative="less", **common)
    above = one_sided_test(estimate=0.05, alternative="less", **common)
    assert below.log_ratio == pytest.approx(above.log_ratio)  # Λ is symmetric, E is not
    assert below.log_e == pytest.approx(below.log_ratio + math.log(2 * norm.cdf(below_x := 4.975)))
    assert below_x > 0 and above.log_e < 0 < below.log_e
    assert below.reject and below.p_value == pytest.approx(math.exp(-below.log_e))
    assert not above.reject and above.p_value == 1.0
    mirrored = one_sided_test(estimate=0.05, alternative="greater", **common)
    assert mirrored == below
    # E exactly 1/alpha rejects: p = alpha
    weak = one_sided_test(estimate=-0.009, alternative="less", **common)
    assert weak.reject is (weak.p_value <= 0.05)


def test_the_half_normal_gains_up_to_twice_the_evidence() -> None:
    """On H1's side E → 2Λ: the one-sided test rejects estimates the two-sided Λ would not."""
    common = dict(null=0.0, variance=1e-4, tau=0.05)
    threshold = math.log(20)
    catches = [
        e
        for e in np.linspace(-0.05, 0.0, 501)
        if log_e_value(float(e), alternative="less", **common) >= threshold
        and log_mixture_ratio(float(e), **common) < threshold
    ]
    assert catches, "some estimates are rejected only by the one-sided mixture"
    for e in (-0.02, -0.04, -0.08):
        gain = log_e_value(e, alternative="less", **common) - log_mixture_ratio(e, **common)
        assert 0 < gain <= math.log(2)


@given(
    estimate=st.floats(min_value=-1, max_value=1),
    variance=st.floats(min_value=1e-8, max_value=1),
    tau=st.floats(min_value=1e-3, max_value=2),
    alpha=st.floats(min_value=1e-6, max_value=0.5),
    carried=st.floats(min_value=-50, max_value=1),
)
@settings(max_examples=200, database=None, deadline=None)
def test_no_rejection_off_the_alternatives_side_with_a_carried_prior(
    estimate: float, variance: float, tau: float, alpha: float, carried: float
) -> None:
    """Any prior below log(1/alpha) (a carried one always is) cannot reject an estimate on H0's side."""
    prior = carried * math.log(1 / alpha)  # up to the threshold itself, excluded below
    if prior >= math.log(1 / alpha):
        return
    sides: tuple[tuple[Alternative, int], ...] = (("less", 1), ("greater", -1))
    for alternative, sign in sides:
        test = one_sided_test(
            estimate=sign * abs(estimate),  # at or on the null's side of 0
            null=0.0,
            variance=variance,
            tau=tau,
            alpha=alpha,
            alternative=alternative,
            prior_log_e=prior,
        )
        assert not test.reject and test.log_e < 0


def test_the_prior_carries_evidence_into_the_window() -> None:
    def look(prior: float) -> SequentialTest:
        return one_sided_test(
            estimate=-0.02,
            null=0.0,
            variance=1e-4,
            tau=0.05,
            alpha=0.05,
            alternative="less",
            prior_log_e=prior,
        )

    alone = look(0.0)
    assert not alone.reject and alone.prior_log_e == 0
    assert alone.p_value == pytest.approx(math.exp(-alone.log_e))
    carried = look(2.5)
    assert carried.log_e == alone.log_e and carried.prior_log_e == 2.5
    assert carried.reject is (alone.log_e + 2.5 >= math.log(20)) and carried.reject
    assert carried.p_value == pytest.approx(math.exp(-(alone.log_e + 2.5)))
    # evidence for the null, carried, makes it harder: E_carried < 1
    assert look(-2.0).p_value == pytest.approx(min(1.0, math.exp(-(alone.log_e - 2.0))))
    assert look(-math.inf).p_value == 1.0  # a carried E of 0: nothing can reject any more
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="prior_log_e"):
            look(bad)


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
    with pytest.raises(ValueError, match=match):
        log_e_value(*args, "less")
    with pytest.raises(ValueError, match="alpha"):
        one_sided_test(estimate=0, null=0, variance=1, tau=1, alpha=1.0, alternative="less")
    with pytest.raises(ValueError, match="alternative"):
        log_e_value(0.0, 0.0, 1.0, 1.0, cast(Alternative, "two-sided"))


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
    """A null just outside the radius is rejected by the two-sided mSPRT, one just inside is not."""
    w = confidence_radius(variance, tau, alpha)
    for estimate in (0.0, 0.37, -0.2):
        for side in (1, -1):
            for scale, rejects in ((1 + 1e-9, True), (1 - 1e-9, False)):
                null = estimate + side * w * scale
                log_ratio = log_mixture_ratio(estimate, null, variance, tau)
                assert (log_ratio >= -math.log(alpha)) is rejects, (estimate, side, scale)


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
    """The one-sided sequential test at alpha; off H1's side E < 1, so that side is skipped unasked."""

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


# --- evidence carried across stage windows: a seeded simulation of whole rollouts ---------------------------

STAGE_SIZES = (400, 800, 1600, 3200)
"""Samples per arm in each stage's window (fresh data: the window restarts with the stage)."""
STAGE_STEP = 100  # a look every 100 samples per arm
ROLLOUTS = 1000
DELTA = 0.02
ROLLOUT_MONTE_CARLO = 3 * math.sqrt(ALPHA * (1 - ALPHA) / ROLLOUTS)

Window = tuple[np.ndarray, np.ndarray]
"""Estimates and variances at each look of one stage's window, rollouts x looks."""


def accuracy_windows(rng: np.random.Generator, p_canary: float, p_stable: float) -> list[Window]:
    """Per stage, the accuracy difference and its unpooled variance, from the window's own labels."""
    windows = []
    for size in STAGE_SIZES:
        n = STAGE_STEP * np.arange(1, size // STAGE_STEP + 1)
        shape = (ROLLOUTS, len(n))
        pc = rng.binomial(STAGE_STEP, p_canary, size=shape).cumsum(axis=1) / n
        ps = rng.binomial(STAGE_STEP, p_stable, size=shape).cumsum(axis=1) / n
        windows.append((pc - ps, sum(h * (1 - h) / n for h in (haldane(pc, n), haldane(ps, n)))))
    return windows


def rate_windows(rng: np.random.Generator, rate: float, bound: float) -> list[Window]:
    """Per stage, the observed rate and the null boundary's variance, from the window's own data."""
    windows = []
    for size in STAGE_SIZES:
        n = STAGE_STEP * np.arange(1, size // STAGE_STEP + 1)
        observed = rng.binomial(STAGE_STEP, rate, size=(ROLLOUTS, len(n))).cumsum(axis=1) / n
        windows.append((observed, np.broadcast_to(bound * (1 - bound) / n, observed.shape)))
    return windows


def carried_rollbacks(
    windows: list[Window],
    null: float,
    tau: float,
    alternative: Alternative,
    *,
    alpha: float = ALPHA,
    carry: Callable[[float], float] = lambda log_e: log_e,
) -> float:
    """Share of rollouts rejected at some look of some stage, each stage's test given the carried
    ``prior_log_e``: the sum of the earlier stages' FINAL log e-values (through ``carry``).

    Only looks where the e-value could cross are put to ``one_sided_test``: ``log E ≤ log Λ + log 2``.
    """
    threshold = -math.log(alpha)
    sign = -1 if alternative == "less" else 1
    bounds = []
    for estimates, variances in windows:
        spread = variances + tau * tau
        log_ratio = 0.5 * np.log(variances / spread) + tau * tau * (estimates - null) ** 2 / (
            2 * variances * spread
        )
        bounds.append(np.where(sign * (estimates - null) > 0, log_ratio + math.log(2), -np.inf))
    rejected = 0
    for run in range(ROLLOUTS):
        prior = 0.0
        for (estimates, variances), bound in zip(windows, bounds, strict=True):
            e, v = estimates[run], variances[run]
            looks = np.flatnonzero(prior + bound[run] >= threshold)
            if any(
                one_sided_test(
                    estimate=float(e[k]),
                    null=null,
                    variance=float(v[k]),
                    tau=tau,
                    alpha=alpha,
                    alternative=alternative,
                    prior_log_e=prior,
                ).reject
                for k in looks
            ):
                rejected += 1
                break
            prior += carry(log_e_value(float(e[-1]), null, float(v[-1]), tau, alternative))
    return rejected / ROLLOUTS


def floored(log_e: float, floor: float = 0.1) -> float:
    """``log(max(E, floor)/(1 + floor))``: an e-value of an e-value, what the controller carries."""
    return math.log(max(math.exp(min(log_e, 700.0)), floor)) - math.log1p(floor)


@pytest.mark.parametrize(
    ("canary", "stable"),
    [(0.90 - DELTA, 0.90), (0.90, 0.90), (0.93, 0.90)],
    ids=["at the null's edge", "as good", "better"],
)
def test_carried_evidence_holds_alpha_over_a_rollout_for_the_composite_null(
    canary: float, stable: float
) -> None:
    """H0: θ ≥ -δ, at θ = -δ exactly and above it: the rollout's false rollbacks stay ≤ alpha with
    the FULL alpha at every look of every stage and the evidence carried from stage to stage."""
    windows = accuracy_windows(np.random.default_rng(round(canary * 1000)), canary, stable)
    carried = carried_rollbacks(windows, -DELTA, 0.05, "less")
    assert carried <= ALPHA + ROLLOUT_MONTE_CARLO, f"rolled back {carried:.1%} of rollouts"
    if canary == 0.90 - DELTA:  # the controller's floored carry is an e-value too
        safer = carried_rollbacks(windows, -DELTA, 0.05, "less", carry=floored)
        assert safer <= ALPHA + ROLLOUT_MONTE_CARLO, f"floored: rolled back {safer:.1%}"


@pytest.mark.parametrize("rate", [0.10, 0.08])
def test_carried_evidence_holds_alpha_for_a_rate_at_or_under_its_bound(rate: float) -> None:
    windows = rate_windows(np.random.default_rng(round(rate * 1000) + 1), rate, 0.10)
    carried = carried_rollbacks(windows, 0.10, 0.05, "greater")
    assert carried <= ALPHA + ROLLOUT_MONTE_CARLO, f"rolled back {carried:.1%} of rollouts"


def test_carried_evidence_catches_a_canary_five_points_worse() -> None:
    """85% against 90% with δ = 0.02: more rollbacks than alpha/4 per stage, without carry, gets."""
    windows = accuracy_windows(np.random.default_rng(85), 0.85, 0.90)
    carried = carried_rollbacks(windows, -DELTA, 0.05, "less")
    split = carried_rollbacks(windows, -DELTA, 0.05, "less", alpha=ALPHA / 4, carry=lambda _: 0.0)
    assert carried >= 0.95, f"rolled back {carried:.1%}"
    assert carried > split, f"carried {carried:.1%} against alpha/4 per stage {split:.1%}"
    rate = carried_rollbacks(
        rate_windows(np.random.default_rng(15), 0.15, 0.10), 0.10, 0.05, "greater"
    )
    assert rate >= 0.95, f"disagreement 15% against 10%: rolled back {rate:.1%}"
