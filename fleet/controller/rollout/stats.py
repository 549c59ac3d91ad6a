"""The gates' arithmetic: a one-sided accuracy test, p95 latency from histograms, the error rate.

Each gate is a pure function from counts to a :class:`GateResult`: a verdict, the measured value, the
threshold it was held against and a reason a person can read. Keeping the statistics apart from the
rollout logic lets them be checked against reference values on their own, and keeps the decision code
free of arithmetic. Only the standard library is used here (``math.erfc``): the controller does not
depend on scipy.

Accuracy: the hypothesis, chosen so that only evidence rolls a canary back
--------------------------------------------------------------------------
With ``p_c`` and ``p_s`` the accuracies of the canary and the stable version on labelled field feedback
from the same cohort and window, and ``δ`` the tolerated drop::

    H0: p_c ≥ p_s - δ      (the canary is not worse by more than δ)
    H1: p_c < p_s - δ      (the canary is worse by more than δ)

    z = (p̂_c - p̂_s + δ) / SE,   SE = sqrt(p̂_c(1 - p̂_c)/n_c + p̂_s(1 - p̂_s)/n_s)   (unpooled, Wald)
    p-value = Φ(z)   (lower tail)

The gate FAILS when ``p < alpha``: significant evidence that the canary is worse by more than δ. It PASSES
when H0 cannot be rejected and both arms have at least ``min_samples`` labels, and is INCONCLUSIVE below
that, so a canary cannot pass on a handful of labels. This is a guard against regressions, not a proof of
non-inferiority: its power grows with the labels. At 200 labels per arm and accuracies near 90%, a drop of
about δ + 5 points is caught half the time; more labels (a longer bake, a larger stage) catch smaller drops. The
gate is evaluated on every pass over accumulating data, so a canary exactly δ worse is rolled back at
some pass with probability above alpha; a canary no worse than stable has z centred at δ/SE > 0 and is
rarely rolled back. An arm that is all right (or all wrong) would add no variance, and with both so SE
would be zero; such an arm's variance is taken at p = (x + 1/2)/(n + 1) instead (a Haldane-style
correction), which keeps z finite.

Latency: histograms from many devices are merged bucket by bucket (they must share bucket bounds, see
:data:`LATENCY_BOUNDS_MS`) and the p95 is interpolated linearly inside its bucket, as Prometheus'
``histogram_quantile`` does. A p95 in the overflow bucket is above the last bound: a failure when that
bound is already over budget, inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.controller.rollout.phase import Verdict

# Upper bounds (ms, inclusive) of the latency buckets agents report: one definition, the agent's.
from fleet.shared.protocol import LATENCY_BOUNDS_MS


class Gate(StrEnum):
    """What was checked; the name recorded with a rollback."""

    P95_LATENCY = "p95_latency"
    """p95 inference latency of the canary on a cohort against the class's budget (ms)."""
    ERROR_RATE = "error_rate"
    """Failed inferences / inferences of the canary on a cohort."""
    ACCURACY = "accuracy"
    """Canary accuracy minus stable accuracy on labelled feedback, one-sided test against -δ."""
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


class AccuracyTest(BaseModel):
    """The one-sided accuracy test, with everything needed to check it by hand."""

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
    z: float | None = Field(description="None when inconclusive for lack of samples")
    p_value: float | None
    reason: str

    @property
    def difference(self) -> float | None:
        """Canary accuracy minus stable accuracy."""
        if self.canary_accuracy is None or self.stable_accuracy is None:
            return None
        return self.canary_accuracy - self.stable_accuracy


def _check_counts(correct: int, total: int, arm: str) -> None:
    if total < 0 or correct < 0 or correct > total:
        raise ValueError(f"{arm}: correct ({correct}) must be within 0..total ({total})")


def accuracy_test(
    *,
    canary_correct: int,
    canary_total: int,
    stable_correct: int,
    stable_total: int,
    delta: float,
    alpha: float,
    min_samples: int,
) -> AccuracyTest:
    """Is the canary worse than stable by more than ``delta``? See the module docstring for the test."""
    _check_counts(canary_correct, canary_total, "canary")
    _check_counts(stable_correct, stable_total, "stable")
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
    )
    short = [
        f"{arm} has {n} labelled predictions (need {min_samples})"
        for arm, n in (("canary", canary_total), ("stable", stable_total))
        if n < min_samples
    ]
    if short:
        return AccuracyTest(
            verdict=Verdict.INCONCLUSIVE, z=None, p_value=None, reason="; ".join(short), **counts
        )
    assert acc_c is not None and acc_s is not None
    se = math.sqrt(
        _variance(canary_correct, canary_total) + _variance(stable_correct, stable_total)
    )
    z = (acc_c - acc_s + delta) / se
    p_value = 0.5 * math.erfc(-z / math.sqrt(2))
    worse = p_value < alpha
    summary = (
        f"canary {acc_c:.2%} ({canary_correct}/{canary_total}) vs stable {acc_s:.2%} "
        f"({stable_correct}/{stable_total}), δ={delta:g}: z={z:.2f}, p={p_value:.3g}"
    )
    if worse:
        reason = f"{summary} < alpha={alpha:g}: canary worse than stable by more than δ"
    else:
        reason = f"{summary} ≥ alpha={alpha:g}: no evidence the canary is worse by more than δ"
    return AccuracyTest(
        verdict=Verdict.FAIL if worse else Verdict.PASS,
        z=z,
        p_value=p_value,
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
    )


