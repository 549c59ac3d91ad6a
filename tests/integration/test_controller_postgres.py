"""The fleet controller against real services: PostgreSQL (migrations, enrol, telemetry, a reconcile
pass) and a real uvicorn process (enrol and long-poll over HTTP)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import REGISTRY_KEY, claim, registry_key
from fastapi.testclient import TestClient
from servers import ADMIN, ADMIN_HEADERS, uvicorn_controller

from fleet.controller.api.app import create_app
from fleet.controller.reconcile import reconcile_once
from fleet.controller.settings import FleetSettings
from fleet.controller.storage import store
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = {
    "cohorts": {"host-cpu": {"p95_latency_ms": 5}},
    "stages": [
        {
            "fraction": f,
            "bake_s": 60,
            "deadline_s": 300,
            "min_confirmed_fraction": 1.0,
            "min_inferences": 100,
            "min_feedback": 50,
        }
        for f in (0.5, 1.0)
    ],
    "gates": {
        "max_error_rate": 0.05,
        "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 50},
    },
}


def report(seq: int, version: str) -> dict[str, Any]:
    hist = LatencyHistogram.of([1.0] * 200, LATENCY_BOUNDS_MS)
    return {
        "seq": seq,
        "buffer_id": "b",
        "version": version,
        "window_start": 0.0,
        "window_end": 1.0,
        "inferences": 200,
        "errors": 0,
        "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
        "feedback": [{"predicted": 1, "label": 1 if i < 95 else 0} for i in range(100)],
    }


def register(client: httpx.Client | TestClient, tmp: Path, version: str) -> None:
    data = b"onnx" * 256 + version.encode()
    query = claim(
        REGISTRY_KEY, "host-cpu-int8", data, model="churn", version=version,
        hardware_class="host-cpu",
    )  # fmt: skip
    r = client.post("/v1/artifacts", params=query, content=data, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text


def enrol(client: httpx.Client | TestClient, device_id: str) -> dict[str, str]:
    token = client.post("/v1/enrolment-tokens", json={}, headers=ADMIN_HEADERS).json()["token"]
    r = client.post(
        "/v1/enrol", json={"token": token, "device_id": device_id, "hardware_class": "host-cpu"}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['credential']}"}


def test_migrate_enrol_telemetry_and_reconcile_on_postgres(
    postgres_db: str, tmp_path: Path
) -> None:
    now = [T0]
    settings = FleetSettings(
        db_url=postgres_db,
        admin_token=ADMIN,
        reconcile_enabled=False,
        public_key_path=registry_key(tmp_path),
        artifact_dir=tmp_path / "artifact-store",
    )
    with TestClient(create_app(settings, clock=lambda: now[0])) as client:
        devices = {d: enrol(client, d) for d in ("pg-0", "pg-1")}
        r = client.post(
            "/v1/enrol", json={"token": "x" * 20, "device_id": "pg-9", "hardware_class": "host-cpu"}
        )
        assert r.status_code == 401
        register(client, tmp_path, "1")
        register(client, tmp_path, "2")
        r = client.post(
            "/v1/rollouts",
            json={"model": "churn", "version": "2", "stable_version": "1", "policy": POLICY},
            headers=ADMIN_HEADERS,
        )
        rollout_id = r.json()["rollout_id"]
        assert (
            client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).status_code
            == 200
        )

        def running(device: str) -> str:
            body = client.get(f"/v1/devices/{device}/desired", headers=devices[device]).json()
            return body["artifact"]["version"] if body["artifact"] else "1"

        now[0] = T0 + timedelta(seconds=10)
        for seq, device in enumerate(devices, start=1):
            batch = {"reports": [report(seq, running(device))]}
            url = f"/v1/devices/{device}/telemetry"
            assert client.post(url, json=batch, headers=devices[device]).json()["accepted"] == [seq]
            assert client.post(url, json=batch, headers=devices[device]).json()["duplicates"] == [
                seq
            ]

        sessions = client.app.state.sessions  # type: ignore[attr-defined]
        with sessions() as session:
            result = reconcile_once(session, rollout_id, T0 + timedelta(seconds=61))
        assert result.error is None and result.phase == "progressing"
        assert [running(d) for d in devices] == ["2", "2"]
        with sessions() as session:
            status = store.status_of(store.load_rollout(session, rollout_id))
            assert status.stage == 1
            assert store.pending_actions(session, rollout_id) == []


def test_uvicorn_process_enrols_and_long_polls(tmp_path: Path) -> None:
    with (
        uvicorn_controller(tmp_path, registry_key(tmp_path)) as (base, _),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        headers = enrol(client, "http-0")
        url = "/v1/devices/http-0/desired"
        started = time.monotonic()
        assert (
            client.get(url, params={"revision": 5, "wait": 20}, headers=headers).json()["revision"]
            == 0
        )
        assert time.monotonic() - started < 1.0
        assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401

        register(client, tmp_path, "1")
        register(client, tmp_path, "2")
        policy = POLICY  # one device: stage 1 (50%) targets it
        rollout_id = client.post(
            "/v1/rollouts",
            json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy},
            headers=ADMIN_HEADERS,
        ).json()["rollout_id"]
        answer: dict[str, Any] = {}

        def poll() -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                r = c.get(url, params={"revision": 0, "wait": 20}, headers=headers)
                answer.update(r.json(), at=time.monotonic())

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.5)
        changed_at = time.monotonic()
        r = client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
        assert r.status_code == 200, r.text
        poller.join(timeout=25)
        assert answer["revision"] == 1 and answer["artifact"]["version"] == "2"
        assert answer["at"] - changed_at < 1.0
