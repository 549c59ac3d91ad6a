"""The operator's wire contract with the fleet controller (``/v1``, admin token): artifacts,
baselines, rollouts, field samples, alerts, playbook runs and metric series.

The controller's routes answer with these models (``response_model``) and ``fleet.admin``, the
operator's client, parses its answers into them, so neither side reads a string-keyed dict. Devices
never call these endpoints; their contract is ``fleet.shared.protocol``. Only pydantic and the standard
library, like the rest of ``fleet.shared``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from fleet.shared.protocol import NAME, FieldSample

SHA256 = r"^[0-9a-f]{64}$"


class _Admin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- artifacts and baselines -------------------------------------------------------------------


class ArtifactRegistration(_Admin):
    """The release claim of one variant for one hardware class, sent as the query of
    ``POST /v1/artifacts`` with the file's bytes as the (streamed) request body, or with ``source``,
    a URL the controller fetches them from. Never a path: the controller holds artifacts in its own
    store, by content. It refuses (422, nothing stored) bytes whose sha256 is not ``sha256`` and a
    ``signature`` that does not verify for the claim; the answer is the device-facing
    ``fleet.shared.protocol.Artifact`` (``None`` for an unsigned variant, which never ships)."""

    model: str = Field(pattern=NAME)
    version: str = Field(pattern=NAME)
    variant: str = Field(pattern=NAME)
    hardware_class: str = Field(pattern=NAME)
    sha256: str = Field(pattern=SHA256, description="hex sha256 of the bytes, as signed")
    signature: str | None = Field(
        None, max_length=200, description="base64 ed25519; unsigned variants never ship"
    )
    release: int = Field(
        ge=1,
        le=2**63 - 1,
        description="the release counter the signature binds (the registry's version number)",
    )
    source: str | None = Field(
        None,
        max_length=2000,
        pattern=r"^https?://",
        description="an http(s) URL the controller fetches the bytes from (only from the origins "
        "in its EDGELOOP_FLEET_ARTIFACT_SOURCE_ORIGINS), instead of a request body",
    )


class Baseline(_Admin):
    """The version a model's devices run outside any rollout. The rollout flow sets it for a model's
    first release and after each succeeded rollout."""

    version: str = Field(pattern=NAME)


MAX_SILENT_S = 100 * 366 * 86_400.0
"""A century: longer than any device has been silent, short enough that ``now - silent_for_s`` is a
date (a larger one used to be a 500: OverflowError in the controller)."""


class RetireRequest(_Admin):
    """Take devices out of the fleet: those named, and with ``silent_for_s`` every device not heard
    from for that long. Their credentials stop working; rollouts no longer count or target them."""

    device_ids: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, max_length=100_000
    )
    silent_for_s: float | None = Field(None, ge=0, le=MAX_SILENT_S)


class RetireResult(_Admin):
    retired: list[str]


class BaselineSet(_Admin):
    """The answer to setting a baseline: how many devices it retargeted now."""

    model: str
    version: str
    devices_changed: int = Field(ge=0)


# --- rollouts ----------------------------------------------------------------------------------


class RolloutRequest(_Admin):
    """Create a rollout of ``version`` against ``stable_version`` (the last succeeded one if None).

    ``policy`` is the JSON of ``fleet.controller.rollout.policy.RolloutPolicy``, the one definition of a
    policy: the sender builds the model and sends ``model_dump(mode="json")``, and the controller
    validates it with ``load_policy``, whose refusal (422) names every bad field. The model is not
    here because it belongs to the rollout core (its stages compute targets and quorums).
    """

    model: str = Field(pattern=NAME)
    version: str = Field(pattern=NAME)
    stable_version: str | None = Field(None, pattern=NAME)
    policy: dict[str, JsonValue] | None = Field(
        None,
        description="a RolloutPolicy's JSON (fleet.controller.rollout.policy); the default if None",
    )
    supersede: bool = False


class RolloutCommand(_Admin):
    reason: str = Field("", max_length=500)


class RolloutSummary(_Admin):
    rollout_id: str
    model: str
    version: str
    stable_version: str | None
    phase: str
    stage: str
    reason: str | None
    updated_at: datetime


class RolloutDetail(RolloutSummary):
    """A summary plus the whole persisted status and the last error of the control loop, if any.

    ``status`` is the JSON of ``fleet.controller.rollout.decide.RolloutStatus``, the one definition of
    a rollout's state; code above the controller (the rollout flow, the CLI) parses it with
    ``RolloutStatus.model_validate``.
    """

    status: dict[str, Any]
    last_error: str | None = None


# --- rollout outcomes --------------------------------------------------------------------------

OutcomeStatus = Literal["succeeded", "rolled_back", "aborted", "failed"]
"""How a rollout attempt ended, as the registry records it (``edgeloop.rollout.status``)."""


class OutcomeEntry(_Admin):
    """One entry of the outcome feed (``GET /v1/outcomes``): how one attempt of a rollout ended.

    ``succeeded``: ``version`` is what the fleet runs. Otherwise the fleet went back to (or stayed
    on) ``stable_version``: ``rolled_back`` a gate failed, ``failed`` no verdict for lack of data,
    ``aborted`` an operator (or a superseding rollout) stopped it. ``at`` is when the controller
    decided it. ``id`` is the feed position, increasing and without gaps, the follower's cursor.
    """

    id: int = Field(ge=1)
    rollout_id: str
    attempt: int = Field(ge=1)
    model: str
    version: str
    stable_version: str
    status: OutcomeStatus
    reason: str
    at: datetime


class OutcomePage(_Admin):
    """``GET /v1/outcomes?after=&limit=``: outcomes with ids above ``after``, oldest first."""

    outcomes: list[OutcomeEntry]
    last: int = Field(
        ge=0, description="the id of the last entry (``after`` when none): the next ``after``"
    )
    head: int = Field(
        ge=0,
        description="the highest id in the feed; below a reader's cursor, the reader is "
        "following another (or a reset) controller database",
    )


# --- field samples -----------------------------------------------------------------------------


class StoredSample(FieldSample):
    """A field sample as the controller stored it: its id (the paging cursor), device and time."""

    id: int
    device_id: str
    received_at: datetime


class FieldSamplePage(_Admin):
    """``GET /v1/field-samples?since=&limit=``: samples with ids above ``since``, oldest first."""

    samples: list[StoredSample]
    next_since: int = Field(description="pass as ``since`` for the next page")


# --- observability -----------------------------------------------------------------------------


class Alert(_Admin):
    """An alert of ``fleet.controller.observe.alerts``; repeats count as ``occurrences``."""

    id: int
    kind: str
    scope: dict[str, str]
    value: float
    threshold: float
    reason: str
    status: str
    occurrences: int
    suppressed: int
    opened_at: datetime
    last_seen_at: datetime
    closed_at: datetime | None


class SeriesPoint(_Admin):
    """``GET /v1/series``: one window's value of one metric (``fleet.controller.observe.aggregate``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: str
    version: str
    hardware_class: str = Field(alias="class")
    label: str
    metric: str
    window_end: datetime
    value: float
    devices: int
    samples: int


class PlaybookRun(_Admin):
    """One action of one playbook for one alert (``fleet.controller.observe.playbooks``)."""

    id: int
    playbook: str
    alert_id: int
    action: str
    cause: str
    status: str
    result: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
