"""Field samples: devices send labelled (and drifted) inputs; the training side pulls them by id.

``POST /v1/devices/{id}/field-samples`` takes a device's credential (its own path only, like telemetry);
``GET /v1/field-samples?since=&limit=`` takes the admin token and pages by sample id.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request

from fleet.controller.api.auth import Admin, OwnDevice, SessionDep
from fleet.controller.api.responses import errors
from fleet.controller.storage import field_samples
from fleet.shared.admin_protocol import FieldSamplePage, StoredSample
from fleet.shared.protocol import MAX_DB_INT, FieldSampleAck, FieldSampleBatch

router = APIRouter()
log = logging.getLogger(__name__)
MAX_PAGE = 5000


@router.post(
    "/devices/{device_id}/field-samples", response_model=FieldSampleAck, responses=errors(403)
)
def add_field_samples(
    body: FieldSampleBatch, request: Request, device: OwnDevice, session: SessionDep
) -> FieldSampleAck:
    dropped = field_samples.add_samples(
        session,
        device.device_id,
        [s.model_dump() for s in body.samples],
        request.app.state.clock(),
    )
    if body.dropped_total:
        log.info("device %s dropped %d field samples offline", device.device_id, body.dropped_total)
    return FieldSampleAck(stored=len(body.samples), dropped_oldest=dropped)


@router.get("/field-samples", response_model=FieldSamplePage, dependencies=[Admin])
def list_field_samples(
    session: SessionDep,
    since: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
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
