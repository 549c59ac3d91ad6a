"""fleet.controller.rollout.stats and phase: the gates' arithmetic and the worst-wins order of verdicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_ndtr
from scipy.stats import chi2, norm

from fleet.controller.rollout.phase import VERDICT_ORDER, RolloutPhase, Verdict, worst
from fleet.controller.rollout.sequential import confidence_radius, total_variation
from fleet.controller.rollout.stats import (
    ErrorSums,
    Gate,
    GateResult,
    accuracy_gate,
    accuracy_test,
    agreement_gate,
    error_rate_gate,
    latency_gate,
    mae_gate,
    prediction_shift_gate,
    total_variation_lower_bound,
)
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram, merge_histograms, quantile_ms


def acc(
    cc: int, cn: int, sc: int, sn: int, *, delta: float = 0.02, minimum: int = 100, prior: float = 0
):
    return accuracy_test(
        canary_correct=cc,
        canary_total=cn,
        stable_correct=sc,
        stable_total=sn,
        delta=delta,
        alpha=0.05,
        min_samples=minimum,
        prior_log_e=prior,
    )


# --- verdicts and phases -------------------------------------------------------------------------------


def test_worst_wins_and_nothing_is_not_a_pass() -> None:
    assert VERDICT_ORDER == (Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.FAIL)
    assert worst([Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE]) is Verdict.FAIL
    assert worst([Verdict.PASS, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert worst([Verdict.PASS, Verdict.PASS]) is Verdict.PASS
    assert worst([]) is Verdict.INCONCLUSIVE
    assert Verdict.FAIL.is_worse(Verdict.INCONCLUSIVE) and not Verdict.PASS.is_worse(Verdict.PASS)


def test_phase_behaviour() -> None:
    terminal = {p for p in RolloutPhase if p.is_terminal()}
    assert terminal == {
        RolloutPhase.SUCCEEDED,
        RolloutPhase.ROLLED_BACK,
        RolloutPhase.FAILED,
        RolloutPhase.ABORTED,
    }
    assert {p for p in RolloutPhase if p.is_active()} == {
        RolloutPhase.PROGRESSING,
        RolloutPhase.PAUSED,
        RolloutPhase.ROLLING_BACK,
    }
    assert {p for p in RolloutPhase if p.can_retry()} == terminal - {RolloutPhase.SUCCEEDED}
    assert not any(p.is_terminal() and p.is_active() for p in RolloutPhase)


# --- accuracy ---------------------------------------------------------------------------------------------


def test_no_evidence_at_a_few_hundred_labels_is_a_pass() -> None:
    # canary 85% of 200, stable 90% of 200, δ = 0.02:
    # V = .85*.15/200 + .9*.1/200 = 0.0010875, SE = 0.0329773; z = (-.05 + .02)/SE = -0.909718
    # log Λ = ½ ln(V/(V + τ²)) + τ²(θ̂ - θ0)²/(2V(V + τ²)), τ = 0.05, θ̂ - θ0 = -0.03
    #       = ½ ln(0.0010875/0.0035875) + 0.0025 * 0.0009/(2 * 0.0010875 * 0.0035875)
    #       = -0.596787 + 0.288358 = -0.308429: Λ < 1
    # one-sided: x = 0.03 * 0.05 / sqrt(0.0010875 * 0.0035875) = 0.759418, 2Φ(x) = 1.552397,
    # log E = -0.308429 + 0.439800 = 0.131371, E = 1.14: p = 0.876893
    result = acc(170, 200, 180, 200)
    assert result.z == pytest.approx(-0.9097177, abs=1e-6)
    assert result.log_ratio == pytest.approx(-0.308429, abs=1e-6)
    assert result.log_e == pytest.approx(0.131371, abs=1e-6)
    assert result.p_value == pytest.approx(0.876893, abs=1e-6)
    assert result.verdict is Verdict.PASS
    assert (result.canary_accuracy, result.stable_accuracy) == (0.85, 0.9)
    assert "no evidence" in result.reason and "one-sided mSPRT e=1.14" in result.reason
    assert "carried" not in result.reason


def reference_log_ratio(cc: int, cn: int, sc: int, sn: int, delta: float, tau: float) -> float:
    """log of N(θ̂; -δ, V + τ²)/N(θ̂; -δ, V), from scipy's normal densities."""
    p_c, p_s = cc / cn, sc / sn
    variance = p_c * (1 - p_c) / cn + p_s * (1 - p_s) / sn
    spread = math.sqrt(variance + tau**2)
    return float(
        norm.logpdf(p_c - p_s, -delta, spread) - norm.logpdf(p_c - p_s, -delta, math.sqrt(variance))
    )


