"""Always-valid sequential tests for the canary gates, and a chi-square test of two count vectors.

The controller looks at a stage's gates on every pass over data that keeps accumulating, and it does not
know in advance how many passes a stage will take (the bake, the deadline, pauses and the arrival of
labels decide that). A fixed-sample test repeated at level ``alpha`` on every look rejects a true null
hypothesis at some look with a probability that grows with the number of looks; over a few hundred
looks it is several times ``alpha``. Alpha spending (O'Brien-Fleming, Lan-DeMets) fixes that only for a
number and schedule of looks planned in advance, and carries the spent alpha from look to look.

The mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari, Pekelis and Walsh 2017)
needs neither. For an estimate ``θ̂ ~ N(θ, V)`` and a normal mixing distribution ``θ ~ N(θ0, τ²)`` over
the alternatives, the ratio of the marginal likelihoods under H1 and under ``H0: θ = θ0`` is::

    Λ = ∫ N(θ̂; θ, V) N(θ; θ0, τ²) dθ / N(θ̂; θ0, V) = N(θ̂; θ0, V + τ²) / N(θ̂; θ0, V)

      = sqrt(V / (V + τ²)) · exp( τ² (θ̂ - θ0)² / (2 V (V + τ²)) )

With ``V = σ²/n`` this is the textbook mSPRT. Under H0, ``Λ`` is a nonnegative martingale with mean 1 as
the data accumulate, so by Ville's inequality ``P(Λ ≥ 1/alpha at any look) ≤ alpha``: rejecting when
``Λ ≥ 1/alpha`` holds its level however often, and whenever, one looks. The always-valid p-value is
``min(1, 1/Λ)``: a look rejects exactly when it is ``≤ alpha``. A one-sided test rejects only when
``θ̂`` also lies on the alternative's side of ``θ0``; that is a subset of the two-sided rejection
region, so its level is still at most ``alpha``. With a normal approximation to binomial counts and a
variance estimated from the data, the guarantee is asymptotic; the gates add a minimum sample size
before any verdict.

No state is kept between looks: ``Λ`` depends on the data so far only, and a rejection ends the
rollout, so the first look at which ``Λ`` crosses ``1/alpha`` is the only one that counts. ``τ`` (the
mixing standard deviation) is the size of effect the test is most sensitive to; it does not affect
validity, only how fast a given effect is caught.

Shifts in a categorical distribution (the canary's predicted classes against the stable model's) are
tested with Pearson's chi-square test of homogeneity, and sized with the total variation distance
between the two normalised count vectors. The chi-square survival function is the regularised upper
incomplete gamma function ``Q(k/2, x/2)``, computed as in Numerical Recipes' ``gammq``: its series
for ``x < a + 1`` and its continued fraction (modified Lentz) above. Only the standard library is
used: the controller does not depend on scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

Alternative = Literal["less", "greater"]
"""Which side of the null value H1 lies on."""

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 100_000


def log_mixture_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """``log Λ`` of the Gaussian mSPRT for ``estimate ~ N(θ, variance)``, ``H0: θ = null``, ``θ ~ N(null, tau²)``.

    Computed in log space, so that a large effect on many samples does not overflow.
    """
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError(f"variance: {variance} must be positive and finite")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau: {tau} must be positive and finite")
    if not (math.isfinite(estimate) and math.isfinite(null)):
        raise ValueError(f"estimate ({estimate}) and null ({null}) must be finite")
    spread = variance + tau * tau
    return 0.5 * math.log(variance / spread) + tau * tau * (estimate - null) ** 2 / (
        2 * variance * spread
    )


def mixture_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """``Λ``, the mixture likelihood ratio; ``math.inf`` where it is beyond a float's range."""
    log_ratio = log_mixture_ratio(estimate, null, variance, tau)
    return math.exp(log_ratio) if log_ratio < 709 else math.inf


def always_valid_p(log_ratio: float) -> float:
    """``min(1, 1/Λ)`` from ``log Λ``: at most ``alpha`` exactly when ``Λ ≥ 1/alpha``."""
    return 1.0 if log_ratio <= 0 else math.exp(-log_ratio)


class SequentialTest(NamedTuple):
    """One look of a one-sided mSPRT."""

    log_ratio: float
    """``log Λ`` (symmetric in the estimate's side)."""
    p_value: float
    """The always-valid p-value ``min(1, 1/Λ)`` on the alternative's side, 1 on the other."""
    reject: bool
    """The estimate lies on the alternative's side and ``Λ ≥ 1/alpha``."""


