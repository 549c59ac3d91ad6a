"""The gates' arithmetic: sequential tests on accuracy, absolute error, error and disagreement rates and prediction shift; p95 latency.

Each gate is a pure function from counts to a :class:`GateResult`: a verdict, the measured value, the
threshold it was held against and a reason a person can read. Keeping the statistics apart from the
rollout logic lets them be checked against reference values on their own, and keeps the decision code
free of arithmetic. Only the standard library is used here and in :mod:`.sequential`: the controller does
not depend on scipy.

Looking on every pass: sequential tests, so that only evidence rolls a canary back
------------------------------------------------------------------------------------
The controller judges a stage on every pass over data that keeps accumulating, an unknown number of
times. A fixed-sample test at level ``alpha`` repeated on every look would roll back a canary that meets
its limit with a probability well above ``alpha`` (every look is another chance of a false alarm). The
accuracy, error-rate and agreement gates are therefore one-sided mixture sequential probability ratio
tests (mSPRT), e-processes (see :mod:`fleet.controller.rollout.sequential` for the derivation): for an
estimate ``θ̂ ~ N(θ, V)``, ``H0: θ ≥ θ0`` against ``H1: θ < θ0`` (or mirrored), with the normal mixture
``N(θ0, τ²)`` truncated to H1's side (a half-normal)::

    E = 2 Φ(x) · sqrt(V / (V + τ²)) · exp(x²/2),   x = s (θ̂ - θ0) τ / sqrt(V (V + τ²))

with ``s = -1`` when H1 is below ``θ0`` and ``+1`` when above. Under every ``θ`` of the composite H0,
``E`` is a nonnegative supermartingale starting at 1 as the data accumulate, and it stays below 1 unless
``θ̂`` lies on H1's side.

Each stage's window is a fresh e-process (the window restarts with the stage, and on resume), and the
e-values of successive windows multiply: a gate FAILS when ``E_carried · E ≥ 1/alpha``, that is when
``prior_log_e + log E ≥ log(1/alpha)``, where ``prior_log_e`` is the sum of the log e-values the earlier
windows of the same rollout, gate and cohort ended with (the caller carries them; each result's
``log_e`` is its window's). By Ville's inequality the probability that this ever happens, at any of
however many looks in any stage, is at most ``alpha`` when H0 holds: the caller passes the gate's FULL
alpha to every stage (no Bonferroni split over stages), and evidence gathered in stage 1 still counts
in stage 3. The always-valid p-value is ``min(1, 1/(E_carried · E))``. The caller must carry each ended
window's final value (or an e-value of it, such as ``max(E, f)/(1 + f)``), never a value it chose by
looking; a window without data carries ``E = 1``. Nothing else is kept between looks: a failure ends
the rollout.

Each sequential gate needs ``min_samples`` observations before any verdict: below it, it is
INCONCLUSIVE (a handful of labels neither rolls back nor passes). Above it, it PASSES unless it fails.
These are guards against regressions, not proofs of non-inferiority: a PASS means no evidence of harm so
far, and their power grows with the data.

Accuracy
--------
With ``p_c`` and ``p_s`` the accuracies of the canary and the stable version on labelled field feedback
from the same cohort and window, and ``δ`` the tolerated drop::

    H0: p_c - p_s ≥ -δ      (the canary is not worse by more than δ)
    H1: p_c - p_s < -δ      (the canary is worse by more than δ)

    θ̂ = p̂_c - p̂_s,   θ0 = -δ,   V = p̂_c(1 - p̂_c)/n_c + p̂_s(1 - p̂_s)/n_s   (unpooled),   τ = mixture_sd

An arm that is all right (or all wrong) would add no variance, and with both so V would be zero; such an
arm's variance is taken at p = (x + 1/2)/(n + 1) instead (a Haldane-style correction). The Wald
``z = (θ̂ - θ0)/sqrt(V)`` is reported for reading, not for the decision. When every device of a cohort
runs the canary (the last stage), the stable arm is a baseline kept from an earlier window: that window's
stable data is used twice, so the last stage's factor is an e-value given the past only approximately
(``bench/false_rollbacks.py`` simulates this, and the rollout's false rollbacks stay under alpha).

Absolute error (regressors)
---------------------------
A regressor's field feedback is a target value, and each labelled prediction gives its absolute error
``|ŷ - y|`` (the mean over the outputs of a multi-output model). With ``m_c`` and ``m_s`` the mean
absolute errors of the canary and the stable version on the same cohort and window, and ``δ`` the
tolerated increase (in the target's units)::

    H0: m_c - m_s ≤ δ      (the canary's MAE is not worse by more than δ)
    H1: m_c - m_s > δ

    θ̂ = ē_c - ē_s,   θ0 = δ,   V = s_c²/n_c + s_s²/n_s,   τ = mixture_sd (default δ)

with ``ē`` an arm's mean absolute error and ``s²`` its sample variance, both from the sums the devices'
reports add up (``n``, ``Σ e``, ``Σ e²``); the same one-sided mSPRT as accuracy, mirrored. An arm whose
errors are all equal would add no variance: its ``s²`` is floored at ``(ē/√n)²`` (and at a tiny
absolute value), so that ``V`` is never zero. As for accuracy, the normal approximation with a plug-in
variance is asymptotic, and ``min_samples`` guards the first looks.

Error rate and agreement
------------------------
One proportion against a bound ``b`` (``max_error_rate``, or ``max_disagreement`` for the share of
shadow comparisons on which the canary and stable disagree): ``H0: rate ≤ b`` against ``H1: rate > b``,
with ``θ̂`` the observed rate, ``θ0 = b`` and ``V = b(1 - b)/n``, the variance at the null's boundary. At
``b = 0`` a single error refutes H0 outright: it FAILS (p = 0) once ``n ≥ min_samples``.

Prediction shift
----------------
The canary's distribution of predicted classes against the stable model's, on the same cohort and
window, sized by the total variation distance ``TV = ½ Σ_k |p_c,k - p_s,k|`` against ``max_distance``.
It FAILS only on sequential evidence that ``TV > max_distance``, and so holds its level however often it
is looked at. For each of the ``K`` classes seen in either arm, the difference ``d_k = p_c,k - p_s,k``
gets a confidence sequence, the interval dual to the two-sided mSPRT at level ``alpha / K`` (Bonferroni
over the classes; see :func:`fleet.controller.rollout.sequential.confidence_radius`)::

    d̂_k = x_c,k/n_c - x_s,k/n_s,   V_k = p̂_c,k(1 - p̂_c,k)/n_c + p̂_s,k(1 - p̂_s,k)/n_s,   τ = mixture_sd

    w_k = sqrt( 2 V_k (V_k + τ²) / τ² · ( log(K/alpha) + ½ log((V_k + τ²)/V_k) ) )

with an arm's class at 0 or 1 taken at ``(x + 1/2)/(n + 1)`` for its variance, as for accuracy. With
probability at least ``1 - alpha`` every ``|d̂_k - d_k| < w_k`` at every look at once, and then, since
both distributions sum to 1 (``Σ_k d_k = 0``, so ``TV = Σ_k max(0, d_k) = Σ_k max(0, -d_k)``)::

    TV ≥ TV_low = max( Σ_k max(0, d̂_k - w_k),  Σ_k max(0, -d̂_k - w_k) )

at every look (each is at least ``½ Σ_k max(0, |d̂_k| - w_k)``; a class never seen contributes nothing
and is not counted in ``K``). The gate FAILS when ``TV_low > max_distance``: a canary whose true distance
is at most ``max_distance`` is failed at some look with probability at most ``alpha``. Unlike the
e-values above, the bound is recomputed from each stage window's data and does not carry over from one
window to the next: the gate takes whatever alpha it is given, and the caller gives it
``alpha / stages`` (Bonferroni over the stages). A handful of rows gives wide intervals and cannot fail
it; a trivial shift on millions of rows has ``TV ≤ max_distance`` and cannot either. ``measured`` is the point estimate of ``TV``; the reason gives ``TV_low`` too.

``τ`` (``mixture_sd``, default 0.05) sets the sample size at which the intervals are narrowest; it does
not affect validity. ``w_k`` is within a few percent of its smallest for ``τ²`` between about 5 and 30
times ``V_k``: at ``τ = 0.05``, for a class with a share of about 0.2, between about 700 and 4,000 rows
per arm, the first stages' windows. Classes are counted as they are seen: until every class of positive
probability has been seen in some arm, ``alpha`` is shared among fewer intervals than there are classes
(a class unseen after ``min_samples`` rows in both arms is rare, so this slack is small).

The counts come from shadow comparisons: both models score the same inputs, so the two arms are paired.
``V_k`` treats them as independent. A canary that keeps stable's answer on most inputs, and otherwise
answers independently of it, makes the two class indicators positively correlated, and the variance of
``d̂_k`` is then smaller than ``V_k``: the intervals are conservative. A canary that systematically
swaps classes correlates them negatively, and can make them too narrow; the agreement gate, where it is
set, catches such a canary from its disagreement rate.

Latency: histograms from many devices are merged bucket by bucket (they must share bucket bounds, see
:data:`LATENCY_BOUNDS_MS`) and the p95 is interpolated linearly inside its bucket, as Prometheus'
``histogram_quantile`` does. A p95 in the overflow bucket is above the last bound: a failure when that
bound is already over budget, inconclusive otherwise. It is a budget check, not a test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fleet.controller.rollout.phase import Verdict
from fleet.controller.rollout.sequential import (
    SequentialTest,
    always_valid_p,
    confidence_radius,
    log_e_value,
    one_sided_test,
    total_variation,
)

# Upper bounds (ms, inclusive) of the latency buckets agents report: one definition, the agent's.
from fleet.shared.latency import LatencyHistogram, quantile_ms


class Gate(StrEnum):
    """What was checked; the name recorded with a rollback."""

    P95_LATENCY = "p95_latency"
    """p95 inference latency of the canary on a cohort against the class's budget (ms)."""
    ERROR_RATE = "error_rate"
    """Failed inferences / inferences of the canary on a cohort."""
    ACCURACY = "accuracy"
    """Canary accuracy minus stable accuracy on labelled feedback, one-sided mSPRT against -δ."""
    AGREEMENT = "agreement"
    """Share of paired shadow comparisons on which canary and stable disagree, mSPRT against a bound."""
    PREDICTION_SHIFT = "prediction_shift"
    """Total variation distance between canary and stable predicted-class distributions, sequentially."""
    MAE = "mae"
    """Canary mean absolute error minus stable's on field targets (regressors), one-sided mSPRT against δ."""
    ARTIFACT = "artifact"
    """Targeted devices that refused the canary's artifact (sha256, signature, release, load, smoke)."""
    DATA = "data"
    """The stage's minimums: confirmed devices, inferences and labelled feedback (never FAIL by itself)."""


