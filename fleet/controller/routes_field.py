"""Field samples: devices send labelled (and drifted) inputs; the training side pulls them by id.

``POST /v1/devices/{id}/field-samples`` takes a device's credential (its own path only, like telemetry);
``GET /v1/field-samples?since=&limit=`` takes the admin token and pages by sample id.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.controller import field_samples
from fleet.controller.auth import Admin, OwnDevice, SessionDep
from fleet.protocol import NAME

router = APIRouter()
MAX_FEATURES = 4096
MAX_PAGE = 5000


class FieldSample(BaseModel):
    """One input a device served: features in the model's input order, what it predicted, and the
    ground-truth label once known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(pattern=NAME)
    version: str = Field(pattern=NAME)
    features: list[float] = Field(min_length=1, max_length=MAX_FEATURES)
    predicted: int | None = Field(None, ge=0, le=100_000)
    label: int | None = Field(None, ge=0, le=100_000)
    drifted: bool = False

    @field_validator("features")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"features {bad[:10]} are not finite numbers")
        return values


class FieldSampleBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: list[FieldSample] = Field(min_length=1, max_length=1000)


class FieldSampleAck(BaseModel):
    stored: int
    dropped_oldest: int = Field(description="older samples of this device dropped to stay bounded")


class StoredSample(FieldSample):
    id: int
    device_id: str
    received_at: datetime


class FieldSamplePage(BaseModel):
    samples: list[StoredSample]
    next_since: int = Field(description="pass as ``since`` for the next page")


@router.post("/devices/{device_id}/field-samples", response_model=FieldSampleAck)
def add_field_samples(
    body: FieldSampleBatch, request: Request, device: OwnDevice, session: SessionDep
) -> FieldSampleAck:
    dropped = field_samples.add_samples(
        session,
        device.device_id,
        [s.model_dump() for s in body.samples],
        request.app.state.clock(),
    )
    return FieldSampleAck(stored=len(body.samples), dropped_oldest=dropped)


@router.get("/field-samples", response_model=FieldSamplePage, dependencies=[Admin])
def list_field_samples(
    session: SessionDep,
    since: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
    labelled_only: bool = True,
) -> FieldSamplePage:
    rows = field_samples.samples_since(session, since, limit, labelled_only=labelled_only)
    return FieldSamplePage(
        samples=[
            StoredSample(
                id=r.id,
                device_id=r.device_id,
                received_at=r.received_at,
                model=r.model,
                version=r.version,
                features=list(r.features),
                predicted=r.predicted,
                label=r.label,
                drifted=r.drifted,
            )
            for r in rows
        ],
        next_since=rows[-1].id if rows else since,
    )