@given(
    cn=st.integers(min_value=30, max_value=2000),
    sn=st.integers(min_value=30, max_value=2000),
    pc=st.floats(min_value=0.01, max_value=0.99),
    ps=st.floats(min_value=0.01, max_value=0.99),
    delta=st.floats(min_value=0, max_value=0.1),
)
@settings(max_examples=100, database=None, deadline=None)
def test_accuracy_test_matches_a_scipy_reference(
    cn: int, sn: int, pc: float, ps: float, delta: float
) -> None:
    cc, sc = max(1, min(cn - 1, round(pc * cn))), max(1, min(sn - 1, round(ps * sn)))
    p_c, p_s = cc / cn, sc / sn
    z = (p_c - p_s + delta) / math.sqrt(p_c * (1 - p_c) / cn + p_s * (1 - p_s) / sn)
    result = acc(cc, cn, sc, sn, delta=delta, minimum=1)
    assert result.z == pytest.approx(z, rel=1e-9, abs=1e-12)
    log_ratio = reference_log_ratio(cc, cn, sc, sn, delta, 0.05)
    assert result.log_ratio == pytest.approx(log_ratio, rel=1e-9, abs=1e-9)
    # the half-normal mixture: log Λ + log(2 Φ(-(θ̂ + δ) τ / sqrt(V (V + τ²))))
    variance = p_c * (1 - p_c) / cn + p_s * (1 - p_s) / sn
    x = -(p_c - p_s + delta) * 0.05 / math.sqrt(variance * (variance + 0.05**2))
    log_e = log_ratio + math.log(2) + float(log_ndtr(x))
    assert result.log_e == pytest.approx(log_e, rel=1e-9, abs=1e-9)
    assert result.p_value == pytest.approx(min(1.0, math.exp(-log_e)), rel=1e-6, abs=1e-300)
    assert result.verdict is (Verdict.FAIL if log_e >= math.log(20) else Verdict.PASS)
    if result.verdict is Verdict.FAIL:
        assert p_c - p_s < -delta, "only an estimate on H1's side is rejected"


def test_a_clearly_worse_canary_fails() -> None:
    # 80% of 500 against 90% of 1000, δ = 0.02: V = .8*.2/500 + .9*.1/1000 = 0.00041
    # log Λ = ½ ln(0.00041/0.00291) + 0.0025 * 0.08²/(2 * 0.00041 * 0.00291)
    #       = -0.979876 + 6.705222 = 5.725346
    # x = 0.08 * 0.05 / sqrt(0.00041 * 0.00291) = 3.662027, log(2Φ(x)) = 0.693022:
    # log E = 6.418368, E = 613, p = 0.00163132 (the two-sided Λ = 307 gave 0.0032622)
    result = acc(400, 500, 900, 1000)
    assert result.log_ratio == pytest.approx(5.725346, abs=1e-6)
    assert result.log_e == pytest.approx(6.418368, abs=1e-6)
    assert result.p_value == pytest.approx(0.00163132, rel=1e-4)
    assert result.verdict is Verdict.FAIL
    assert "canary worse than stable by more than δ" in result.reason
    assert "one-sided mSPRT e=613 (τ=0.05), p=0.00163 ≤ alpha=0.05" in result.reason
    gate = accuracy_gate(result, "edge-small")
    assert (gate.gate, gate.cohort, gate.verdict) == (Gate.ACCURACY, "edge-small", Verdict.FAIL)
    assert gate.measured == pytest.approx(-0.1) and gate.threshold == -0.02
    assert gate.p_value == result.p_value and gate.log_e == result.log_e


def test_the_same_drop_on_fewer_labels_is_not_yet_evidence() -> None:
    # 75% vs 90% of 200 each: E = 59.9 ≥ 20 fails; 80% vs 90%: E = 6.16, a pass
    failing = acc(150, 200, 180, 200)
    assert failing.verdict is Verdict.FAIL and failing.p_value == pytest.approx(0.0167074, rel=1e-5)
    passing = acc(160, 200, 180, 200)
    assert passing.verdict is Verdict.PASS and passing.p_value == pytest.approx(0.162409, rel=1e-5)
    assert passing.z is not None and passing.z < -1.645, "the old fixed-sample test failed it"


def test_worse_canary_means_smaller_p() -> None:
    p_values = [acc(c, 1000, 900, 1000).p_value for c in range(1000, 499, -10)]
    known = [p for p in p_values if p is not None]
    assert len(known) == len(p_values)
    assert known == sorted(known, reverse=True)
    assert known[0] == pytest.approx(1.0) and known[-1] < 1e-12


@given(
    n=st.integers(min_value=20, max_value=1000),
    stable=st.floats(min_value=0.5, max_value=1.0),
    a=st.floats(min_value=0.5, max_value=1.0),
    b=st.floats(min_value=0.5, max_value=1.0),
)
@settings(max_examples=100, database=None, deadline=None)
def test_p_is_monotone_in_canary_accuracy(n: int, stable: float, a: float, b: float) -> None:
    low, high = sorted((round(a * n), round(b * n)))
    sc = round(stable * n)
    p_low, p_high = acc(low, n, sc, n, minimum=1).p_value, acc(high, n, sc, n, minimum=1).p_value
    assert p_low is not None and p_high is not None
    assert p_low <= p_high + 1e-12


@pytest.mark.parametrize(("cn", "sn"), [(99, 500), (500, 99), (0, 0)])
def test_inconclusive_under_the_minimum_on_either_arm(cn: int, sn: int) -> None:
    result = acc(0, cn, 0, sn)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.z is None and result.p_value is None and result.log_ratio is None
    short = [arm for arm, n in (("canary", cn), ("stable", sn)) if n < 100]
    for arm in short:
        assert f"{arm} has" in result.reason and "(need 100)" in result.reason
    # the window's e-value exists as soon as both arms have labels, for the caller to carry
    assert (result.log_e is None) is (cn == 0 or sn == 0)
    assert accuracy_gate(result, "c").log_e == result.log_e


