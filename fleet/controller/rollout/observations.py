"""What the controller saw of the fleet, aggregated for one decision: the input of ``next_state``.

The decision never reads the database; the controller aggregates telemetry into these objects and hands
them over. The boundary is drawn where the facts are, not where they are stored:

* ``running_version`` is the version named by the device's **latest telemetry report**: what it actually
  runs. A finished download, a desired state that was answered, an agent's promise: none of these is
  here, so none can make a device count as upgraded (hawkBit#3185).
* Telemetry is split by the version that produced it and summed over one **window**, the current stage's
  (``RolloutStatus.window_start``); ``window_start`` says which window the controller used and the
  decision refuses observations from another one.
* Every enrolled device of the policy's hardware classes is listed, online or not: a device that stays
  silent must be visible to be named.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from fleet.controller.rollout.stats import ErrorSums
from fleet.shared.latency import LatencyHistogram


class ShadowSums(BaseModel):
    """Paired shadow comparisons of one version against the stable version ``against``, summed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    against: str
    compared: int = Field(0, ge=0, description="rows scored by both and compared")
    disagreed: int = Field(0, ge=0, description="compared rows whose answers differ")
    failed: int = Field(0, ge=0, description="sampled rows on which the shadow model raised")
    skipped: int = Field(0, ge=0, description="sampled rows the device's budget left unscored")
    canary_classes: dict[str, int] = Field(default_factory=dict)
    stable_classes: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _disagreed_within_compared(self) -> ShadowSums:
        if self.disagreed > self.compared:
            raise ValueError(f"disagreed: {self.disagreed} is more than compared ({self.compared})")
        return self

    def plus(self, other: ShadowSums) -> ShadowSums:
        """Both sums added (same ``against``)."""
        if other.against != self.against:
            raise ValueError(f"against: cannot add {other.against} to {self.against}")
        return ShadowSums(
            against=self.against,
            compared=self.compared + other.compared,
            disagreed=self.disagreed + other.disagreed,
            failed=self.failed + other.failed,
            skipped=self.skipped + other.skipped,
            canary_classes=dict(Counter(self.canary_classes) + Counter(other.canary_classes)),
            stable_classes=dict(Counter(self.stable_classes) + Counter(other.stable_classes)),
        )


class VersionTelemetry(BaseModel):
    """What one device reported while running one version, summed over the window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    inferences: int = Field(0, ge=0)
    errors: int = Field(0, ge=0, description="inferences that failed; part of ``inferences``")
    latency: LatencyHistogram | None = None
    feedback_correct: int = Field(0, ge=0, description="labelled predictions that were right")
    feedback_total: int = Field(0, ge=0, description="predictions whose label arrived")
    targets: ErrorSums = Field(
        default_factory=ErrorSums,
        description="a regressor's predictions whose target value arrived: their absolute errors",
    )
    shadow: tuple[ShadowSums, ...] = Field(
        (), description="shadow comparisons, one entry per stable version compared against"
    )

    @property
    def labelled(self) -> int:
        """Predictions whose ground truth arrived: class labels and target values."""
        return self.feedback_total + self.targets.n

    def shadow_against(self, stable: str) -> ShadowSums | None:
        """The comparisons against ``stable``, if the device made any."""
        return next((s for s in self.shadow if s.against == stable), None)

    @model_validator(mode="after")
    def _parts_within_totals(self) -> VersionTelemetry:
        if self.errors > self.inferences:
            raise ValueError(f"errors: {self.errors} is more than inferences ({self.inferences})")
        if self.feedback_correct > self.feedback_total:
            raise ValueError(
                f"feedback_correct: {self.feedback_correct} is more than "
                f"feedback_total ({self.feedback_total})"
            )
        return self


class Refusal(BaseModel):
    """An artifact the device refused to serve (``ArtifactRefusal`` on the wire), from a report in
    the window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    variant: str
    reason: str
    detail: str = ""


class DeviceObservation(BaseModel):
    """One enrolled device as the controller knows it now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(min_length=1)
    hardware_class: str
    last_seen: AwareDatetime | None = Field(
        None, description="when its latest telemetry report arrived; None if it never sent one"
    )
    running_version: str | None = Field(
        None, description="the version its latest telemetry report came FROM"
    )
    telemetry: tuple[VersionTelemetry, ...] = Field(
        (), description="per version, what it reported inside the window"
    )
    refused: tuple[Refusal, ...] = Field(
        (), description="artifacts it reported refusing inside the window"
    )
    download_error: str | None = Field(
        None,
        description="why the controller last failed to serve it an artifact inside the window "
        "(its artifact store unreachable, say); None when it did not fail",
    )

    @model_validator(mode="after")
    def _one_entry_per_version(self) -> DeviceObservation:
        versions = [t.version for t in self.telemetry]
        if len(set(versions)) != len(versions):
            raise ValueError(f"telemetry: a version is listed twice in {versions}")
        if self.running_version is not None and self.last_seen is None:
            raise ValueError("last_seen: a device with a running_version has reported at some time")
        return self

    def of_version(self, version: str) -> VersionTelemetry | None:
        """Its telemetry from ``version`` in the window, if any."""
        return next((t for t in self.telemetry if t.version == version), None)

    def reports(self, version: str, since: datetime) -> bool:
        """Its latest report, received at or after ``since``, came from ``version``."""
        return (
            self.running_version == version
            and self.last_seen is not None
            and self.last_seen >= since
        )


class Observations(BaseModel):
    """The fleet as seen for one decision; device order does not matter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_start: AwareDatetime | None = Field(
        description="telemetry was summed from here on; must be the status's window_start"
    )
    devices: tuple[DeviceObservation, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Observations:
        twice = sorted(i for i, n in Counter(d.device_id for d in self.devices).items() if n > 1)
        if twice:
            raise ValueError(f"devices: listed twice: {twice}")
        bounds = {
            t.latency.bounds_ms for d in self.devices for t in d.telemetry if t.latency is not None
        }
        if len(bounds) > 1:
            raise ValueError(
                "devices: latency histograms use different bucket bounds; "
                "telemetry must be re-bucketed to one layout before a decision"
            )
        return self

    def by_id(self) -> dict[str, DeviceObservation]:
        """Devices keyed by id."""
        return {d.device_id: d for d in self.devices}