def one_sided_test(
    *,
    estimate: float,
    null: float,
    variance: float,
    tau: float,
    alpha: float,
    alternative: Alternative,
) -> SequentialTest:
    """``H0: θ ≥ null`` (``alternative="less"``) or ``θ ≤ null`` (``"greater"``), at any number of looks."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha} is not in (0, 1)")
    log_ratio = log_mixture_ratio(estimate, null, variance, tau)
    on_side = estimate < null if alternative == "less" else estimate > null
    if not on_side:
        return SequentialTest(log_ratio=log_ratio, p_value=1.0, reject=False)
    return SequentialTest(
        log_ratio=log_ratio,
        p_value=always_valid_p(log_ratio),
        reject=log_ratio >= -math.log(alpha),
    )


def regularized_gamma_q(a: float, x: float) -> float:
    """``Q(a, x) = Γ(a, x) / Γ(a)``, the regularised upper incomplete gamma function (``gammq``)."""
    if not math.isfinite(a) or a <= 0 or math.isnan(x) or x < 0:
        raise ValueError(f"Q(a, x) needs a > 0 and x ≥ 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return _gamma_q_continued_fraction(a, x)


def _log_prefactor(a: float, x: float) -> float:
    """``log(e^-x x^a / Γ(a))``, the factor both expansions share."""
    return -x + a * math.log(x) - math.lgamma(a)


def _gamma_p_series(a: float, x: float) -> float:
    """``P(a, x)`` by its series, which converges quickly for ``x < a + 1``."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITERATIONS):
        ap += 1
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            return total * math.exp(_log_prefactor(a, x))
    raise ArithmeticError(f"the series for P({a}, {x}) did not converge")


def _gamma_q_continued_fraction(a: float, x: float) -> float:
    """``Q(a, x)`` by its continued fraction (modified Lentz), which converges for ``x ≥ a + 1``."""
    b = x + 1 - a
    c = 1 / _TINY
    d = 1 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = d if abs(d) >= _TINY else _TINY
        c = b + an / c
        c = c if abs(c) >= _TINY else _TINY
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < _EPS:
            return math.exp(_log_prefactor(a, x)) * h
    raise ArithmeticError(f"the continued fraction for Q({a}, {x}) did not converge")


def chi2_sf(statistic: float, dof: int) -> float:
    """``P(X ≥ statistic)`` for ``X ~ χ²(dof)``; 1 for ``dof = 0`` (no freedom, no evidence)."""
    if dof < 0:
        raise ValueError(f"dof: {dof} must not be negative")
    if statistic < 0:
        raise ValueError(f"statistic: {statistic} must not be negative")
    if dof == 0:
        return 1.0
    return regularized_gamma_q(dof / 2, statistic / 2)


class ChiSquare(NamedTuple):
    """Pearson's chi-square test of homogeneity of two count vectors."""

    statistic: float
    dof: int
    p_value: float


def _check_vectors(a: Sequence[int], b: Sequence[int]) -> None:
    if len(a) != len(b):
        raise ValueError(f"counts: vectors of {len(a)} and {len(b)} categories")
    if any(c < 0 for c in (*a, *b)):
        raise ValueError("counts: must not be negative")
    if sum(a) == 0 or sum(b) == 0:
        raise ValueError("counts: each vector needs at least one count")


def chi_square_homogeneity(a: Sequence[int], b: Sequence[int]) -> ChiSquare:
    """Do two arms share one categorical distribution? Pearson's test on the two-row table.

    Categories empty in both arms are dropped (they carry no information and would divide by zero);
    ``dof`` is the number of categories left minus one. No continuity correction. The chi-square
    approximation wants expected counts of about 5 or more; with fewer its p-value is rough.
    """
    _check_vectors(a, b)
    total_a, total_b = sum(a), sum(b)
    total = total_a + total_b
    statistic = 0.0
    kept = 0
    for x, y in zip(a, b, strict=True):
        column = x + y
        if column == 0:
            continue
        kept += 1
        expected_a = total_a * column / total
        expected_b = total_b * column / total
        statistic += (x - expected_a) ** 2 / expected_a + (y - expected_b) ** 2 / expected_b
    dof = kept - 1
    return ChiSquare(statistic=statistic, dof=dof, p_value=chi2_sf(statistic, dof))


def total_variation(a: Sequence[int], b: Sequence[int]) -> float:
    """``½ Σ |a_i/Σa - b_i/Σb|``: the largest difference in probability the two assign to any event."""
    _check_vectors(a, b)
    total_a, total_b = sum(a), sum(b)
    return 0.5 * sum(abs(x / total_a - y / total_b) for x, y in zip(a, b, strict=True))
