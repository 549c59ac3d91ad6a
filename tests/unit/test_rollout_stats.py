"""fleet.controller.rollout.stats and phase: the gates' arithmetic and the worst-wins order of verdicts."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fleet.controller.rollout.phase import VERDICT_ORDER, RolloutPhase, Verdict, worst
from fleet.controller.rollout.stats import (
    Gate,
    GateResult,
    LatencyHistogram,
    accuracy_gate,
    accuracy_test,
    agreement_gate,
    error_rate_gate,
    latency_gate,
    merge_histograms,
    prediction_shift_gate,
    quantile_ms,
)
from fleet.shared.protocol import LATENCY_BOUNDS_MS


def acc(cc: int, cn: int, sc: int, sn: int, *, delta: float = 0.02, minimum: int = 100):
    return accuracy_test(
        canary_correct=cc,
        canary_total=cn,
        stable_correct=sc,
        stable_total=sn,
        delta=delta,
        alpha=0.05,
        min_samples=minimum,
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
    #       = -0.596787 + 0.288358 = -0.308429: Λ < 1, p = 1
    result = acc(170, 200, 180, 200)
    assert result.z == pytest.approx(-0.9097177, abs=1e-6)
    assert result.log_ratio == pytest.approx(-0.308429, abs=1e-6)
    assert result.p_value == 1.0
    assert result.verdict is Verdict.PASS
    assert (result.canary_accuracy, result.stable_accuracy) == (0.85, 0.9)
    assert "no evidence" in result.reason and "mSPRT" in result.reason


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
    worse = p_c - p_s < -delta
    p_value = min(1.0, math.exp(-log_ratio)) if worse else 1.0
    assert result.p_value == pytest.approx(p_value, rel=1e-6, abs=1e-300)
    assert result.verdict is (Verdict.FAIL if worse and log_ratio >= math.log(20) else Verdict.PASS)


def test_a_clearly_worse_canary_fails() -> None:
    # 80% of 500 against 90% of 1000, δ = 0.02: V = .8*.2/500 + .9*.1/1000 = 0.00041
    # log Λ = ½ ln(0.00041/0.00291) + 0.0025 * 0.08²/(2 * 0.00041 * 0.00291)
    #       = -0.979876 + 6.705222 = 5.725346; p = e^-5.725346 = 0.0032622
    result = acc(400, 500, 900, 1000)
    assert result.log_ratio == pytest.approx(5.725346, abs=1e-6)
    assert result.p_value == pytest.approx(0.0032622, rel=1e-4)
    assert result.verdict is Verdict.FAIL
    assert "canary worse than stable by more than δ" in result.reason
    assert "mSPRT Λ=307" in result.reason and "p=0.00326 ≤ alpha=0.05" in result.reason
    gate = accuracy_gate(result, "edge-small")
    assert (gate.gate, gate.cohort, gate.verdict) == (Gate.ACCURACY, "edge-small", Verdict.FAIL)
    assert gate.measured == pytest.approx(-0.1) and gate.threshold == -0.02
    assert gate.p_value == result.p_value


def test_the_same_drop_on_fewer_labels_is_not_yet_evidence() -> None:
    # 75% vs 90% of 200 each: Λ = 30 ≥ 20 fails; 80% vs 90%: Λ = 3.2, a pass
    failing = acc(150, 200, 180, 200)
    assert failing.verdict is Verdict.FAIL and failing.p_value == pytest.approx(0.0333291, rel=1e-5)
    passing = acc(160, 200, 180, 200)
    assert passing.verdict is Verdict.PASS and passing.p_value == pytest.approx(0.3143147, rel=1e-5)
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
    from fleet.agent.telemetry import LatencyHistogram as AgentHistogram

    assert AgentHistogram().bounds_ms == LatencyHistogram.model_fields["bounds_ms"].default
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
    # log Λ = ½ ln(4.95e-5/1.495e-4) + 1e-4 * 0.03²/(2 * 4.95e-5 * 1.495e-4) = -0.552662 + 6.080876
    bad = rate(8, 200)
    assert bad.verdict is Verdict.FAIL and bad.measured == 0.04
    assert bad.p_value == pytest.approx(math.exp(-(-0.552662 + 6.080876)), rel=1e-5)
    assert bad.reason == (
        "error rate 4.00% (8/200) > 1.00% on h: mSPRT Λ=252 (τ=0.01), p=0.00397 ≤ alpha=0.05"
    )
    few = rate(50, 99)
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None and few.p_value is None
    assert few.reason == "99 inferences on h (need 100)"
    with pytest.raises(ValueError):
        rate(5, 4, min_samples=1)
    with pytest.raises(ValueError, match="max_rate"):
        rate(0, 4, max_rate=1.5)


def test_an_error_rate_over_the_limit_needs_evidence() -> None:
    # 3/200 = 1.5% is over 1% but Λ = 0.68; the plain compare used to roll back on it
    over = rate(3, 200)
    assert over.verdict is Verdict.PASS and over.measured == 0.015
    assert "not significantly" in over.reason and over.p_value == 1.0
    # the same 2% fails on 1,000 inferences (Λ = 29.7) but not on 200 (Λ = 1.13)
    assert rate(4, 200).verdict is Verdict.PASS
    assert rate(20, 1000).verdict is Verdict.FAIL
    assert rate(20, 1000, alpha=0.01).verdict is Verdict.PASS


def test_no_error_allowed() -> None:
    assert rate(0, 500, max_rate=0.0).verdict is Verdict.PASS
    one = rate(1, 500, max_rate=0.0)
    assert (one.verdict, one.p_value) == (Verdict.FAIL, 0.0)
    assert "none is allowed" in one.reason
    assert rate(1, 50, max_rate=0.0).verdict is Verdict.INCONCLUSIVE


# --- agreement (paired shadow comparisons) -----------------------------------------------------------------


def agree(disagreed: int, compared: int, **changes: object) -> GateResult:
    args: dict[str, Any] = (
        dict(max_disagreement=0.10, alpha=0.05, min_samples=100, cohort="edge-small") | changes
    )
    return agreement_gate(compared=compared, disagreed=disagreed, **args)


def test_agreement_gate_verdicts() -> None:
    # 60/400 = 15% against 10%: V = .1*.9/400 = 2.25e-4, τ = 0.05
    # log Λ = ½ ln(2.25e-4/2.725e-3) + 0.0025 * 0.05²/(2 * 2.25e-4 * 2.725e-3)
    #       = -1.247062 + 5.096840 = 3.849778, Λ = 46.99 ≥ 1/0.05
    bad = agree(60, 400)
    assert (bad.gate, bad.cohort, bad.verdict) == (Gate.AGREEMENT, "edge-small", Verdict.FAIL)
    assert (bad.measured, bad.threshold, bad.samples) == (0.15, 0.10, 400)
    assert bad.p_value == pytest.approx(math.exp(-3.849778), rel=1e-5)
    assert "disagreement rate 15.00% (60/400) > 10.00%" in bad.reason
    # 52/400 = 13%: log Λ = -1.247062 + 0.0025 * 0.03²/1.22625e-6 = 0.587801, p = 0.556
    weak = agree(52, 400)
    assert weak.verdict is Verdict.PASS and weak.p_value == pytest.approx(math.exp(-0.587801))
    ok = agree(40, 400)
    assert (ok.verdict, ok.measured, ok.p_value) == (Verdict.PASS, 0.10, 1.0)
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


# --- prediction shift --------------------------------------------------------------------------------------


def shift(canary: dict[str, int], stable: dict[str, int], **changes: object) -> GateResult:
    args: dict[str, Any] = dict(max_distance=0.1, alpha=0.05, min_samples=10, cohort="host-cpu") | (
        changes
    )
    return prediction_shift_gate(canary_counts=canary, stable_counts=stable, **args)


def test_prediction_shift_needs_evidence_and_size() -> None:
    # 60/40 against 40/60: χ² = 8 on 1 dof, p = erfc(2) = 0.00468; total variation 0.2
    moved = shift({"cat": 60, "dog": 40}, {"cat": 40, "dog": 60})
    assert (moved.gate, moved.verdict) == (Gate.PREDICTION_SHIFT, Verdict.FAIL)
    assert moved.measured == pytest.approx(0.2) and moved.threshold == 0.1
    assert moved.p_value == pytest.approx(math.erfc(2.0)) and moved.samples == 100
    assert "shifted" in moved.reason and "dof 1" in moved.reason
    # the same shift under a looser distance: significant, but too small to matter
    assert shift({"cat": 60, "dog": 40}, {"cat": 40, "dog": 60}, max_distance=0.25).verdict is (
        Verdict.PASS
    )
    # many samples: 51/49 against 49/51 is just as significant (χ² = 8), but moved 0.02
    tiny = shift({"cat": 5100, "dog": 4900}, {"cat": 4900, "dog": 5100})
    assert tiny.verdict is Verdict.PASS and tiny.p_value == pytest.approx(math.erfc(2.0))
    assert tiny.measured == pytest.approx(0.02)
    # few samples: 6/4 against 4/6 moved 0.2, but χ² = 0.8 (p = 0.37) is no evidence
    noisy = shift({"cat": 6, "dog": 4}, {"cat": 4, "dog": 6})
    assert noisy.verdict is Verdict.PASS and noisy.measured == pytest.approx(0.2)


def test_prediction_shift_classes_missing_from_one_arm() -> None:
    # classes seen by one arm only count as zero in the other; one seen by neither is dropped
    moved = shift({"cat": 50, "bird": 50, "fish": 0}, {"cat": 50, "dog": 50})
    assert moved.verdict is Verdict.FAIL and moved.measured == pytest.approx(0.5)
    assert "dof 2" in moved.reason


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