class LatencyHistogram(BaseModel):
    """Inference latencies counted into buckets: ``counts[i]`` ≤ ``bounds_ms[i]``, the last is overflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bounds_ms: tuple[float, ...] = Field(LATENCY_BOUNDS_MS, min_length=1)
    counts: tuple[int, ...]

    @model_validator(mode="after")
    def _shape(self) -> LatencyHistogram:
        if any(b <= a for a, b in zip(self.bounds_ms, self.bounds_ms[1:], strict=False)):
            raise ValueError("bounds_ms: bucket bounds must be strictly increasing")
        if self.bounds_ms[0] <= 0:
            raise ValueError("bounds_ms: bucket bounds must be positive")
        if len(self.counts) != len(self.bounds_ms) + 1:
            raise ValueError(
                f"counts: {len(self.counts)} counts for {len(self.bounds_ms)} bounds "
                f"(need one per bound plus the overflow bucket)"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("counts: must not be negative")
        return self

    @classmethod
    def empty(cls, bounds_ms: tuple[float, ...] = LATENCY_BOUNDS_MS) -> LatencyHistogram:
        """No samples, on ``bounds_ms``."""
        return cls(bounds_ms=bounds_ms, counts=(0,) * (len(bounds_ms) + 1))

    @classmethod
    def of(
        cls, latencies_ms: Iterable[float], bounds_ms: tuple[float, ...] = LATENCY_BOUNDS_MS
    ) -> LatencyHistogram:
        """The histogram of raw latencies (for agents, simulators and tests)."""
        counts = [0] * (len(bounds_ms) + 1)
        for value in latencies_ms:
            counts[next((i for i, b in enumerate(bounds_ms) if value <= b), len(bounds_ms))] += 1
        return cls(bounds_ms=bounds_ms, counts=tuple(counts))

    @property
    def total(self) -> int:
        """Number of latencies counted."""
        return sum(self.counts)


def merge_histograms(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram | None:
    """The bucket-wise sum; None for no histograms. Different bounds raise ValueError."""
    merged: LatencyHistogram | None = None
    for h in histograms:
        if merged is None:
            merged = h
            continue
        if h.bounds_ms != merged.bounds_ms:
            raise ValueError(f"bounds_ms: cannot merge {h.bounds_ms} into {merged.bounds_ms}")
        merged = LatencyHistogram(
            bounds_ms=merged.bounds_ms,
            counts=tuple(a + b for a, b in zip(merged.counts, h.counts, strict=True)),
        )
    return merged


def quantile_ms(histogram: LatencyHistogram, q: float) -> tuple[float, bool] | None:
    """``(estimate, overflow)`` of quantile ``q``; None when empty.

    Interpolates linearly inside the bucket holding the rank (the first bucket starts at 0). When the
    rank falls in the overflow bucket the estimate is the last bound and ``overflow`` is True: the true
    value is somewhere above it.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q: {q} is not in (0, 1]")
    total = histogram.total
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram.counts):
        if count and seen + count >= rank:
            if i == len(histogram.bounds_ms):
                return histogram.bounds_ms[-1], True
            low = histogram.bounds_ms[i - 1] if i else 0.0
            high = histogram.bounds_ms[i]
            return low + (high - low) * (rank - seen) / count, False
        seen += count
    raise AssertionError("unreachable: the counts add up to total")  # pragma: no cover


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


def error_rate_gate(
    *, errors: int, inferences: int, max_rate: float, min_samples: int, cohort: str
) -> GateResult:
    """Failed inferences over inferences against ``max_rate``; INCONCLUSIVE below ``min_samples``."""
    if errors < 0 or inferences < 0 or errors > inferences:
        raise ValueError(f"errors ({errors}) must be within 0..inferences ({inferences})")
    if inferences < min_samples:
        verdict, measured = Verdict.INCONCLUSIVE, None
        reason = f"{inferences} inferences on {cohort} (need {min_samples})"
    else:
        rate = errors / inferences
        verdict, measured = (Verdict.FAIL, rate) if rate > max_rate else (Verdict.PASS, rate)
        sign = ">" if verdict is Verdict.FAIL else "≤"
        reason = f"error rate {rate:.2%} ({errors}/{inferences}) {sign} {max_rate:.2%} on {cohort}"
    return GateResult(
        gate=Gate.ERROR_RATE,
        cohort=cohort,
        verdict=verdict,
        measured=measured,
        threshold=max_rate,
        samples=inferences,
        reason=reason,
    )
