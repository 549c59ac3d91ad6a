"""Admin read API of fleet observability: alerts, playbook runs and aggregated series."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import AwareDatetime

from fleet.controller.api.auth import Admin, SessionDep
from fleet.controller.api.responses import errors
from fleet.controller.observe.aggregate import ALL, METRICS, fleet_series
from fleet.controller.observe.alerts import list_alerts
from fleet.controller.observe.playbooks.runner import list_playbook_runs
from fleet.shared.admin_protocol import Alert, PlaybookRun, SeriesPoint
from fleet.shared.protocol import MAX_DB_INT, NAME, TEXT

router = APIRouter(dependencies=[Admin])

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT)]
Name = Annotated[str, Query(pattern=NAME)]


@router.get("/alerts", response_model=list[Alert])
def get_alerts(
    session: SessionDep,
    status: Literal["open", "all"] = "open",
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Alerts, newest first."""
    return list_alerts(session, status=status, limit=limit, offset=offset)


@router.get("/playbook-runs", response_model=list[PlaybookRun])
def get_playbook_runs(
    session: SessionDep, limit: Limit = 100, offset: Offset = 0
) -> list[dict[str, Any]]:
    """Playbook runs (one per playbook, alert and action), newest first."""
    return list_playbook_runs(session, limit=limit, offset=offset)


@router.get("/series", response_model=list[SeriesPoint], responses=errors(422))
def get_series(
    session: SessionDep,
    model: Name,
    metric: str,
    version: Name | None = None,
    hardware_class: Annotated[str | None, Query(alias="class", pattern=NAME)] = None,
    label: Annotated[str, Query(pattern=TEXT)] = ALL,
    since: AwareDatetime | None = None,
    limit: Limit = 1000,
) -> list[dict[str, Any]]:
    """Points of one metric (one of ``METRICS``) per window, oldest first."""
    if metric not in METRICS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown metric {metric!r}; use one of {', '.join(METRICS)}",
        )
    start: datetime | None = since
    return fleet_series(
        session, model=model, metric=metric, version=version, hardware_class=hardware_class,
        label=label, since=start, limit=limit,
    )  # fmt: skip
