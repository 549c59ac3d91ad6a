"""Always-valid sequential tests: one-sided e-processes that carry across stages, and confidence sequences.

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

(:func:`log_mixture_ratio`). With ``V = σ²/n`` this is the textbook mSPRT. Under ``θ = θ0``, ``Λ`` is a
nonnegative martingale with mean 1 as the data accumulate, so by Ville's inequality
``P(Λ ≥ 1/alpha at any look) ≤ alpha``.

The one-sided mixture: an e-process for a composite null
---------------------------------------------------------
The gates test one-sided hypotheses, e.g. ``H0: θ ≥ θ0`` against ``H1: θ < θ0`` (``alternative="less"``).
The two-sided ``Λ`` spends half its mixing distribution on alternatives on the wrong side, and for a
true ``θ > θ0`` those components grow: ``Λ`` is then no supermartingale, and a one-sided test built on it
holds its level only through a side condition. The gates use the same normal prior truncated to the
alternative's side instead, a half-normal ``2 N(θ; θ0, τ²)`` on ``θ < θ0`` (``"less"``) or ``θ > θ0``
(``"greater"``). With ``s = -1`` for ``"less"`` and ``+1`` for ``"greater"``, completing the square
(``N(θ̂; θ, V) N(θ; θ0, τ²) = N(θ̂; θ0, V + τ²) N(θ; m, v)`` with ``m = (τ² θ̂ + V θ0)/(V + τ²)`` and
``v = V τ²/(V + τ²)``) and integrating ``θ`` over the alternative's side gives::

    E = ∫_{alt} N(θ̂; θ, V) 2 N(θ; θ0, τ²) dθ / N(θ̂; θ0, V) = Λ · 2 Φ(x),

    x = s (θ̂ - θ0) τ / sqrt(V (V + τ²)),   log E = ½ log(V / (V + τ²)) + log 2 + x²/2 + log Φ(x)

(:func:`log_e_value`; ``x²/2`` is the exponent of ``Λ``, so the last two terms are computed together,
``log(Φ(x) e^{x²/2})``, without overflow or cancellation however far ``θ̂`` lies on either side).

Why it is an e-process for the whole composite null, not just for ``θ = θ0``: in the Gaussian model each
component is the likelihood ratio ``N(θ̂; θ1, V) / N(θ̂; θ0, V)`` of one alternative ``θ1`` against ``θ0``,
and every ``θ1`` of the half-normal lies on the alternative's side. The Gaussian family has a monotone
likelihood ratio: for ``θ1 < θ0`` the ratio decreases in the running sum of the data, whose increments
are stochastically larger under any ``θ ≥ θ0`` than under ``θ0``. So the conditional expectation of each
step of each component is at most its value under ``θ0``, 1 (it is ``exp((θ1 - θ0)(θ - θ0)/σ²) ≤ 1``):
each component is a nonnegative supermartingale under every ``θ`` in H0, and so is their mixture ``E``,
which starts at 1. Ville's inequality then gives ``P(E ≥ 1/alpha at any look) ≤ alpha`` for every
``θ ≥ θ0`` (mirrored for ``"greater"``). ``E`` is at most ``sqrt(V/(V + τ²)) < 1`` when ``θ̂`` is at
``θ0`` or on the null's side, so it can only reach ``1/alpha ≥ 1`` on the alternative's side: no side
condition is needed. Against an effect on the alternative's side it is up to twice the two-sided ``Λ``
(``2Φ(x) → 2``), which is where the extra power comes from.

Evidence that carries across stages
-----------------------------------
A rollout judges each stage on the data of its own window. Let ``E_k`` be the e-process of stage ``k``'s
window on fresh data: given everything that happened before the window opened, it is a nonnegative
supermartingale that starts at 1 under H0. Then the running product::

    M = E_1(T_1) · E_2(T_2) · ... · E_{k-1}(T_{k-1}) · E_k(now)

with ``T_j`` the end of stage ``j``'s window, is a nonnegative supermartingale over the whole rollout,
starting at 1: Ville's inequality bounds ``P(M ≥ 1/alpha at any look of any stage) ≤ alpha``. So a rollout
rejects when ``prior_log_e + log E_k ≥ log(1/alpha)``, with ``prior_log_e = Σ_{j<k} log E_j(T_j)``, at the
FULL alpha: no split of alpha over the stages, and evidence gathered in stage 1 still counts in stage 4.
The caller (:func:`one_sided_test`'s ``prior_log_e``) must carry every ended window's FINAL value, the one
at the window's end (a stopping time: the bake, the deadline, a pause), low or high: not the largest seen,
nor a value chosen after looking. A fixed function of it that keeps the mean at most 1 is also valid:
the controller carries ``max(E, f)/(1 + f)`` (mean at most ``(1 + f)/(1 + f)``), so that a window that
looked fine cannot bank so much evidence for "fine" that it masks a later failure. A window with no data
is carried as ``E = 1``. The argument needs each window's data to be new: a window that reuses data an
earlier window saw is an e-value given the past only approximately.

A rejection ends the rollout, so the first look at which ``M`` crosses ``1/alpha`` is the only one that
counts; nothing else is kept between looks. ``τ`` (the mixing standard deviation) is the size of effect
the test is most sensitive to; it does not affect validity, only how fast a given effect is caught.
With a normal approximation to binomial counts and a variance estimated from the data, the guarantee is
asymptotic; the gates add a minimum sample size before any verdict.

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
that is the price of looking as often as one likes. An interval does not carry over from one stage's
window to the next, so whoever uses one per stage spends alpha over the stages (the prediction-shift
gate is given ``alpha / stages``).

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

_ASYMPTOTIC_BELOW = -35.0
"""Below this ``x``, ``log(Φ(x) e^{x²/2})`` comes from the asymptotic series (``erfc`` underflows soon)."""


def _check_variance_and_tau(variance: float, tau: float) -> None:
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError(f"variance: {variance} must be positive and finite")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau: {tau} must be positive and finite")


def _check_finite(estimate: float, null: float) -> None:
    if not (math.isfinite(estimate) and math.isfinite(null)):
        raise ValueError(f"estimate ({estimate}) and null ({null}) must be finite")


def _side(alternative: str) -> int:
    if alternative == "less":
        return -1
    if alternative == "greater":
        return 1
    raise ValueError(f"alternative: {alternative!r} is neither 'less' nor 'greater'")


def log_mixture_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """``log Λ`` of the Gaussian mSPRT for ``estimate ~ N(θ, variance)``, ``H0: θ = null``, ``θ ~ N(null, tau²)``.

    Computed in log space, so that a large effect on many samples does not overflow.
    """
    _check_variance_and_tau(variance, tau)
    _check_finite(estimate, null)
    spread = variance + tau * tau
    return 0.5 * math.log(variance / spread) + tau * tau * (estimate - null) ** 2 / (
        2 * variance * spread
    )


def mixture_ratio(estimate: float, null: float, variance: float, tau: float) -> float:
    """``Λ``, the mixture likelihood ratio; ``math.inf`` where it is beyond a float's range."""
    log_ratio = log_mixture_ratio(estimate, null, variance, tau)
    return math.exp(log_ratio) if log_ratio < 709 else math.inf