class GateResult(BaseModel):
    """One gate on one cohort: the verdict, what was measured and what it was held against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gate: Gate
    cohort: str
    verdict: Verdict
    measured: float | None = Field(description="None when there was nothing to measure")
    threshold: float
    samples: int = Field(ge=0, description="observations behind ``measured``")
    reason: str
    p_value: float | None = None
    log_e: float | None = Field(
        None,
        description="log e-value of this stage window's sequential test, the value to carry into "
        "the next window of the same gate and cohort; None when it has none (no samples, or a gate "
        "that is not an e-process)",
    )


class AccuracyTest(BaseModel):
    """The one-sided sequential accuracy test, with everything needed to check it by hand."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict
    canary_correct: int
    canary_total: int
    stable_correct: int
    stable_total: int
    canary_accuracy: float | None
    stable_accuracy: float | None
    delta: float
    alpha: float
    min_samples: int
    z: float | None = Field(
        description="Wald z, for reading; None when inconclusive for lack of samples"
    )
    p_value: float | None = Field(
        description="always-valid p-value min(1, 1/(E_carried · E)); None when inconclusive"
    )
    reason: str
    log_ratio: float | None = Field(
        None, description="log Λ of the two-sided mSPRT, for reading; None when not tested"
    )
    mixture_sd: float = Field(0.05, gt=0, description="τ, the mSPRT's mixing standard deviation")
    log_e: float | None = Field(
        None,
        description="log E of this window's one-sided e-process, also below min_samples; None "
        "when an arm has no labelled predictions",
    )
    prior_log_e: float = Field(
        0.0, description="the summed final log e-values of the earlier windows, as carried in"
    )

    @property
    def difference(self) -> float | None:
        """Canary accuracy minus stable accuracy."""
        if self.canary_accuracy is None or self.stable_accuracy is None:
            return None
        return self.canary_accuracy - self.stable_accuracy