def test_accuracy_evidence_carried_from_earlier_stages() -> None:
    """log E of 80% vs 90% on 200 each is 1.817638: a pass alone, a failure with e^1.2 carried in."""
    alone = acc(160, 200, 180, 200)
    assert alone.log_e == pytest.approx(1.817638, abs=1e-6) and alone.prior_log_e == 0
    carried = acc(160, 200, 180, 200, prior=1.2)
    assert carried.log_e == alone.log_e and carried.prior_log_e == 1.2
    assert carried.verdict is Verdict.FAIL
    assert carried.p_value == pytest.approx(math.exp(-(1.817638 + 1.2)), rel=1e-5)
    assert "e=6.16 · 3.32 carried from earlier stages = 20.4" in carried.reason
    # evidence for the null carried in holds a later stage back
    against = acc(150, 200, 180, 200, prior=-1.5)
    assert (
        against.verdict is Verdict.PASS and "· 0.223 carried from earlier stages" in against.reason
    )
    assert acc(150, 200, 180, 200).verdict is Verdict.FAIL
    # a canary better than stable cannot fail on a carried prior short of the threshold
    better = acc(190, 200, 180, 200, prior=math.log(20) - 1e-9)
    assert better.verdict is Verdict.PASS and better.log_e is not None and better.log_e < 0
    with pytest.raises(ValueError, match="prior_log_e"):
        acc(150, 200, 180, 200, prior=math.nan)


def test_all_correct_arms_keep_z_finite() -> None:
    same = acc(200, 200, 200, 200)
    assert same.z is not None and math.isfinite(same.z) and same.verdict is Verdict.PASS
    wrong = acc(0, 200, 200, 200)
    assert wrong.z is not None and math.isfinite(wrong.z) and wrong.verdict is Verdict.FAIL


def test_counts_must_add_up() -> None:
    with pytest.raises(ValueError, match="canary"):
        acc(11, 10, 0, 10)
    with pytest.raises(ValueError, match="stable"):
        acc(1, 10, -1, 10)
    with pytest.raises(ValueError, match="alpha"):
        accuracy_test(
            canary_correct=1,
            canary_total=1,
            stable_correct=1,
            stable_total=1,
            delta=0,
            alpha=0,
            min_samples=1,
        )


# --- latency --------------------------------------------------------------------------------------------


def test_default_bounds_are_the_agents() -> None:
    from fleet.agent.telemetry import TelemetryWindow

    assert TelemetryWindow().latency.bounds_ms == LatencyHistogram.model_fields["bounds_ms"].default
    assert LatencyHistogram.model_fields["bounds_ms"].default == LATENCY_BOUNDS_MS


def test_p95_is_interpolated_inside_its_bucket() -> None:
    h = LatencyHistogram(bounds_ms=(10, 20, 40), counts=(50, 30, 20, 0))
    # rank 95 of 100 falls in (20, 40], which holds ranks 81..100: 20 + 20 * (95 - 80) / 20 = 35
    assert quantile_ms(h, 0.95) == (35.0, False)
    assert quantile_ms(h, 0.5) == (10.0, False)
    assert quantile_ms(LatencyHistogram.empty((10, 20)), 0.95) is None


def test_p95_in_the_overflow_bucket() -> None:
    h = LatencyHistogram(bounds_ms=(10, 20), counts=(50, 40, 10))
    assert quantile_ms(h, 0.95) == (20, True)
    over = latency_gate(h, budget_ms=15, min_samples=10, cohort="edge-small")
    assert over.verdict is Verdict.FAIL and "above 20 ms" in over.reason
    unknown = latency_gate(h, budget_ms=50, min_samples=10, cohort="edge-small")
    assert unknown.verdict is Verdict.INCONCLUSIVE and "too coarse" in unknown.reason


def test_histograms_merge_bucket_by_bucket() -> None:
    a = LatencyHistogram.of([1, 2, 30], bounds_ms=(1, 10, 100))
    b = LatencyHistogram.of([5, 500], bounds_ms=(1, 10, 100))
    assert a.counts == (1, 1, 1, 0)
    merged = merge_histograms([a, b])
    assert merged is not None and merged.counts == (1, 2, 1, 1)
    assert merge_histograms([]) is None
    with pytest.raises(ValueError, match="cannot merge"):
        merge_histograms([a, LatencyHistogram.empty((1, 10))])


def test_latency_gate_verdicts() -> None:
    fast = LatencyHistogram.of([3.0] * 200)
    slow = LatencyHistogram.of([40.0] * 200)
    passing = latency_gate(fast, budget_ms=20, min_samples=100, cohort="host-cpu")
    assert passing.verdict is Verdict.PASS
    assert passing.measured == pytest.approx(2 + 3 * 0.95) and passing.samples == 200
    failing = latency_gate(slow, budget_ms=20, min_samples=100, cohort="edge-small")
    assert (failing.verdict, failing.threshold, failing.cohort) == (Verdict.FAIL, 20, "edge-small")
    assert failing.reason == "p95 48.8 ms > budget 20 ms on edge-small (n=200)"
    few = latency_gate(slow, budget_ms=20, min_samples=500, cohort="edge-small")
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None
    assert (
        latency_gate(None, budget_ms=20, min_samples=1, cohort="x").verdict is Verdict.INCONCLUSIVE
    )