def _log_scaled_normal_cdf(x: float) -> float:
    """``x²/2 + log Φ(x)``, accurate for any finite ``x``.

    For ``x ≥ -35``, ``Φ(x) = erfc(-x/√2)/2`` (``erfc`` keeps its relative accuracy far into the tail;
    ``log1p`` keeps it near 1). Below, the asymptotic series of Mills' ratio,
    ``Φ(x) e^{x²/2} = (1 - 1/x² + 3/x⁴ - 15/x⁶ + 105/x⁸ - ...) / (|x| sqrt(2π))``, whose next term is
    under 4e-13 relative there.
    """
    if x >= _ASYMPTOTIC_BELOW:
        if x > 0:
            return 0.5 * x * x + math.log1p(-0.5 * math.erfc(x / math.sqrt(2)))
        return 0.5 * x * x + math.log(0.5 * math.erfc(-x / math.sqrt(2)))
    r = 1 / (x * x)
    series = 1 - r * (1 - 3 * r * (1 - 5 * r * (1 - 7 * r)))
    return -math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log(series)


def log_e_value(
    estimate: float, null: float, variance: float, tau: float, alternative: Alternative
) -> float:
    """``log E`` of the one-sided mixture: the normal prior ``N(null, tau²)`` truncated to H1's side.

    ``E = ∫_{alt} N(θ̂; θ, V) 2 N(θ; θ0, τ²) dθ / N(θ̂; θ0, V) = Λ · 2Φ(x)`` with
    ``x = s (θ̂ - θ0) τ / sqrt(V (V + τ²))``, ``s = -1`` for ``"less"`` (H1: ``θ < null``) and ``+1`` for
    ``"greater"``. An e-process for the composite null (``θ ≥ null`` for ``"less"``) under repeated
    looks, and at most ``sqrt(V/(V + τ²)) < 1`` unless the estimate lies on H1's side (see the module
    docstring). Computed in log space, finite for any finite arguments.
    """
    side = _side(alternative)
    _check_variance_and_tau(variance, tau)
    _check_finite(estimate, null)
    spread = variance + tau * tau
    x = side * (estimate - null) * tau / math.sqrt(variance * spread)
    return 0.5 * math.log(variance / spread) + math.log(2) + _log_scaled_normal_cdf(x)