def _check_counts(correct: int, total: int, arm: str) -> None:
    if total < 0 or correct < 0 or correct > total:
        raise ValueError(f"{arm}: correct ({correct}) must be within 0..total ({total})")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha} is not in (0, 1)")


def _check_level(alpha: float, mixture_sd: float) -> None:
    _check_alpha(alpha)
    if not mixture_sd > 0:
        raise ValueError(f"mixture_sd: {mixture_sd} must be positive")


def _exp_text(log_value: float) -> str:
    """``exp(log_value)`` for a reason, without overflowing on a very large one."""
    if -700 < log_value < 700:
        return f"{math.exp(log_value):.3g}"
    return f"e^{log_value:.0f}"


def _evidence_text(test: SequentialTest, tau: float) -> str:
    """This window's e-value, what was carried into it when anything was, and the p-value."""
    evidence = f"e={_exp_text(test.log_e)}"
    if test.prior_log_e != 0:
        evidence += (
            f" · {_exp_text(test.prior_log_e)} carried from earlier stages "
            f"= {_exp_text(test.log_e + test.prior_log_e)}"
        )
    return f"one-sided mSPRT {evidence} (τ={tau:g}), p={test.p_value:.3g}"


def _check_prior(prior_log_e: float) -> None:
    if math.isnan(prior_log_e) or prior_log_e == math.inf:
        raise ValueError(f"prior_log_e: {prior_log_e} must be a number below infinity")


