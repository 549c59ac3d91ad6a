"""Telemetry ingest on PostgreSQL: a batch mixing new reports, stored ones and repeats within itself
stores each report once and says which were new, in the batch's order."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from servers import ADMIN
from sqlalchemy import func, select
from test_controller_postgres import enrol, report

from fleet.controller.api.app import create_app
from fleet.controller.settings import FleetSettings
from fleet.controller.storage.db import DeviceRow, TelemetryRow

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_mixed_batch_is_stored_once_and_acknowledged_in_order(postgres_db: str) -> None:
    settings = FleetSettings(db_url=postgres_db, admin_token=ADMIN, reconcile_enabled=False)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        headers = enrol(client, "pg-0")
        other = enrol(client, "pg-1")
        url = "/v1/devices/pg-0/telemetry"

        def send(seqs: list[int], as_: dict[str, str] = headers) -> dict[str, list[int]]:
            r = client.post(url, json={"reports": [report(s, "1") for s in seqs]}, headers=as_)
            assert r.status_code == 200, r.text
            return dict(r.json())

        assert send([1, 2, 3, 4, 5]) == {
            "accepted": [1, 2, 3, 4, 5],
            "duplicates": [],
            "refused": [],
        }
        assert send([3, 6, 6, 7, 1]) == {"accepted": [6, 7], "duplicates": [3, 6, 1], "refused": []}
        assert send([7, 6]) == {"accepted": [], "duplicates": [7, 6], "refused": []}
        r = client.post(url, json={"reports": [report(8, "1")]}, headers=other)
        assert r.status_code == 403
        with client.app.state.sessions() as session:  # type: ignore[attr-defined]
            stored = session.scalars(
                select(TelemetryRow.seq).where(TelemetryRow.device_id == "pg-0")
            ).all()
            assert sorted(stored) == [1, 2, 3, 4, 5, 6, 7]
            assert session.scalar(select(func.count()).select_from(TelemetryRow)) == 7
            device = session.get(DeviceRow, "pg-0")
            assert device is not None and device.last_seen == NOW
