"""fleet.controller.rollout.stats and phase: the gates' arithmetic and the worst-wins order of verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from fleet.controller.rollout.phase import VERDICT_ORDER, RolloutPhase, Verdict, worst
from fleet.controller.rollout.stats import (
    Gate,
    LatencyHistogram,
    accuracy_gate,
    accuracy_test,
    error_rate_gate,
    latency_gate,
    merge_histograms,
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


def test_p_value_matches_a_hand_computed_reference() -> None:
    # canary 85% of 200, stable 90% of 200, δ = 0.02:
    # SE = sqrt(.85*.15/200 + .9*.1/200) = 0.0329773; z = (-.05 + .02)/SE = -0.909718; p = Φ(z)
    result = acc(170, 200, 180, 200)
    assert result.z == pytest.approx(-0.9097177, abs=1e-6)
    assert result.p_value == pytest.approx(0.1814857, abs=1e-6)
    assert result.p_value == pytest.approx(norm.cdf(result.z), rel=1e-12)
    assert result.verdict is Verdict.PASS
    assert (result.canary_accuracy, result.stable_accuracy) == (0.85, 0.9)
    assert "no evidence" in result.reason


@given(
    cn=st.integers(min_value=30, max_value=2000),
    sn=st.integers(min_value=30, max_value=2000),
    pc=st.floats(min_value=0.01, max_value=0.99),
    ps=st.floats(min_value=0.01, max_value=0.99),
    delta=st.floats(min_value=0, max_value=0.1),
)
@settings(max_examples=100, database=None, deadline=None)
def test_p_value_matches_scipy_for_the_wald_statistic(
    cn: int, sn: int, pc: float, ps: float, delta: float
) -> None:
    cc, sc = max(1, min(cn - 1, round(pc * cn))), max(1, min(sn - 1, round(ps * sn)))
    p_c, p_s = cc / cn, sc / sn
    z = (p_c - p_s + delta) / math.sqrt(p_c * (1 - p_c) / cn + p_s * (1 - p_s) / sn)
    result = acc(cc, cn, sc, sn, delta=delta, minimum=1)
    assert result.z == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(norm.cdf(z), rel=1e-6, abs=1e-300)
    assert result.verdict is (Verdict.FAIL if norm.cdf(z) < 0.05 else Verdict.PASS)


def test_a_clearly_worse_canary_fails() -> None:
    result = acc(400, 500, 900, 1000)
    assert result.p_value == pytest.approx(3.8925936e-05, rel=1e-6)
    assert result.verdict is Verdict.FAIL
    assert "canary worse than stable by more than δ" in result.reason
    gate = accuracy_gate(result, "edge-small")
    assert (gate.gate, gate.cohort, gate.verdict) == (Gate.ACCURACY, "edge-small", Verdict.FAIL)
    assert gate.measured == pytest.approx(-0.1) and gate.threshold == -0.02
    assert gate.p_value == result.p_value


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
    assert result.z is None and result.p_value is None
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


# --- error rate ---------------------------------------------------------------------------------------------


def test_error_rate_gate() -> None:
    ok = error_rate_gate(errors=1, inferences=200, max_rate=0.01, min_samples=100, cohort="h")
    assert (ok.verdict, ok.measured, ok.threshold) == (Verdict.PASS, 0.005, 0.01)
    bad = error_rate_gate(errors=3, inferences=200, max_rate=0.01, min_samples=100, cohort="h")
    assert bad.verdict is Verdict.FAIL
    assert bad.reason == "error rate 1.50% (3/200) > 1.00% on h"
    few = error_rate_gate(errors=50, inferences=99, max_rate=0.01, min_samples=100, cohort="h")
    assert few.verdict is Verdict.INCONCLUSIVE and few.measured is None
    with pytest.raises(ValueError):
        error_rate_gate(errors=5, inferences=4, max_rate=0.01, min_samples=1, cohort="h")
