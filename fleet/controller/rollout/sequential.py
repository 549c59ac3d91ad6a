"""Always-valid sequential tests and confidence sequences for the canary gates.

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

The confidence sequence
-----------------------
Inverting the two-sided mSPRT gives a confidence interval that holds at every look at once. The test of
``H0: θ = θ0`` rejects when ``log Λ ≥ log(1/alpha)``, that is when::

    τ² (θ̂ - θ0)² / (2 V (V + τ²)) ≥ log(1/alpha) + ½ log((V + τ²) / V)

so it does not reject exactly when ``|θ̂ - θ0| < w``, with the radius (:func:`confidence_radius`)::

    w = sqrt( 2 V (V + τ²) / τ² · ( log(1/alpha) + ½ log((V + τ²) / V) ) )

The true ``θ`` is a null that holds, so by Ville's inequality the probability that ``|θ̂ - θ| ≥ w`` at
any look at all is at most ``alpha``: ``{θ : |θ̂ - θ| < w}``, recomputed at every look, contains ``θ``
at every look at once with probability at least ``1 - alpha``. Nothing is carried from look to look;
``w`` shrinks like ``sqrt(log(n)/n)``, a little slower than a fixed-sample interval's ``1/sqrt(n)``:
that is the price of looking as often as one likes.

The total variation distance between two normalised count vectors (:func:`total_variation`) sizes a
shift in a categorical distribution (the canary's predicted classes against the stable model's). Only
the standard library is used: the controller does not depend on scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

Alternative = Literal["less", "greater"]
"""Which side of the null value H1 lies on."""


def _check_variance_and_tau(variance: float, tau: float) -> None:
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError(f"variance: {variance} must be positive and finite")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau: {tau} must be positive and finite")


def log_mixture_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """``log Λ`` of the Gaussian mSPRT for ``estimate ~ N(θ, variance)``, ``H0: θ = null``, ``θ ~ N(null, tau²)``.

    Computed in log space, so that a large effect on many samples does not overflow.
    """
    _check_variance_and_tau(variance, tau)
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


def confidence_radius(variance: float, tau: float, alpha: float) -> float:
    """``w``: the mSPRT of ``H0: θ = θ0`` does not reject at ``alpha`` exactly when ``|θ̂ - θ0| < w``.

    ``w = sqrt(2V(V + τ²)/τ² · (log(1/alpha) + ½ log((V + τ²)/V)))``, the radius of the confidence
    sequence dual to the mSPRT: ``|θ̂ - θ| < w`` at every look at once with probability at least
    ``1 - alpha`` (see the module docstring).
    """
    _check_variance_and_tau(variance, tau)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha} is not in (0, 1)")
    spread = variance + tau * tau
    threshold = -math.log(alpha) + 0.5 * math.log(spread / variance)
    return math.sqrt(2 * variance * spread / (tau * tau) * threshold)


def _check_vectors(a: Sequence[int], b: Sequence[int]) -> None:
    if len(a) != len(b):
        raise ValueError(f"counts: vectors of {len(a)} and {len(b)} categories")
    if any(c < 0 for c in (*a, *b)):
        raise ValueError("counts: must not be negative")
    if sum(a) == 0 or sum(b) == 0:
        raise ValueError("counts: each vector needs at least one count")


def total_variation(a: Sequence[int], b: Sequence[int]) -> float:
    """``½ Σ |a_i/Σa - b_i/Σb|``: the largest difference in probability the two assign to any event."""
    _check_vectors(a, b)
    total_a, total_b = sum(a), sum(b)
    return 0.5 * sum(abs(x / total_a - y / total_b) for x, y in zip(a, b, strict=True))
