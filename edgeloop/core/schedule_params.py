"""The ``schedule:`` section of params.yaml: when the scheduled retrain runs and what it may do.

The cron expression is checked when params.yaml loads, with croniter (the parser Prefect schedules
use), so a typo fails at once instead of when the deployment is created.
"""

from __future__ import annotations

from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ScheduleParams(BaseModel):
    """Scheduled retraining (the Prefect deployment ``scheduled-retrain/scheduled``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="create the deployment with an active schedule")
    cron: str = Field("0 3 * * *", description="five-field cron expression")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    auto_promote: Literal["never", "if_better", "always"] = Field(
        "never",
        description="what a new candidate of the scheduled or fleet-triggered retrain does: "
        "never (stays candidate), if_better (becomes production, which starts a rollout, only "
        "when it beats production on the test split and on the field data that triggered it: "
        "flows/champion.py), always (becomes production); true and false mean always and never",
    )

    approval: bool = Field(
        False,
        description="a person approves each promotion auto_promote would make: the retrain "
        "pauses until answered in the Prefect UI or with `edgeloop approve` (flows/approval.py)",
    )
    approval_timeout_s: int = Field(
        86_400, gt=0, description="no answer within this long: the candidate is not promoted"
    )

    @field_validator("auto_promote", mode="before")
    @classmethod
    def _booleans(cls, value: object) -> object:
        if isinstance(value, bool):  # the older spelling
            return "always" if value else "never"
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(
                f"{value!r} is not a valid cron expression "
                "(five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *')"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. 'UTC')") from exc
        return value
