"""The wire contract between edge agents and the fleet controller (``/v1``).

Both sides import these models, so the agent and the controller cannot drift apart. Only pydantic and
the standard library: the agent installs on a small device. Limits on every number make absurd
telemetry a 422 at the door instead of a poisoned aggregate. The operator's (admin) contract is
``fleet.shared.admin_protocol``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from fleet.shared.latency import LatencyHistogram

API_PREFIX = "/v1"
ENROL_PATH = f"{API_PREFIX}/enrol"
ENROLMENT_TOKENS_PATH = f"{API_PREFIX}/enrolment-tokens"
LONG_POLL_MAX_S = 30.0
MAX_REPORTS_PER_BATCH = 500
MAX_FIELD_SAMPLES_PER_BATCH = 1000
MAX_FEATURES = 65_536
"""Values in one field sample: 256 KiB as float32 (a 1x256x256 or 3x128x128 image, or a window of
sensor readings); a sample of a larger input is not kept."""
MAX_FIELD_BATCH_VALUES = 1_048_576
"""Values in one batch of field samples, all samples together (4 MiB as float32): a batch is
bounded by its size, not only by its number of samples (:func:`values_prefix`)."""
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
TEXT = r"^[^\x00]*$"
"""Free text: anything but the NUL character, which no PostgreSQL text column holds (a string with
one is a 422 here, on either database, not a 500 from PostgreSQL)."""


MAX_DB_INT = 2**63 - 1
"""The largest integer both databases store (a signed 64-bit column): a larger one is a 422 here,
not a 500 from the database."""

LabelKey = Annotated[str, Field(pattern=NAME)]
LabelValue = Annotated[str, Field(min_length=1, max_length=128, pattern=TEXT)]


class _Wire(BaseModel):
    # No NaN or Infinity in any float: JSON has neither, and a database column takes neither.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def desired_path(device_id: str) -> str:
    """Where a device long-polls its :class:`DesiredState`."""
    return f"{API_PREFIX}/devices/{device_id}/desired"


def telemetry_path(device_id: str) -> str:
    """Where a device posts its :class:`TelemetryBatch`."""
    return f"{API_PREFIX}/devices/{device_id}/telemetry"


def field_samples_path(device_id: str) -> str:
    """Where a device posts its :class:`FieldSampleBatch`."""
    return f"{API_PREFIX}/devices/{device_id}/field-samples"


# --- enrolment -------------------------------------------------------------------------------


class EnrolmentTokenRequest(_Wire):
    """Admin: a one-time token for ``uses`` devices, valid for ``ttl_s`` seconds; bound, with
    ``device_id``, to the one device of that id, or with ``device_prefix`` to ids that begin so (a
    device does not choose an id outside what its token allows)."""

    uses: int = Field(1, ge=1, le=100_000)
    ttl_s: int = Field(86_400, ge=60, le=30 * 86_400)
    hardware_class: str | None = Field(None, pattern=NAME, description="restrict to one class")
    device_id: str | None = Field(None, pattern=NAME, description="only this device id (uses 1)")
    device_prefix: str | None = Field(
        None, pattern=NAME, max_length=64, description="only device ids that begin with it"
    )

    @model_validator(mode="after")
    def _one_binding(self) -> EnrolmentTokenRequest:
        if self.device_id is not None and (self.device_prefix is not None or self.uses != 1):
            raise ValueError(
                "a token bound to a device_id enrols that one device: uses 1, no prefix"
            )
        return self


class EnrolmentToken(_Wire):
    token: str
    expires_at: AwareDatetime
    uses: int
    token_id: int = Field(description="names the token to list or revoke it (never the token)")


class EnrolmentTokenInfo(_Wire):
    """Admin: a token that can still enrol a device, without the token itself."""

    token_id: int
    uses_left: int
    expires_at: AwareDatetime
    created_at: AwareDatetime
    hardware_class: str | None
    device_id: str | None
    device_prefix: str | None


class EnrolRequest(_Wire):
    """A device presents a one-time token and says what it is."""

    token: str = Field(min_length=16, max_length=256)
    device_id: str = Field(pattern=NAME)
    hardware_class: str = Field(pattern=NAME)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16)


class EnrolResponse(_Wire):
    """The device's credential, shown once; the controller keeps only its hash."""

    device_id: str
    credential: str
    public_key_pem: str = Field(description="the registry key that signs variants")


# --- desired state ---------------------------------------------------------------------------


