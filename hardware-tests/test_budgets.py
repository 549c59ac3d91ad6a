"""Budgets: each limit of the profile is its own test, so a report names exactly which one broke.

A budget left out of the profile (``None``) is skipped with a reason rather than passed, so a report
never claims a check that was not made. Every failure states the measured value, the budget and the
profile, because that line is what reaches the person deciding whether to ship the variant.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from fleet.shared.modelspec import ModelSpec
from fleet.shared.profile import HardwareProfile


def _budget(profile: HardwareProfile, key: str) -> float:
    value: float | None = getattr(profile.budgets, key)
    if value is None:
        pytest.skip(f"profile {profile.name} sets no {key} budget")
    return value


def _num(value: float) -> str:
    """Two decimals, unless that would print a small value as 0.00."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.1 else f"{value:.3g}"


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def test_accuracy(metrics: dict[str, float], profile: HardwareProfile, spec: ModelSpec) -> None:
    budget = _budget(profile, "min_accuracy")
    if spec.task != "classification":
        pytest.skip(f"an accuracy budget is for classifiers; this model does {spec.task}")
    if "accuracy" not in metrics:
        _fail(f"accuracy could not be measured (bad output shape) on profile {profile.name}")
    accuracy = metrics["accuracy"]
    if accuracy < budget:
        _fail(f"accuracy {accuracy:.4f} below budget {budget:.4f} on profile {profile.name}")


def test_p95_latency(metrics: dict[str, float], profile: HardwareProfile) -> None:
    budget = _budget(profile, "p95_latency_ms")
    p95 = metrics["p95_ms"]
    if p95 > budget:
        _fail(
            f"p95 latency {_num(p95)} ms exceeds budget {_num(budget)} ms on profile {profile.name}"
        )


def test_model_size(metrics: dict[str, float], profile: HardwareProfile) -> None:
    budget = _budget(profile, "model_size_mb")
    size = metrics["model_size_mb"]
    if size > budget:
        _fail(
            f"model size {_num(size)} MB exceeds budget {_num(budget)} MB on profile {profile.name}"
        )


def test_peak_memory(metrics: dict[str, float], profile: HardwareProfile) -> None:
    budget = _budget(profile, "peak_memory_mb")
    peak = metrics["peak_rss_mb"]
    if peak > budget:
        _fail(
            f"peak memory {_num(peak)} MB exceeds budget {_num(budget)} MB "
            f"on profile {profile.name}"
        )


def test_disagreement(disagreement: float | None, profile: HardwareProfile) -> None:
    budget = _budget(profile, "max_disagreement")
    if disagreement is None:
        pytest.skip("no --reference model given, so disagreement was not measured")
    if disagreement > budget:
        _fail(
            f"disagreement with the reference {disagreement:.4f} exceeds budget {budget:.4f} "
            f"on profile {profile.name}"
        )