@pytest.mark.parametrize(
    ("bounds", "counts", "field"),
    [
        ((10, 5), (0, 0, 0), "strictly increasing"),
        ((0, 5), (0, 0, 0), "positive"),
        ((5, 10), (0, 0), "one per bound"),
        ((5, 10), (0, -1, 0), "negative"),
    ],
)
def test_malformed_histograms_are_refused(
    bounds: tuple[float, ...], counts: tuple[int, ...], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        LatencyHistogram(bounds_ms=bounds, counts=counts)


# --- error rate -----------------------------------------------------------------------------------------


def rate(errors: int, inferences: int, **changes: object) -> GateResult:
    args: dict[str, Any] = dict(max_rate=0.01, min_samples=100, cohort="h") | changes
    return error_rate_gate(errors=errors, inferences=inferences, **args)


def test_error_rate_gate() -> None:
    ok = rate(1, 200)
    assert (ok.verdict, ok.measured, ok.threshold, ok.p_value) == (Verdict.PASS, 0.005, 0.01, 1.0)
    assert ok.reason == "error rate 0.50% (1/200) ≤ 1.00% on h"
    # 8/200 = 4% against 1%: V = .01*.99/200 = 4.95e-5, τ = 0.01
    # log Λ = ½ ln(4.95e-5/1.495e-4) + 1e-4 * 0.03²/(2 * 4.95e-5 * 1.495e-4) = -0.552662 + 6.080876;
    # x = 0.03 * 0.01 / sqrt(4.95e-5 * 1.495e-4) = 3.487370, log(2Φ(x)) = 0.692903: log E = 6.221117
    bad = rate(8, 200)
    assert bad.verdict is Verdict.FAIL and bad.measured == 0.04
    assert bad.log_e == pytest.approx(6.221117, abs=1e-6)
    assert bad.p_value == pytest.approx(math.exp(-6.221117), rel=1e-5)
    assert bad.reason == (
        "error rate 4.00% (8/200) > 1.00% on h: one-sided mSPRT e=503 (τ=0.01), p=0.00199 "
        "≤ alpha=0.05"
    )
    # under the limit the window still has an e-value, below 1: x = -0.581228, log E = -0.961629
    assert ok.log_e == pytest.approx(-0.961629, abs=1e-6)
    few = rate(50, 99)
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None and few.p_value is None
    assert few.reason == "99 inferences on h (need 100)"
    assert (
        few.log_e is not None and few.log_e > 0
    )  # below the minimum, but there is a value to carry
    assert rate(0, 0, min_samples=0).log_e is None
    with pytest.raises(ValueError):
        rate(5, 4, min_samples=1)
    with pytest.raises(ValueError, match="max_rate"):
        rate(0, 4, max_rate=1.5)


def test_an_error_rate_over_the_limit_needs_evidence() -> None:
    # 3/200 = 1.5% is over 1% but E = 0.98; the plain compare used to roll back on it
    over = rate(3, 200)
    assert over.verdict is Verdict.PASS and over.measured == 0.015
    assert "not significantly" in over.reason and over.p_value == 1.0
    # the same 2% fails on 1,000 inferences (E = 59.4) but not on 200 (E = 1.98)
    assert rate(4, 200).verdict is Verdict.PASS
    assert rate(20, 1000).verdict is Verdict.FAIL
    assert rate(20, 1000, alpha=0.01).verdict is Verdict.PASS


def test_error_evidence_carried_from_earlier_stages() -> None:
    # 4/200 = 2%: E = 1.98 alone (x = 1.162457, log E = 0.685431); with e^2.4 carried, 21.9 ≥ 20
    alone = rate(4, 200)
    assert alone.verdict is Verdict.PASS and alone.log_e == pytest.approx(0.685431, abs=1e-6)
    carried = rate(4, 200, prior_log_e=2.4)
    assert carried.verdict is Verdict.FAIL and carried.log_e == alone.log_e
    assert carried.p_value == pytest.approx(math.exp(-(0.685431 + 2.4)), rel=1e-5)
    assert carried.reason == (
        "error rate 2.00% (4/200) > 1.00% on h: one-sided mSPRT e=1.98 · 11 carried from earlier "
        "stages = 21.9 (τ=0.01), p=0.0457 ≤ alpha=0.05"
    )
    # under the limit, a carried prior short of the threshold fails nothing, and says what it was
    under = rate(1, 200, prior_log_e=2.9)
    assert under.verdict is Verdict.PASS and "carried from earlier stages" in under.reason
    # one already over the threshold (a caller's mistake: it would have failed before) still fails
    mistaken = rate(1, 200, prior_log_e=4.5)
    assert (
        mistaken.verdict is Verdict.FAIL and "≤ 1.00% on h, but one-sided mSPRT" in mistaken.reason
    )
    with pytest.raises(ValueError, match="prior_log_e"):
        rate(1, 200, prior_log_e=math.inf)


def test_no_error_allowed() -> None:
    none = rate(0, 500, max_rate=0.0)
    assert none.verdict is Verdict.PASS and none.log_e == 0.0  # no evidence either way
    one = rate(1, 500, max_rate=0.0)
    assert (one.verdict, one.p_value, one.log_e) == (Verdict.FAIL, 0.0, math.inf)
    assert "none is allowed" in one.reason
    assert rate(1, 50, max_rate=0.0).verdict is Verdict.INCONCLUSIVE
    # a limit of 100% cannot be exceeded: E = 1
    anything = rate(500, 500, max_rate=1.0)
    assert (anything.verdict, anything.log_e, anything.p_value) == (Verdict.PASS, 0.0, 1.0)


# --- agreement (paired shadow comparisons) -----------------------------------------------------------------


def agree(disagreed: int, compared: int, **changes: object) -> GateResult:
    args: dict[str, Any] = (
        dict(max_disagreement=0.10, alpha=0.05, min_samples=100, cohort="edge-small") | changes
    )
    return agreement_gate(compared=compared, disagreed=disagreed, **args)


def test_agreement_gate_verdicts() -> None:
    # 60/400 = 15% against 10%: V = .1*.9/400 = 2.25e-4, τ = 0.05
    # log Λ = ½ ln(2.25e-4/2.725e-3) + 0.0025 * 0.05²/(2 * 2.25e-4 * 2.725e-3)
    #       = -1.247062 + 5.096840 = 3.849778, Λ = 46.99; one-sided: x = 0.05 * 0.05 /
    # sqrt(2.25e-4 * 2.725e-3) = 3.192754, log(2Φ(x)) = 0.692442, log E = 4.542221, E = 93.9 ≥ 1/0.05
    bad = agree(60, 400)
    assert (bad.gate, bad.cohort, bad.verdict) == (Gate.AGREEMENT, "edge-small", Verdict.FAIL)
    assert (bad.measured, bad.threshold, bad.samples) == (0.15, 0.10, 400)
    assert bad.log_e == pytest.approx(4.542221, abs=1e-6)
    assert bad.p_value == pytest.approx(math.exp(-4.542221), rel=1e-5)
    assert "disagreement rate 15.00% (60/400) > 10.00%" in bad.reason
    # 52/400 = 13%: log Λ = -1.247062 + 0.0025 * 0.03²/1.22625e-6 = 0.587801, x = 1.915653,
    # log E = 0.587801 + 0.665052 = 1.252852, p = 0.286
    weak = agree(52, 400)
    assert weak.verdict is Verdict.PASS and weak.p_value == pytest.approx(math.exp(-1.252852))
    # carried from earlier stages: e^1.8 more and it fails
    assert agree(52, 400, prior_log_e=1.8).verdict is Verdict.FAIL
    assert agree(52, 400, prior_log_e=1.7).verdict is Verdict.PASS
    ok = agree(40, 400)
    assert (ok.verdict, ok.measured, ok.p_value) == (Verdict.PASS, 0.10, 1.0)
    # at the bound exactly: E = sqrt(V/(V + τ²)) = e^-1.247062
    assert ok.log_e == pytest.approx(-1.247062, abs=1e-6)
    few = agree(90, 99)
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None
    assert few.reason == "99 shadow comparisons on edge-small (need 100)"
    assert agree(0, 0, min_samples=0).verdict is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(("disagreed", "compared"), [(5, 4), (-1, 4), (0, -1)])
def test_agreement_counts_are_checked(disagreed: int, compared: int) -> None:
    with pytest.raises(ValueError, match="disagreed"):
        agree(disagreed, compared)


def test_agreement_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_disagreement"):
        agree(1, 100, max_disagreement=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        agree(1, 100, alpha=1.5)
    with pytest.raises(ValueError, match="mixture_sd"):
        agree(1, 100, mixture_sd=0.0)
    with pytest.raises(ValueError, match="prior_log_e"):
        agree(1, 100, prior_log_e=math.nan)


# --- prediction shift --------------------------------------------------------------------------------------


def shift(canary: dict[str, int], stable: dict[str, int], **changes: object) -> GateResult:
    args: dict[str, Any] = dict(max_distance=0.1, alpha=0.05, min_samples=10, cohort="host-cpu") | (
        changes
    )
    return prediction_shift_gate(canary_counts=canary, stable_counts=stable, **args)


def test_prediction_shift_needs_evidence_of_more_than_the_bound() -> None:
    # 60/40 against 40/60 on 100 rows each: d̂ = ±0.2, TV 0.2. Two classes, alpha/K = 0.025, τ = 0.05:
    # V = .6*.4/100 + .4*.6/100 = 0.0048, w = sqrt(2V(V + τ²)/τ² (log 40 + ½ log((V + τ²)/V)))
    #   = sqrt(0.028032 * (3.688879 + 0.209629)) = 0.330580 > 0.2: TV_low = 0, no evidence
    few = shift({"cat": 60, "dog": 40}, {"cat": 40, "dog": 60})
    assert (few.gate, few.verdict) == (Gate.PREDICTION_SHIFT, Verdict.PASS)
    assert few.measured == pytest.approx(0.2) and few.threshold == 0.1 and few.samples == 100
    assert "at least 0.000 with 95% confidence over every look ≤ 0.1" in few.reason
    assert few.p_value is None and few.log_e is None  # a bound, not an e-value: nothing to carry
    # the same shares on 1,000 rows each: V = 0.00048, V + τ² = 0.00298, 2V(V + τ²)/τ² = 0.00114432,
    # log 40 + ½ log(0.00298/0.00048) = 3.688879 + 0.912946, w = sqrt(0.005265962) = 0.072567;
    # TV_low = 0.2 - 0.072567 = 0.127433 > 0.1
    moved = shift({"cat": 600, "dog": 400}, {"cat": 400, "dog": 600})
    assert moved.verdict is Verdict.FAIL and moved.measured == pytest.approx(0.2)
    assert moved.samples == 1000 and "shifted" in moved.reason
    assert "total variation 0.200, at least 0.127 with 95% confidence over every look > 0.1" in (
        moved.reason
    )
    assert total_variation_lower_bound([600, 400], [400, 600], alpha=0.05, tau=0.05) == (
        pytest.approx(0.127433, abs=1e-6)
    )
    # the same evidence under a looser bound: shifted, but not by more than 0.15
    assert shift({"cat": 600, "dog": 400}, {"cat": 400, "dog": 600}, max_distance=0.15).verdict is (
        Verdict.PASS
    )
    # many rows: 51/49 against 49/51 is a real shift, but of 0.02, inside the bound
    tiny = shift({"cat": 5100, "dog": 4900}, {"cat": 4900, "dog": 5100})
    assert tiny.verdict is Verdict.PASS and tiny.measured == pytest.approx(0.02)
    # the alpha in the reason is the stage's, e.g. 0.05/4
    assert "98.75% confidence" in shift({"cat": 60}, {"cat": 60}, alpha=0.0125).reason


def test_prediction_shift_classes_missing_from_one_arm() -> None:
    # classes seen by one arm only count as zero in the other; one seen by neither is dropped (K = 3).
    # bird: d̂ = 0.5, V = .5*.5/1000 + q(1 - q)/1000 with q = 0.5/1001 for stable's empty class;
    # dog the same, negated; cat d̂ = 0. TV_low = 0.5 - w at alpha/3.
    moved = shift({"cat": 500, "bird": 500, "fish": 0}, {"cat": 500, "dog": 500})
    q = 0.5 / 1001
    w = confidence_radius(0.25 / 1000 + q * (1 - q) / 1000, 0.05, 0.05 / 3)
    assert moved.verdict is Verdict.FAIL and moved.measured == pytest.approx(0.5)
    assert f"at least {0.5 - w:.3f}" in moved.reason and "(3 classes" in moved.reason
    # a class only one arm has, on a handful of rows, is not evidence
    rare = shift({"cat": 95, "bird": 5}, {"cat": 100})
    assert rare.verdict is Verdict.PASS and rare.measured == pytest.approx(0.05)


def test_the_lower_bound_uses_both_sides_of_the_shift() -> None:
    """Σ_k d_k = 0, so TV is the sum of the positive differences and of the negative ones alike.

    A canary that moves 15% of the answers into one class spreads the loss over the four others: the
    side where it is concentrated bounds TV from below much more tightly than ½ Σ_k (|d̂_k| - w_k)⁺.
    """
    stable = [800, 500, 300, 240, 160]  # 2,000 rows
    canary = [680, 425, 255, 204, 436]  # 15% of each class's answers moved to the last one
    low = total_variation_lower_bound(canary, stable, alpha=0.05, tau=0.05)
    n = 2000
    radii = [
        confidence_radius(
            (c / n) * (1 - c / n) / n + (s / n) * (1 - s / n) / n, 0.05, 0.05 / len(stable)
        )
        for c, s in zip(canary, stable, strict=True)
    ]
    differences = [(c - s) / n for c, s in zip(canary, stable, strict=True)]
    above = sum(max(0.0, d - w) for d, w in zip(differences, radii, strict=True))
    below = sum(max(0.0, -d - w) for d, w in zip(differences, radii, strict=True))
    assert low == pytest.approx(max(above, below)) and low == pytest.approx(above)
    assert low > 0.5 * (above + below) + 0.03
    assert low <= total_variation(canary, stable) == pytest.approx(0.138)


@given(
    table=st.integers(min_value=1, max_value=8).flatmap(
        lambda k: st.tuples(
            st.lists(st.integers(min_value=0, max_value=3000), min_size=k, max_size=k),
            st.lists(st.integers(min_value=0, max_value=3000), min_size=k, max_size=k),
        )
    ),
    alpha=st.floats(min_value=1e-4, max_value=0.5),
)
@settings(max_examples=200, database=None, deadline=None)
def test_the_lower_bound_is_below_the_estimate(
    table: tuple[list[int], list[int]], alpha: float
) -> None:
    canary, stable = table
    if sum(canary) == 0 or sum(stable) == 0:
        return
    low = total_variation_lower_bound(canary, stable, alpha=alpha, tau=0.05)
    assert 0 <= low <= total_variation(canary, stable) + 1e-12


def test_prediction_shift_inconclusive_and_bad_counts() -> None:
    few = shift({"cat": 9}, {"cat": 50, "dog": 50})
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None
    assert "canary has 9 predictions (need 10)" in few.reason
    empty = shift({}, {}, min_samples=0)
    assert empty.verdict is Verdict.INCONCLUSIVE and empty.samples == 0
    with pytest.raises(ValueError, match="stable_counts"):
        shift({"cat": 5}, {"cat": -1})
    with pytest.raises(ValueError, match="max_distance"):
        shift({"cat": 5}, {"cat": 5}, max_distance=2)
    with pytest.raises(ValueError, match="alpha"):
        shift({"cat": 5}, {"cat": 5}, alpha=0)
    with pytest.raises(ValueError, match="mixture_sd"):
        shift({"cat": 5}, {"cat": 5}, mixture_sd=0)


# --- prediction shift under repeated looks: a seeded simulation of paired shadow comparisons -----------

STABLE_CLASSES = np.array([0.40, 0.25, 0.15, 0.12, 0.08])
"""The stable model's predicted-class distribution."""
REDRAWN = np.array([0.10, 0.10, 0.20, 0.30, 0.30])
"""Where the canary's answer goes when it does not keep stable's: TV 0.45 from STABLE_CLASSES."""
SHIFT_ALPHA = 0.05
SHIFT_RUNS = 300
SHIFT_STEP = 50  # a look every 50 paired rows
SHIFT_ROWS = 3000
SHIFT_MIN = 200
SHIFT_MONTE_CARLO = 3 * math.sqrt(SHIFT_ALPHA * (1 - SHIFT_ALPHA) / SHIFT_RUNS)


def paired_shadow(rng: np.random.Generator, tv: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative class counts (runs x looks x classes) of canary and stable on the same inputs.

    Stable's class is drawn from STABLE_CLASSES; the canary keeps it with probability ``1 - r`` and
    otherwise draws afresh from REDRAWN, so its marginal is ``(1 - r) STABLE_CLASSES + r REDRAWN``, at
    total variation ``r · 0.45`` from stable's. At ``tv = 0`` the canary disagrees on 20% of the rows
    but redraws from stable's own distribution: noisy, not shifted.
    """
    k = len(STABLE_CLASSES)
    redrawn, r = (STABLE_CLASSES, 0.2) if tv == 0 else (REDRAWN, tv / 0.45)
    stable = rng.choice(k, size=(SHIFT_RUNS, SHIFT_ROWS), p=STABLE_CLASSES)
    fresh = rng.choice(k, size=(SHIFT_RUNS, SHIFT_ROWS), p=redrawn)
    canary = np.where(rng.random((SHIFT_RUNS, SHIFT_ROWS)) < r, fresh, stable)
    looks = np.arange(SHIFT_STEP - 1, SHIFT_ROWS, SHIFT_STEP)

    def counts(classes: np.ndarray) -> np.ndarray:
        return (classes[..., None] == np.arange(k)).cumsum(axis=1, dtype=np.int32)[:, looks]

    return counts(canary), counts(stable)


def rows_at_looks() -> np.ndarray:
    return SHIFT_STEP * np.arange(1, SHIFT_ROWS // SHIFT_STEP + 1)


def shift_gate_failed(canary: np.ndarray, stable: np.ndarray, max_distance: float) -> float:
    """Share of runs the gate fails at some look, each run stopping at its first failure.

    ``TV_low ≤ TV̂``, so only looks whose point estimate is above the bound are put to the gate.
    """
    n = rows_at_looks()
    estimate = 0.5 * np.abs(canary - stable).sum(axis=2) / n
    hits = 0
    for run in range(SHIFT_RUNS):
        for look in np.flatnonzero((estimate[run] > max_distance) & (n >= SHIFT_MIN)):
            gate = prediction_shift_gate(
                canary_counts={str(k): int(c) for k, c in enumerate(canary[run, look])},
                stable_counts={str(k): int(c) for k, c in enumerate(stable[run, look])},
                max_distance=max_distance,
                alpha=SHIFT_ALPHA,
                min_samples=SHIFT_MIN,
                cohort="sim",
            )
            if gate.verdict is Verdict.FAIL:
                hits += 1
                break
    return hits / SHIFT_RUNS


def chi_square_and_distance_failed(
    canary: np.ndarray, stable: np.ndarray, max_distance: float
) -> float:
    """The former rule at every look: Pearson's χ² p < alpha and the distance above the bound."""
    n = rows_at_looks()[None, :, None]
    column = canary + stable
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(column > 0, 2 * (canary - column / 2) ** 2 / (column / 2), 0.0)
    statistic = terms.sum(axis=2)
    dof = (column > 0).sum(axis=2) - 1
    p = chi2.sf(statistic, np.maximum(dof, 1))
    distance = 0.5 * np.abs(canary - stable).sum(axis=2) / n[..., 0]
    failed = (p < SHIFT_ALPHA) & (distance > max_distance) & (n[..., 0] >= SHIFT_MIN)
    return float(failed.any(axis=1).mean())


@pytest.mark.parametrize("tv", [0.0, 0.08, 0.1])
def test_prediction_shift_holds_alpha_under_repeated_looks(tv: float) -> None:
    canary, stable = paired_shadow(np.random.default_rng(int(tv * 1000) + 3), tv)
    failed = shift_gate_failed(canary, stable, 0.1)
    assert failed <= SHIFT_ALPHA + SHIFT_MONTE_CARLO, f"true TV {tv}: failed {failed:.1%} of runs"
    if tv > 0:  # the former rule fails such a canary several times as often as alpha
        old = chi_square_and_distance_failed(canary, stable, 0.1)
        assert old > 2 * SHIFT_ALPHA, f"χ² and distance at every look failed {old:.1%}"


def test_prediction_shift_catches_a_large_shift() -> None:
    canary, stable = paired_shadow(np.random.default_rng(25), 0.25)
    assert shift_gate_failed(canary, stable, 0.1) > 0.9


# --- the MAE gate (regressors) ------------------------------------------------------------------


def errors_of(values: np.ndarray) -> ErrorSums:
    """The sums a device's reports add up for these absolute errors."""
    return ErrorSums(n=len(values), total=float(values.sum()), squares=float((values**2).sum()))


def mae(canary: ErrorSums, stable: ErrorSums, **kw: Any) -> GateResult:
    args: dict[str, Any] = dict(max_increase=1.0, alpha=0.05, min_samples=30, cohort="c")
    return mae_gate(canary=canary, stable=stable, **(args | kw))


@given(
    cn=st.integers(min_value=30, max_value=3000),
    sn=st.integers(min_value=30, max_value=3000),
    shift=st.floats(min_value=-2, max_value=4),
    delta=st.floats(min_value=0.1, max_value=2),
    seed=st.integers(min_value=0, max_value=2**16),
)
@settings(max_examples=60, database=None, deadline=None)
def test_mae_gate_matches_a_scipy_reference(
    cn: int, sn: int, shift: float, delta: float, seed: int
) -> None:
    """The one-sided mixture e-value against δ, from scipy's normal pdf and log-cdf."""
    rng = np.random.default_rng(seed)
    c, s = np.abs(rng.normal(shift, 3, cn)), np.abs(rng.normal(0, 3, sn))
    result = mae(errors_of(c), errors_of(s), max_increase=delta, min_samples=30)
    variance = c.var(ddof=1) / cn + s.var(ddof=1) / sn
    estimate = c.mean() - s.mean()
    tau = delta  # the default mixing sd
    log_ratio = float(
        norm.logpdf(estimate, delta, math.sqrt(variance + tau**2))
        - norm.logpdf(estimate, delta, math.sqrt(variance))
    )
    x = (estimate - delta) * tau / math.sqrt(variance * (variance + tau**2))
    log_e = log_ratio + math.log(2) + float(log_ndtr(x))
    assert result.log_e == pytest.approx(log_e, rel=1e-6, abs=1e-6)
    assert result.measured == pytest.approx(estimate, rel=1e-9, abs=1e-9)
    assert result.verdict is (Verdict.FAIL if log_e >= math.log(20) else Verdict.PASS)
    if result.verdict is Verdict.FAIL:
        assert estimate > delta, "only an estimate on H1's side is rejected"


def test_mae_gate_verdicts_and_reasons() -> None:
    rng = np.random.default_rng(7)
    stable = errors_of(np.abs(rng.normal(0, 5, 400)))
    worse = errors_of(np.abs(rng.normal(0, 5, 400)) + 3.0)  # 3 units worse on every row
    failed = mae(worse, stable, max_increase=1.0)
    assert failed.verdict is Verdict.FAIL and failed.gate is Gate.MAE
    assert "larger than stable's by more than δ" in failed.reason and failed.p_value < 0.05
    same = mae(errors_of(np.abs(rng.normal(0, 5, 400))), stable, max_increase=1.0)
    assert same.verdict is Verdict.PASS and "no evidence" in same.reason
    few = mae(errors_of(np.abs(rng.normal(0, 5, 10)) + 30), stable)
    assert (
        few.verdict is Verdict.INCONCLUSIVE and "canary has 10 labelled predictions" in few.reason
    )
    assert few.log_e is not None, "a short window still has evidence to carry"
    none = mae(ErrorSums(), stable)
    assert none.verdict is Verdict.INCONCLUSIVE and none.log_e is None and none.samples == 0
    # all errors equal: the floored variance keeps the test finite, and a large gap still fails
    flat = mae(errors_of(np.full(100, 9.0)), errors_of(np.full(100, 1.0)))
    assert flat.verdict is Verdict.FAIL and math.isfinite(flat.log_e or 0)
    carried = mae(errors_of(np.abs(rng.normal(0, 5, 60)) + 1.5), stable, prior_log_e=math.log(19))
    assert "carried from earlier stages" in carried.reason
    with pytest.raises(ValueError, match="max_increase"):
        mae(stable, stable, max_increase=-1)
    with pytest.raises(ValueError, match="mixture_sd"):
        mae(stable, stable, max_increase=0.0)


def test_mae_gate_holds_alpha_under_repeated_looks_and_catches_a_worse_canary() -> None:
    """300 seeded rollouts looked at every 50 labelled predictions per arm up to 2,000: a canary
    exactly δ worse (the null's boundary) fails at most alpha of them; one 3δ worse nearly all."""
    rng = np.random.default_rng(11)
    runs, step, rows, delta = 300, 50, 2000, 0.5

    def failed_share(extra: float) -> float:
        hits = 0
        for _ in range(runs):
            stable = np.abs(rng.normal(0, 4, rows))
            canary = np.abs(rng.normal(0, 4, rows)) + extra
            for n in range(step, rows + 1, step):
                gate = mae(errors_of(canary[:n]), errors_of(stable[:n]), max_increase=delta)
                if gate.verdict is Verdict.FAIL:
                    hits += 1
                    break
        return hits / runs

    at_boundary = failed_share(delta)
    assert at_boundary <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs), f"failed {at_boundary:.1%}"
    assert failed_share(3 * delta) > 0.9