def accuracy_test(
    *,
    canary_correct: int,
    canary_total: int,
    stable_correct: int,
    stable_total: int,
    delta: float,
    alpha: float,
    min_samples: int,
    mixture_sd: float = 0.05,
    prior_log_e: float = 0.0,
) -> AccuracyTest:
    """Is the canary worse than stable by more than ``delta``? A one-sided mSPRT; see the module docstring.

    ``prior_log_e`` is the sum of the log e-values (``log_e``) the earlier stage windows of the same
    rollout and cohort ended with: each window's FINAL value, not one chosen by looking. With it,
    ``alpha`` is the rollout's, not a stage's share.
    """
    _check_counts(canary_correct, canary_total, "canary")
    _check_counts(stable_correct, stable_total, "stable")
    _check_level(alpha, mixture_sd)
    _check_prior(prior_log_e)
    acc_c = canary_correct / canary_total if canary_total else None
    acc_s = stable_correct / stable_total if stable_total else None
    counts = dict(
        canary_correct=canary_correct,
        canary_total=canary_total,
        stable_correct=stable_correct,
        stable_total=stable_total,
        canary_accuracy=acc_c,
        stable_accuracy=acc_s,
        delta=delta,
        alpha=alpha,
        min_samples=min_samples,
        mixture_sd=mixture_sd,
        prior_log_e=prior_log_e,
    )
    variance = (
        _variance(canary_correct, canary_total) + _variance(stable_correct, stable_total)
        if canary_total and stable_total
        else None
    )
    short = [
        f"{arm} has {n} labelled predictions (need {min_samples})"
        for arm, n in (("canary", canary_total), ("stable", stable_total))
        if n < min_samples or n == 0
    ]
    if short:
        log_e = None
        if variance is not None and acc_c is not None and acc_s is not None:
            # the window's e-process has a value to carry even before it may give a verdict
            log_e = log_e_value(acc_c - acc_s, -delta, variance, mixture_sd, "less")
        return AccuracyTest(
            verdict=Verdict.INCONCLUSIVE,
            z=None,
            p_value=None,
            reason="; ".join(short),
            log_e=log_e,
            **counts,
        )
    assert acc_c is not None and acc_s is not None and variance is not None
    test = one_sided_test(
        estimate=acc_c - acc_s,
        null=-delta,
        variance=variance,
        tau=mixture_sd,
        alpha=alpha,
        alternative="less",
        prior_log_e=prior_log_e,
    )
    z = (acc_c - acc_s + delta) / math.sqrt(variance)
    summary = (
        f"canary {acc_c:.2%} ({canary_correct}/{canary_total}) vs stable {acc_s:.2%} "
        f"({stable_correct}/{stable_total}), δ={delta:g}: z={z:.2f}, "
        f"{_evidence_text(test, mixture_sd)}"
    )
    if test.reject:
        reason = f"{summary} ≤ alpha={alpha:g}: canary worse than stable by more than δ"
    else:
        reason = f"{summary} > alpha={alpha:g}: no evidence the canary is worse by more than δ"
    return AccuracyTest(
        verdict=Verdict.FAIL if test.reject else Verdict.PASS,
        z=z,
        p_value=test.p_value,
        log_ratio=test.log_ratio,
        log_e=test.log_e,
        reason=reason,
        **counts,
    )


