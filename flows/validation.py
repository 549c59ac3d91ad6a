"""Validation on hardware profiles: per profile, the smallest variant that meets its budgets.

A profile either pins a variant or says ``auto``; for ``auto`` the variants are tried from the
smallest (then the fastest) up, and the first that passes every budget is the profile's variant.
Where a profile's runner never answers, the profile is ``unavailable``, which is never a pass.
Where the suite runs is a :class:`Runner`'s business: a local subprocess, or a Prefect work pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from edgeloop.core.errors import HardwareCheckError
from edgeloop.core.settings import Settings
from fleet.shared.profile import HardwareProfile, HardwareStatus, ProfileError, load_profile
from flows.hardware import ProfileResult, run_profile
from flows.workspace import Workspace

UNAVAILABLE = str(HardwareStatus.UNAVAILABLE)
PASSED = str(HardwareStatus.PASSED)


class Runner(Protocol):
    """Runs the hardware-tests suite on one variant for one profile, wherever the profile lives."""

    def run(self, variant: str, profile: HardwareProfile) -> ProfileResult | None:
        """The suite's result, or None when no runner answered before the deadline."""
        ...


@dataclass
class LocalRunner:
    """The suite as a subprocess on this host (local and emulated profiles)."""

    settings: Settings
    ws: Workspace

    def run(self, variant: str, profile: HardwareProfile) -> ProfileResult | None:
        return run_profile(
            self.ws.variants_dir / f"{variant}.onnx",
            profile.name,
            self.ws.golden,
            self.ws.hardware_dir / variant,
            reference=self.ws.fp32,
            suite_dir=self.settings.hardware_tests_dir,
            profiles_dir=self.settings.profiles_dir,
        )


class Attempt(BaseModel):
    """One variant tried on one profile: the suite's status and its failures."""

    variant: str
    status: str
    failures: list[str]


class HardwareSummary(BaseModel):
    """A profile's verdict as the run summary, the model card and the MLflow run record it."""

    status: str
    variant: str | None
    p50_ms: float | None
    p95_ms: float | None
    accuracy: float | None
    peak_rss_mb: float | None
    reason: str
    attempts: list[Attempt]


@dataclass
class ProfileChoice:
    """What validation found for one profile: the variant it takes and every attempt."""

    profile: str
    variant: str | None = None
    result: ProfileResult | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.variant is not None:
            return PASSED
        if not self.attempts:
            return UNAVAILABLE
        return self.attempts[-1].status

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def reason(self) -> str:
        if self.passed:
            return f"{self.variant} meets every budget"
        if self.status == UNAVAILABLE:
            last = self.attempts[-1].failures if self.attempts else []
            return "; ".join(last) or "no runner answered before the deadline"
        return " | ".join(
            f"{a.variant}: {'; '.join(a.failures) or a.status}" for a in self.attempts
        )

    def summary(self) -> HardwareSummary:
        metrics = self.result.metrics if self.result else {}
        return HardwareSummary(
            status=self.status,
            variant=self.variant,
            p50_ms=metrics.get("p50_ms"),
            p95_ms=metrics.get("p95_ms"),
            accuracy=metrics.get("accuracy"),
            peak_rss_mb=metrics.get("peak_rss_mb"),
            reason=self.reason,
            attempts=list(self.attempts),
        )


def candidates(evaluation: dict[str, Any], profile: HardwareProfile) -> list[str]:
    """The variants to try on ``profile``, in order."""
    built = {r["name"]: r for r in evaluation["variants"]}
    if profile.variant != "auto":
        if profile.variant not in built:
            raise HardwareCheckError(
                f"hardware profile {profile.name!r} pins variant {profile.variant!r}, "
                "which this run did not build",
                hint=f"use one of {sorted(built)} or 'auto'",
            )
        return [profile.variant]
    return [r["name"] for r in sorted(built.values(), key=lambda r: (r["size_bytes"], r["p50_ms"]))]


def choose(profile: HardwareProfile, order: list[str], runner: Runner) -> ProfileChoice:
    """Try ``order`` until one variant passes; stop early when the profile is unavailable."""
    choice = ProfileChoice(profile=profile.name)
    for variant in order:
        result = runner.run(variant, profile)
        if result is None:
            choice.attempts.append(
                Attempt(
                    variant=variant,
                    status=UNAVAILABLE,
                    failures=["no runner answered before the deadline"],
                )
            )
            break
        choice.result = result
        choice.attempts.append(
            Attempt(variant=variant, status=result.status, failures=list(result.failures))
        )
        if result.passed:
            choice.variant = variant
            break
        if result.status == UNAVAILABLE:
            break
    return choice


def load_profiles(settings: Settings, names: list[str]) -> list[HardwareProfile]:
    try:
        return [load_profile(name, settings.profiles_dir) for name in names]
    except ProfileError as exc:
        raise HardwareCheckError(str(exc), hint="fix gates.profiles or the profile file") from exc


def validate(
    profiles: list[HardwareProfile],
    evaluation: dict[str, Any],
    runners: dict[str, Runner],
) -> dict[str, ProfileChoice]:
    """Each profile's choice; ``runners`` maps a profile's ``runner`` kind to the Runner to use."""
    return {p.name: choose(p, candidates(evaluation, p), runners[p.runner]) for p in profiles}


def report_paths(choice: ProfileChoice) -> list[Path]:
    if choice.result is None:
        return []
    return [choice.result.junit_path, choice.result.report_path]
