"""fleet.shared.shadow and the wire form of shadow comparisons: what "agree" means, the CPU budget,
and the counts the controller refuses."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.agent.telemetry import TelemetryWindow
from fleet.shared.modelspec import Task
from fleet.shared.protocol import ShadowReport, TelemetryReport
from fleet.shared.shadow import ShadowBudget, ShadowTally, disagreements, sample_rows


def test_classifiers_agree_on_the_top_class_whatever_the_scores() -> None:
    canary = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    stable = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    differ = disagreements(canary, stable, task=Task.CLASSIFICATION, tolerance=0.0)
    assert differ.tolist() == [False, True, False]


def test_regressors_agree_within_the_tolerance_on_every_value() -> None:
    canary = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    stable = np.array([[1.05, 2.0], [1.0, 2.5], [0.8, 2.0]])
    differ = disagreements(canary, stable, task=Task.REGRESSION, tolerance=0.1)
    assert differ.tolist() == [False, True, True]


def test_outputs_of_different_shapes_are_an_error_not_a_verdict() -> None:
    with pytest.raises(ValueError, match="do not answer the same question"):
        disagreements(np.zeros((2, 3)), np.zeros((2, 4)), task=Task.CLASSIFICATION, tolerance=0)


def test_a_tally_counts_rows_classes_failures_and_skips() -> None:
    tally = ShadowTally("3")
    canary = np.eye(3)[[0, 1, 2, 2]]
    stable = np.eye(3)[[0, 1, 1, 2]]
    tally.add(canary, stable, task=Task.CLASSIFICATION, tolerance=0.0, busy_ms=1.5)
    tally.fail(2, busy_ms=0.5)
    tally.skip(5)
    wire = ShadowReport.model_validate(tally.to_dict())
    assert (wire.compared, wire.disagreed, wire.failed, wire.skipped) == (4, 1, 2, 5)
    assert wire.busy_ms == 2.0
    assert wire.canary_classes == {"0": 1, "1": 1, "2": 2}
    assert wire.stable_classes == {"0": 1, "1": 2, "2": 1}
    assert wire.problems(served_rows=11) == []
    assert "more than the 10 the report served" in wire.problems(served_rows=10)[0]


def test_sampling_draws_about_the_rate() -> None:
    rows = sample_rows(np.random.default_rng(0), 10_000, 0.1)
    assert 900 < len(rows) < 1100
    assert len(set(rows.tolist())) == len(rows)


def test_the_budget_lets_the_first_shadow_run_then_holds_to_its_share() -> None:
    budget = ShadowBudget(0.25)
    assert budget.allows()
    budget.spent(1.0)
    assert not budget.allows()  # 1 ms of shadow, nothing served yet
    budget.served(3.9)
    assert not budget.allows()
    budget.served(0.1)
    assert budget.allows()  # 1 ms is a quarter of 4 ms
    with pytest.raises(ValueError, match="cpu_budget"):
        ShadowBudget(0.0)


def test_a_window_reports_its_shadow_counts_once() -> None:
    window = TelemetryWindow()
    window.record_inference(1.0, rows=4)
    with window.shadow("3") as tally:
        tally.add(np.eye(2), np.eye(2)[::-1], task=Task.CLASSIFICATION, tolerance=0, busy_ms=0.2)
    report = window.flush("4")
    assert report["shadow"]["against"] == "3" and report["shadow"]["disagreed"] == 2
    assert "shadow" not in window.flush("4")


def report(**shadow: object) -> TelemetryReport:
    counts = {"against": "3", "compared": 10, "disagreed": 1} | shadow
    return TelemetryReport.model_validate(
        {
            "seq": 1,
            "buffer_id": "b",
            "version": "4",
            "window_start": 0,
            "window_end": 1,
            "inferences": 5,
            "rows": 20,
            "errors": 0,
            "latency_ms": {"bounds_ms": [1.0], "counts": [5, 0]},
            "shadow": counts,
        }
    )


def test_counts_beyond_what_the_device_served_are_problems() -> None:
    fine = report()
    assert fine.shadow is not None and fine.shadow.problems(fine.served_rows) == []
    lying = report(compared=15, skipped=10)
    assert lying.shadow is not None
    assert lying.shadow.problems(lying.served_rows) == [
        "shadow: 25 rows compared, failed or skipped, more than the 20 the report served"
    ]
    odd = report(disagreed=11, canary_classes={"0": 11})
    assert odd.shadow is not None
    assert len(odd.shadow.problems(odd.served_rows)) == 2