def always_valid_p(log_e: float) -> float:
    """``min(1, 1/E)`` from ``log E`` (or ``log Λ``): at most ``alpha`` exactly when ``E ≥ 1/alpha``."""
    return 1.0 if log_e <= 0 else math.exp(-log_e)


class SequentialTest(NamedTuple):
    """One look of a one-sided sequential test: this window's e-value times the carried ones."""

    log_ratio: float
    """``log Λ`` of the two-sided mSPRT (symmetric in the estimate's side), for reading."""
    p_value: float
    """The always-valid p-value ``min(1, 1/(E · carried))``, ``exp(-(prior_log_e + log_e))`` capped at 1."""
    reject: bool
    """``prior_log_e + log_e ≥ log(1/alpha)``."""
    log_e: float = 0.0
    """``log E`` of this window's one-sided e-process (:func:`log_e_value`): what the caller carries."""
    prior_log_e: float = 0.0
    """The summed final log e-values of the earlier windows, as the caller passed them."""


def one_sided_test(
    *,
    estimate: float,
    null: float,
    variance: float,
    tau: float,
    alpha: float,
    alternative: Alternative,
    prior_log_e: float = 0.0,
) -> SequentialTest:
    """``H0: θ ≥ null`` (``alternative="less"``) or ``θ ≤ null`` (``"greater"``), at any number of looks.

    Rejects when ``prior_log_e + log_e_value(...) ≥ log(1/alpha)``. ``prior_log_e`` is the sum of the
    FINAL log e-values of the earlier stage windows of the same rollout, gate and cohort (0 for the
    first): with it, ``alpha`` is the whole rollout's, not a stage's share (see the module docstring).
    With a ``prior_log_e`` below ``log(1/alpha)``, as a carried value always is (a larger one would
    have rejected already), a rejection needs ``log_e > 0``, so an estimate on H1's side.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha} is not in (0, 1)")
    if math.isnan(prior_log_e) or prior_log_e == math.inf:
        raise ValueError(f"prior_log_e: {prior_log_e} must be a number below infinity")
    log_e = log_e_value(estimate, null, variance, tau, alternative)
    total = prior_log_e + log_e
    return SequentialTest(
        log_ratio=log_mixture_ratio(estimate, null, variance, tau),
        p_value=always_valid_p(total),
        reject=total >= -math.log(alpha),
        log_e=log_e,
        prior_log_e=prior_log_e,
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