class Artifact(_Wire):
    """The variant of a version for the device's hardware class."""

    model: str = Field(pattern=NAME)
    version: str = Field(pattern=NAME)
    variant: str = Field(pattern=NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(min_length=1, description="base64 ed25519, see fleet.shared.signature")
    release: int = Field(
        ge=1, le=MAX_DB_INT, description="the release counter; a device does not go below it"
    )
    size_bytes: int = Field(ge=1)
    url: str = Field(description="path under /v1/artifacts, or a signed object-store URL")


class ShadowPlan(_Wire):
    """During a canary: score a sampled share of real inputs with the stable version too.

    The device runs ``version`` (the model it served before the canary, kept in its other slot) on
    ``rate`` of the inputs it serves, off the serving path, and never spends more than ``cpu_budget``
    of its serving time on it; it reports how often the two agree (:class:`ShadowReport`). Labels are
    not needed, so a fleet without ground truth can still judge a canary.
    """

    version: str = Field(pattern=NAME, description="the stable version to run in shadow")
    rate: float = Field(gt=0, le=1, description="share of served rows scored in shadow")
    cpu_budget: float = Field(
        gt=0, le=1, description="shadow inference time at most this share of serving time"
    )
    tolerance: float = Field(
        0.0, ge=0, description="regressors: |canary - stable| above this is a disagreement"
    )


class DesiredState(_Wire):
    """What a device should run. ``revision`` changes whenever anything here changes."""

    device_id: str
    revision: int = Field(ge=0)
    artifact: Artifact | None = None
    rollout_id: str | None = None
    shadow: ShadowPlan | None = None
    rollback: bool = Field(
        False,
        description="the controller's rollback path asks for this artifact: the one case in "
        "which a device takes a lower release than the one it runs",
    )


# --- telemetry -------------------------------------------------------------------------------


MAX_CLASS_INDEX = 100_000
"""The largest class index a label or a prediction may carry."""

MAX_ABS_ERROR = 1e15
"""The largest absolute error one regression feedback may carry."""


class Feedback(_Wire):
    """A labelled prediction: a classifier's ``predicted`` class and its true ``label``, or a
    regressor's ``abs_error``, the absolute difference between its prediction and the target value
    that came back (the mean over the outputs of a multi-output model)."""

    prediction_id: str | None = Field(None, max_length=64)
    predicted: int | None = Field(None, ge=0, le=MAX_CLASS_INDEX)
    label: int | None = Field(None, ge=0, le=MAX_CLASS_INDEX)
    abs_error: float | None = Field(None, ge=0, le=MAX_ABS_ERROR)

    @model_validator(mode="after")
    def _one_kind(self) -> Feedback:
        classified = self.predicted is not None and self.label is not None
        if self.abs_error is not None and (self.predicted is not None or self.label is not None):
            raise ValueError("feedback carries either predicted and label, or abs_error: not both")
        if self.abs_error is None and not classified:
            raise ValueError(
                "feedback needs predicted and label (a classifier) or abs_error (a regressor)"
            )
        return self


class DeviceEvent(_Wire):
    """A detector's finding on the device (``fleet.shared.drift``); the controller checks the values
    (finite, in range) and counts a device that sends garbage, so NaN and Infinity pass parsing
    here to be counted there."""

    model_config = ConfigDict(allow_inf_nan=True)

    kind: Literal["input_drift", "prediction_drift", "latency_regression", "error_burst"]
    value: float
    threshold: float
    window_s: float
    feature: str | None = Field(None, max_length=128, pattern=TEXT)
    action: Literal["none", "fallback"] = "none"


MAX_SHADOW_CLASSES = 1000
"""Distinct predicted classes one shadow report may count (per model)."""


class ShadowReport(_Wire):
    """Paired comparisons in one window: the reporting version against ``against`` (the stable
    version run in shadow) on the same inputs. A row is compared, failed (the shadow model raised) or
    skipped (sampled, but the CPU budget was spent or the shadow queue was full)."""

    against: str = Field(pattern=NAME)
    compared: int = Field(ge=0, le=100_000_000)
    disagreed: int = Field(ge=0, le=100_000_000)
    failed: int = Field(0, ge=0, le=100_000_000)
    skipped: int = Field(0, ge=0, le=100_000_000)
    busy_ms: float = Field(0.0, ge=0, le=1e12, description="time spent in shadow inference")
    canary_classes: dict[str, int] = Field(
        default_factory=dict,
        max_length=MAX_SHADOW_CLASSES,
        description="top class of the reporting version on the compared rows (classifiers)",
    )
    stable_classes: dict[str, int] = Field(
        default_factory=dict,
        max_length=MAX_SHADOW_CLASSES,
        description="top class of the shadow model on the same rows",
    )

    def problems(self, served_rows: int) -> list[str]:
        """What is impossible about these counts for a window that served ``served_rows`` rows."""
        out = []
        if self.disagreed > self.compared:
            out.append(
                f"shadow: disagreed ({self.disagreed}) is more than compared ({self.compared})"
            )
        sampled = self.compared + self.failed + self.skipped
        if sampled > served_rows:
            out.append(
                f"shadow: {sampled} rows compared, failed or skipped, more than the {served_rows} "
                "the report served"
            )
        for name, classes in (("canary", self.canary_classes), ("stable", self.stable_classes)):
            if any(n < 0 for n in classes.values()) or sum(classes.values()) > self.compared:
                out.append(
                    f"shadow: {name}_classes must be non-negative and add up to at most "
                    f"compared ({self.compared})"
                )
        return out


MAX_REFUSALS = 16
"""Refused artifacts one report may name."""


class ArtifactRefusal(_Wire):
    """An artifact the controller asked the device to run and the device refused: the bytes, the
    signature or the release did not check out, or the model did not load or pass its smoke test.
    The device keeps its model and says so in its next report, so the rollout fails at once with
    the reason instead of waiting for the device's silence."""

    version: str = Field(pattern=NAME)
    variant: str = Field(pattern=NAME)
    reason: Literal["sha256", "signature", "release", "load", "smoke"]
    detail: str = Field("", max_length=500, pattern=TEXT)


class TelemetryReport(_Wire):
    """One window of one version on one device; ``(buffer_id, seq)`` makes it idempotent."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int = Field(ge=1, le=MAX_DB_INT)
    buffer_id: str = Field(min_length=1, max_length=64, pattern=TEXT)
    model: str = Field("", max_length=128, pattern=TEXT)
    version: str = Field(pattern=NAME)
    variant: str = Field("", max_length=128, pattern=TEXT)
    running: bool = True
    window_start: float = Field(ge=0)
    window_end: float = Field(ge=0)
    inferences: int = Field(ge=0, le=10_000_000)
    errors: int = Field(ge=0, le=10_000_000)
    rows: int | None = Field(
        None, ge=0, le=1_000_000_000, description="rows scored (a call may score several)"
    )
    latency_ms: LatencyHistogram
    feedback: list[Feedback] = Field(default_factory=list, max_length=10_000)
    dropped_total: int = Field(0, ge=0, le=MAX_DB_INT)
    input_stats: dict[str, object] = Field(default_factory=dict)
    events: list[DeviceEvent] = Field(default_factory=list, max_length=64)
    shadow: ShadowReport | None = None
    refusals: list[ArtifactRefusal] = Field(default_factory=list, max_length=MAX_REFUSALS)

    @property
    def served_rows(self) -> int:
        """Rows this window served: ``rows`` when the device counts them, else its inferences."""
        return max(self.rows or 0, self.inferences)

    @model_validator(mode="after")
    def _consistent(self) -> TelemetryReport:
        if self.errors > self.inferences:
            raise ValueError("errors cannot exceed inferences")
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if sum(self.latency_ms.counts) > self.inferences:
            raise ValueError("more latency samples than inferences")
        return self


class TelemetryBatch(_Wire):
    reports: list[TelemetryReport] = Field(min_length=1, max_length=MAX_REPORTS_PER_BATCH)


class TelemetryAck(_Wire):
    """Which sequence numbers were stored now and which had been stored before (both are safe to
    drop from the device's buffer)."""

    accepted: list[int]
    duplicates: list[int]
    refused: list[int] = Field(
        default_factory=list,
        description="reports of a model or version the device was not told to run (nor ran "
        "before): not stored; sending them again changes nothing",
    )


# --- field samples ---------------------------------------------------------------------------


class FieldSample(_Wire):
    """One input a device served: features in the model's input order, what it predicted, and the
    ground-truth label once known."""

    model: str = Field(pattern=NAME)
    version: str = Field(pattern=NAME)
    features: list[float] = Field(min_length=1, max_length=MAX_FEATURES)
    predicted: int | None = Field(None, ge=0, le=MAX_CLASS_INDEX)
    label: int | None = Field(None, ge=0, le=MAX_CLASS_INDEX)
    drifted: bool = False


class FieldSampleBatch(_Wire):
    """Samples of one device; ``dropped_total`` counts those its bounded outbox dropped so far."""

    samples: list[FieldSample] = Field(min_length=1, max_length=MAX_FIELD_SAMPLES_PER_BATCH)
    dropped_total: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _bounded(self) -> FieldSampleBatch:
        values = sum(len(s.features) for s in self.samples)
        if values > MAX_FIELD_BATCH_VALUES:
            raise ValueError(
                f"the batch holds {values} feature values, more than {MAX_FIELD_BATCH_VALUES}: "
                "send fewer samples per batch"
            )
        return self


def values_prefix(sizes: list[int], limit: int | None = None) -> int:
    """How many of the samples (their sizes in values, in order) fit one batch of ``limit``
    values (default :data:`MAX_FIELD_BATCH_VALUES`): at least one, so a sample that alone fills a
    batch still goes."""
    limit = MAX_FIELD_BATCH_VALUES if limit is None else limit
    total = 0
    for n, size in enumerate(sizes):
        total += size
        if total > limit and n > 0:
            return n
    return len(sizes)


class FieldSampleAck(_Wire):
    stored: int
    dropped_oldest: int = Field(description="older samples of this device dropped to stay bounded")