def _variance(correct: int, total: int) -> float:
    """p(1 - p)/n of one arm; at p = 0 or 1, p is taken as (x + 1/2)/(n + 1) so it is not zero."""
    p = correct / total if 0 < correct < total else (correct + 0.5) / (total + 1)
    return p * (1 - p) / total


def accuracy_gate(test: AccuracyTest, cohort: str) -> GateResult:
    """The accuracy test as a gate: measured is the accuracy difference, threshold is -δ."""
    return GateResult(
        gate=Gate.ACCURACY,
        cohort=cohort,
        verdict=test.verdict,
        measured=test.difference,
        threshold=-test.delta,
        samples=min(test.canary_total, test.stable_total),
        reason=test.reason,
        p_value=test.p_value,
        log_e=test.log_e,
    )


class ErrorSums(BaseModel):
    """A regressor arm's absolute errors on labelled predictions, summed: enough for a mean and a
    variance, and additive across reports and devices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(0, ge=0, description="labelled predictions")
    total: float = Field(0.0, ge=0, description="Σ |ŷ - y|")
    squares: float = Field(0.0, ge=0, description="Σ |ŷ - y|²")

    def plus(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            n=self.n + other.n,
            total=self.total + other.total,
            squares=self.squares + other.squares,
        )

    @property
    def mean(self) -> float | None:
        """The mean absolute error; None without a labelled prediction."""
        return self.total / self.n if self.n else None

    def variance_of_mean(self) -> float:
        """``s²/n`` of the mean, with ``s²`` floored (see the module docstring); needs ``n ≥ 1``."""
        mean = self.total / self.n
        sample = (
            max(0.0, (self.squares - self.n * mean * mean) / (self.n - 1)) if self.n > 1 else 0.0
        )
        floor = max(mean * mean / self.n, 1e-12)
        return max(sample, floor) / self.n


def mae_gate(
    *,
    canary: ErrorSums,
    stable: ErrorSums,
    max_increase: float,
    alpha: float,
    min_samples: int,
    cohort: str,
    mixture_sd: float | None = None,
    prior_log_e: float = 0.0,
    note: str = "",
) -> GateResult:
    """Is the canary's mean absolute error worse than stable's by more than ``max_increase``?

    A one-sided mSPRT of ``H0: MAE_c - MAE_s ≤ max_increase`` (see the module docstring), with the
    log e-values carried from the earlier windows (``prior_log_e``); INCONCLUSIVE until each arm has
    ``min_samples`` labelled predictions, PASS otherwise unless it fails. ``note`` (where the stable
    arm came from) ends the reason.
    """
    if not max_increase >= 0 or not math.isfinite(max_increase):
        raise ValueError(f"max_increase: {max_increase} must be a finite number ≥ 0")
    tau = mixture_sd if mixture_sd is not None else max_increase
    _check_level(alpha, tau)
    _check_prior(prior_log_e)
    tail = f" ({note})" if note else ""

    def result(
        verdict: Verdict,
        measured: float | None,
        reason: str,
        *,
        p_value: float | None = None,
        log_e: float | None = None,
    ) -> GateResult:
        return GateResult(
            gate=Gate.MAE,
            cohort=cohort,
            verdict=verdict,
            measured=measured,
            threshold=max_increase,
            samples=min(canary.n, stable.n),
            reason=reason + tail,
            p_value=p_value,
            log_e=log_e,
        )

    short = "; ".join(
        f"{arm} has {s.n} labelled predictions (need {min_samples})"
        for arm, s in (("canary", canary), ("stable", stable))
        if s.n < min_samples or s.n == 0
    )
    if canary.n == 0 or stable.n == 0:
        return result(Verdict.INCONCLUSIVE, None, f"{cohort}: {short}")
    mae_c, mae_s = canary.total / canary.n, stable.total / stable.n
    variance = canary.variance_of_mean() + stable.variance_of_mean()
    difference = mae_c - mae_s
    if short:  # the window's e-process has a value to carry even before it may give a verdict
        return result(
            Verdict.INCONCLUSIVE,
            None,
            f"{cohort}: {short}",
            log_e=log_e_value(difference, max_increase, variance, tau, "greater"),
        )
    test = one_sided_test(
        estimate=difference,
        null=max_increase,
        variance=variance,
        tau=tau,
        alpha=alpha,
        alternative="greater",
        prior_log_e=prior_log_e,
    )
    summary = (
        f"MAE canary {mae_c:.4g} (n={canary.n}) vs stable {mae_s:.4g} (n={stable.n}) on {cohort}, "
        f"δ={max_increase:g}: {_evidence_text(test, tau)}"
    )
    if test.reject:
        reason = f"{summary} ≤ alpha={alpha:g}: canary's error larger than stable's by more than δ"
    else:
        reason = (
            f"{summary} > alpha={alpha:g}: no evidence the canary's error is larger by more than δ"
        )
    return result(
        Verdict.FAIL if test.reject else Verdict.PASS,
        difference,
        reason,
        p_value=test.p_value,
        log_e=test.log_e,
    )


def latency_gate(
    histogram: LatencyHistogram | None, *, budget_ms: float, min_samples: int, cohort: str
) -> GateResult:
    """p95 of the canary's merged histogram against the cohort's budget.

    INCONCLUSIVE below ``min_samples`` latencies, so a handful of slow first inferences (cold caches)
    neither rolls back nor passes.
    """
    n = histogram.total if histogram is not None else 0

    def result(verdict: Verdict, measured: float | None, reason: str) -> GateResult:
        return GateResult(
            gate=Gate.P95_LATENCY,
            cohort=cohort,
            verdict=verdict,
            measured=measured,
            threshold=budget_ms,
            samples=n,
            reason=reason,
        )

    if histogram is None or n < min_samples:
        return result(
            Verdict.INCONCLUSIVE, None, f"{n} latencies measured on {cohort} (need {min_samples})"
        )
    estimate = quantile_ms(histogram, 0.95)
    assert estimate is not None
    p95, overflow = estimate
    if overflow:
        if p95 >= budget_ms:
            return result(
                Verdict.FAIL,
                p95,
                f"p95 above {p95:g} ms (the histogram's last bound) > budget {budget_ms:g} ms "
                f"on {cohort} (n={n})",
            )
        return result(
            Verdict.INCONCLUSIVE,
            p95,
            f"p95 above {p95:g} ms, the histogram's last bound, which is below the budget "
            f"{budget_ms:g} ms on {cohort}: buckets too coarse to judge",
        )
    if p95 > budget_ms:
        return result(
            Verdict.FAIL, p95, f"p95 {p95:.3g} ms > budget {budget_ms:g} ms on {cohort} (n={n})"
        )
    return result(
        Verdict.PASS, p95, f"p95 {p95:.3g} ms ≤ budget {budget_ms:g} ms on {cohort} (n={n})"
    )


def _exceeds(
    count: int, n: int, bound: float, *, alpha: float, tau: float, prior_log_e: float
) -> SequentialTest:
    """``H0: rate ≤ bound`` against ``rate > bound`` at any number of looks; ``n`` must be positive.

    The variance is the null boundary's, ``bound(1 - bound)/n`` (a rate under a bound of at most ½ has
    less, so there this errs on the safe side). At ``bound = 0`` one event refutes H0 outright (``E = ∞``, p = 0) and
    none is no evidence either way (``E = 1``); at ``bound = 1`` nothing can exceed it (``E = 1``).
    """
    if 0 < bound < 1:
        return one_sided_test(
            estimate=count / n,
            null=bound,
            variance=bound * (1 - bound) / n,
            tau=tau,
            alpha=alpha,
            alternative="greater",
            prior_log_e=prior_log_e,
        )
    log_e = math.inf if bound == 0 and count > 0 else 0.0
    total = prior_log_e + log_e
    return SequentialTest(
        log_ratio=log_e,
        p_value=always_valid_p(total),
        reject=total >= -math.log(alpha),
        log_e=log_e,
        prior_log_e=prior_log_e,
    )


def _check_bound(name: str, bound: float) -> None:
    if not 0 <= bound <= 1:
        raise ValueError(f"{name}: {bound} is not in [0, 1]")


def _rate_gate(
    *,
    gate: Gate,
    what: str,
    unit: str,
    count: int,
    n: int,
    bound: float,
    alpha: float,
    min_samples: int,
    cohort: str,
    mixture_sd: float,
    prior_log_e: float,
) -> GateResult:
    """``count / n`` against ``bound`` by :func:`_exceeds`; INCONCLUSIVE below ``min_samples``.

    Below ``min_samples`` (but with some data) the window's ``log_e`` is still given, for the caller
    to carry when the window ends there.
    """
    if n < min_samples or n == 0:
        return GateResult(
            gate=gate,
            cohort=cohort,
            verdict=Verdict.INCONCLUSIVE,
            measured=None,
            threshold=bound,
            samples=n,
            reason=f"{n} {unit} on {cohort} (need {min_samples})",
            log_e=(
                _exceeds(count, n, bound, alpha=alpha, tau=mixture_sd, prior_log_e=0.0).log_e
                if n
                else None
            ),
        )
    rate = count / n
    test = _exceeds(count, n, bound, alpha=alpha, tau=mixture_sd, prior_log_e=prior_log_e)
    observed = f"{what} rate {rate:.2%} ({count}/{n})"
    evidence = _evidence_text(test, mixture_sd)
    if bound == 0 and count > 0:
        reason = f"{observed} > 0 on {cohort}: none is allowed"
    elif rate <= bound:
        reason = f"{observed} ≤ {bound:.2%} on {cohort}"
        if test.reject:  # only with a carried value that had crossed the threshold already
            reason += f", but {evidence} ≤ alpha={alpha:g}"
        elif prior_log_e != 0:
            reason += f" ({evidence})"
    elif test.reject:
        reason = f"{observed} > {bound:.2%} on {cohort}: {evidence} ≤ alpha={alpha:g}"
    else:
        reason = (
            f"{observed} > {bound:.2%} on {cohort}, not significantly: {evidence} > alpha={alpha:g}"
        )
    return GateResult(
        gate=gate,
        cohort=cohort,
        verdict=Verdict.FAIL if test.reject else Verdict.PASS,
        measured=rate,
        threshold=bound,
        samples=n,
        reason=reason,
        p_value=test.p_value,
        log_e=test.log_e,
    )


def error_rate_gate(
    *,
    errors: int,
    inferences: int,
    max_rate: float,
    min_samples: int,
    cohort: str,
    alpha: float = 0.05,
    mixture_sd: float = 0.01,
    prior_log_e: float = 0.0,
) -> GateResult:
    """Failed inferences over inferences against ``max_rate``: FAIL on sequential evidence it is above.

    A one-sided mSPRT of ``H0: rate ≤ max_rate`` (see the module docstring), with the log e-values
    carried from the earlier windows of the same rollout and cohort (``prior_log_e``, each window's
    final value); INCONCLUSIVE below ``min_samples`` inferences, PASS otherwise unless it fails.
    """
    if errors < 0 or inferences < 0 or errors > inferences:
        raise ValueError(f"errors ({errors}) must be within 0..inferences ({inferences})")
    _check_bound("max_rate", max_rate)
    _check_level(alpha, mixture_sd)
    _check_prior(prior_log_e)
    return _rate_gate(
        gate=Gate.ERROR_RATE,
        what="error",
        unit="inferences",
        count=errors,
        n=inferences,
        bound=max_rate,
        alpha=alpha,
        min_samples=min_samples,
        cohort=cohort,
        mixture_sd=mixture_sd,
        prior_log_e=prior_log_e,
    )


def agreement_gate(
    *,
    compared: int,
    disagreed: int,
    max_disagreement: float,
    alpha: float,
    min_samples: int,
    cohort: str,
    mixture_sd: float = 0.05,
    prior_log_e: float = 0.0,
) -> GateResult:
    """Paired shadow comparisons: FAIL on sequential evidence that disagreement exceeds the bound.

    The canary and the stable model run on the same inputs on a device; a comparison disagrees when
    their top classes differ (or, for a regressor, their outputs differ by more than a tolerance). A
    one-sided mSPRT of ``H0: disagreement ≤ max_disagreement``, as for the error rate, with the log
    e-values carried from the earlier windows (``prior_log_e``).
    """
    if compared < 0 or disagreed < 0 or disagreed > compared:
        raise ValueError(f"disagreed ({disagreed}) must be within 0..compared ({compared})")
    _check_bound("max_disagreement", max_disagreement)
    _check_level(alpha, mixture_sd)
    _check_prior(prior_log_e)
    return _rate_gate(
        gate=Gate.AGREEMENT,
        what="disagreement",
        unit="shadow comparisons",
        count=disagreed,
        n=compared,
        bound=max_disagreement,
        alpha=alpha,
        min_samples=min_samples,
        cohort=cohort,
        mixture_sd=mixture_sd,
        prior_log_e=prior_log_e,
    )


def _aligned(
    canary: Mapping[str, int], stable: Mapping[str, int]
) -> tuple[list[str], list[int], list[int]]:
    """The union of classes, sorted, and each arm's counts over it (0 where absent)."""
    for arm, counts in (("canary", canary), ("stable", stable)):
        bad = sorted(k for k, v in counts.items() if v < 0)
        if bad:
            raise ValueError(f"{arm}_counts: negative counts for {', '.join(bad)}")
    classes = sorted(set(canary) | set(stable))
    return classes, [canary.get(k, 0) for k in classes], [stable.get(k, 0) for k in classes]


