"""Per-profile variant choice: smallest first, stop at the first pass, silence is never a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.core.errors import HardwareCheckError
from fleet.shared.profile import HardwareProfile
from flows.hardware import ProfileResult
from flows.validation import ProfileChoice, candidates, choose, validate

EVALUATION = {
    "variants": [
        {"name": "fp32", "size_bytes": 1000, "p50_ms": 0.04, "accuracy": 0.98},
        {"name": "int8-static", "size_bytes": 260, "p50_ms": 0.02, "accuracy": 0.98},
        {"name": "int8-dynamic", "size_bytes": 260, "p50_ms": 0.03, "accuracy": 0.98},
        {"name": "pruned-int8", "size_bytes": 80, "p50_ms": 0.01, "accuracy": 0.96},
    ]
}


def profile(
    name: str = "edge-small", variant: str = "auto", runner: str = "local"
) -> HardwareProfile:
    return HardwareProfile.model_validate({"name": name, "variant": variant, "runner": runner})


def result(status: str, *failures: str) -> ProfileResult:
    return ProfileResult(
        profile="edge-small",
        status=status,
        metrics={"p95_ms": 0.05, "accuracy": 0.97},
        failures=list(failures),
        junit_path=Path("junit.xml"),
        report_path=Path("report.json"),
    )


class ScriptedRunner:
    """Answers with a scripted result per variant and records every call in order."""

    def __init__(self, answers: dict[str, ProfileResult | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    def run(self, variant: str, profile: HardwareProfile) -> ProfileResult | None:
        self.calls.append((profile.name, variant))
        return self.answers[variant]


def test_auto_tries_smallest_then_fastest() -> None:
    assert candidates(EVALUATION, profile()) == [
        "pruned-int8",
        "int8-static",
        "int8-dynamic",
        "fp32",
    ]


def test_pinned_variant_is_the_only_candidate() -> None:
    assert candidates(EVALUATION, profile(variant="int8-static")) == ["int8-static"]


def test_pinned_variant_that_was_not_built_names_the_profile() -> None:
    with pytest.raises(HardwareCheckError, match="'edge-small' pins variant 'int4'"):
        candidates(EVALUATION, profile(variant="int4"))


def test_first_passing_variant_is_chosen_and_later_ones_are_not_run() -> None:
    runner = ScriptedRunner(
        {
            "pruned-int8": result(
                "failed", "accuracy 0.8600 below budget 0.9000 on profile edge-small"
            ),
            "int8-static": result("passed"),
            "int8-dynamic": result("passed"),
            "fp32": result("passed"),
        }
    )
    choice = choose(profile(), candidates(EVALUATION, profile()), runner)
    assert choice.variant == "int8-static" and choice.status == "passed"
    assert runner.calls == [("edge-small", "pruned-int8"), ("edge-small", "int8-static")]
    assert [a.status for a in choice.attempts] == ["failed", "passed"]


def test_no_variant_passes_and_the_reason_names_every_attempt() -> None:
    runner = ScriptedRunner(
        {
            v: result("failed", f"{v} too slow")
            for v in ("pruned-int8", "int8-static", "int8-dynamic", "fp32")
        }
    )
    choice = choose(profile(), candidates(EVALUATION, profile()), runner)
    assert not choice.passed and choice.status == "failed" and choice.variant is None
    assert choice.reason.startswith("pruned-int8: pruned-int8 too slow | int8-static:")
    assert len(runner.calls) == 4


def test_a_silent_runner_makes_the_profile_unavailable_and_stops() -> None:
    runner = ScriptedRunner({"pruned-int8": None, "int8-static": result("passed")})
    choice = choose(profile(runner="pool"), candidates(EVALUATION, profile()), runner)
    assert choice.status == "unavailable" and not choice.passed
    assert "deadline" in choice.reason
    assert runner.calls == [("edge-small", "pruned-int8")]


def test_an_unavailable_suite_result_stops_the_search() -> None:
    runner = ScriptedRunner(
        {"pruned-int8": result("unavailable", "CUDAExecutionProvider is not installed")}
    )
    choice = choose(profile(), candidates(EVALUATION, profile()), runner)
    assert choice.status == "unavailable" and len(runner.calls) == 1


def test_validate_routes_each_profile_to_its_runner_kind() -> None:
    local = ScriptedRunner({"pruned-int8": result("passed")})
    pool = ScriptedRunner({"pruned-int8": None})
    choices = validate(
        [profile("host-cpu"), profile("rpi4", runner="pool")],
        EVALUATION,
        {"local": local, "pool": pool},
    )
    assert choices["host-cpu"].passed and choices["rpi4"].status == "unavailable"
    assert local.calls == [("host-cpu", "pruned-int8")] and pool.calls == [("rpi4", "pruned-int8")]


def test_empty_choice_is_unavailable() -> None:
    assert ProfileChoice(profile="x").status == "unavailable"
