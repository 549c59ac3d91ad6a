"""/metrics, the dashboard and field samples on PostgreSQL (the production database): the same
grouped queries as on SQLite, through the app over a fresh database."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet.controller.api.app import create_app
from fleet.controller.settings import FleetSettings
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer pg-admin"}


def test_dashboard_metrics_and_field_samples_on_postgresql(
    postgres_db: str, tmp_path: Path
) -> None:
    settings = FleetSettings(
        db_url=postgres_db,
        admin_token="pg-admin",
        reconcile_enabled=False,
        public_key_path=tmp_path / "missing.pem",
    )
    hist = LatencyHistogram.of([2.0] * 50, LATENCY_BOUNDS_MS)
    with TestClient(create_app(settings)) as client:
        token = client.post("/v1/enrolment-tokens", json={"uses": 30}, headers=ADMIN).json()
        credentials = {}
        for i in range(25):
            r = client.post(
                "/v1/enrol",
                json={"token": token["token"], "device_id": f"pg-{i:02d}",
                      "hardware_class": "host-cpu" if i % 2 else "edge-small"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            credentials[f"pg-{i:02d}"] = {"Authorization": f"Bearer {r.json()['credential']}"}
        for device in ("pg-01", "pg-02"):
            report = {
                "seq": 1, "buffer_id": "b", "model": "m", "version": "3", "window_start": 1.0,
                "window_end": 2.0, "inferences": 50, "errors": 1,
                "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
                "feedback": [{"predicted": 1, "label": 1}] * 10,
            }  # fmt: skip
            r = client.post(
                f"/v1/devices/{device}/telemetry",
                json={"reports": [report]},
                headers=credentials[device],
            )
            assert r.status_code == 200, r.text
        sample = {"model": "m", "version": "3", "features": [1.0, 2.0], "label": 1}
        r = client.post(
            "/v1/devices/pg-01/field-samples",
            json={"samples": [sample] * 3},
            headers=credentials["pg-01"],
        )
        assert r.status_code == 200, r.text

        page = client.get("/dashboard", headers=ADMIN)
        assert page.status_code == 200, page.text
        assert "25 devices enrolled, 2 online" in page.text
        table = client.get("/dashboard/devices?size=10&page=3", headers=ADMIN).text
        assert "page 3 of 3 (25 devices)" in table and "pg-24" in table
        counted = (
            'edgeloop_fleet_telemetry_inferences_total{hardware_class="host-cpu",model="m",'
            'version="3"} 50.0'
        )
        deadline = time.monotonic() + 30  # counters take reports once they are SETTLE_S old
        metrics = client.get("/metrics", headers=ADMIN).text
        while counted not in metrics and time.monotonic() < deadline:
            time.sleep(0.5)
            metrics = client.get("/metrics", headers=ADMIN).text
        assert counted in metrics
        assert "edgeloop_fleet_devices_online 2.0" in metrics
        pulled = client.get("/v1/field-samples", headers=ADMIN).json()
        assert len(pulled["samples"]) == 3 and pulled["next_since"] == pulled["samples"][-1]["id"]