def total_variation_lower_bound(
    canary: Sequence[int], stable: Sequence[int], *, alpha: float, tau: float
) -> float:
    """``TV_low``: at least the true total variation distance at every look, with probability ``1 - alpha``.

    ``max(Σ_k max(0, d̂_k - w_k), Σ_k max(0, -d̂_k - w_k))`` over the classes seen in either arm, each
    ``w_k`` the confidence-sequence radius at ``alpha / K`` (see the module docstring). Both vectors are
    over the same classes, and each needs a count.
    """
    total_variation(canary, stable)  # checks the vectors
    _check_alpha(alpha)
    n_c, n_s = sum(canary), sum(stable)
    seen = [(x, y) for x, y in zip(canary, stable, strict=True) if x or y]
    level = alpha / len(seen)
    above = below = 0.0
    for x, y in seen:
        difference = x / n_c - y / n_s
        radius = confidence_radius(_variance(x, n_c) + _variance(y, n_s), tau, level)
        above += max(0.0, difference - radius)
        below += max(0.0, -difference - radius)
    return max(above, below)


def prediction_shift_gate(
    *,
    canary_counts: Mapping[str, int],
    stable_counts: Mapping[str, int],
    max_distance: float,
    alpha: float,
    min_samples: int,
    cohort: str,
    mixture_sd: float = 0.05,
) -> GateResult:
    """Has the canary's predicted-class distribution moved away from stable's by more than ``max_distance``?

    FAIL when the anytime lower confidence bound of the total variation distance,
    :func:`total_variation_lower_bound` at ``alpha`` with ``τ = mixture_sd``, exceeds ``max_distance``
    (valid however often it is looked at, see the module docstring); PASS when each arm has
    ``min_samples`` predictions and it does not fail; INCONCLUSIVE otherwise. ``measured`` is the point
    estimate of the distance. The bound does not carry from one stage window to the next (there is no
    ``log_e``), so the caller passes ``alpha / stages`` here, not the rollout's alpha.
    """
    _, canary, stable = _aligned(canary_counts, stable_counts)
    _check_bound("max_distance", max_distance)
    _check_level(alpha, mixture_sd)
    n_c, n_s = sum(canary), sum(stable)

    def result(verdict: Verdict, measured: float | None, reason: str) -> GateResult:
        return GateResult(
            gate=Gate.PREDICTION_SHIFT,
            cohort=cohort,
            verdict=verdict,
            measured=measured,
            threshold=max_distance,
            samples=min(n_c, n_s),
            reason=reason,
        )

    short = [
        f"{arm} has {n} predictions (need {min_samples})"
        for arm, n in (("canary", n_c), ("stable", n_s))
        if n < min_samples or n == 0
    ]
    if short:
        return result(Verdict.INCONCLUSIVE, None, f"{cohort}: {'; '.join(short)}")
    distance = total_variation(canary, stable)
    low = total_variation_lower_bound(canary, stable, alpha=alpha, tau=mixture_sd)
    shifted = low > max_distance
    classes = sum(1 for x, y in zip(canary, stable, strict=True) if x or y)
    summary = (
        f"predicted classes on {cohort}: total variation {distance:.3f}, at least {low:.3f} with "
        f"{100 * (1 - alpha):.4g}% confidence over every look {'>' if shifted else '≤'} "
        f"{max_distance:g} ({classes} classes, τ={mixture_sd:g}; canary n={n_c}, stable n={n_s})"
    )
    if shifted:
        return result(Verdict.FAIL, distance, f"{summary}: the canary's predictions shifted")
    return result(Verdict.PASS, distance, summary)
