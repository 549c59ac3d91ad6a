"""Drift to alert to playbook against a real controller process (uvicorn; SQLite and PostgreSQL) and
simulated devices running the on-device detectors: drift on 10% of the devices raises one input-drift
alert whose reason names the feature and its PSI, and the playbook's webhook (a real HTTP server)
receives it, recorded with its cause; an alert storm (every device drifting) is still one alert acted
on once; a device sending garbage statistics gets 422 and is counted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servers import uvicorn_controller
from test_simulate_controller import ADMIN, ADMIN_HEADERS, register, write_model

from fleet.controller.storage import db
from fleet.controller.storage import events as stored_events
from fleet.shared.drift import DetectorPolicy, build_reference
from fleet.simulate import FaultPlan, FaultWindow, Simulation

pytestmark = pytest.mark.integration

DEVICES = 20


class Webhook:
    """A real HTTP endpoint that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fleet"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def start_controller(tmp: Path, db_url: str, hook: Webhook) -> Iterator[dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    pub = tmp / "signing.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    (tmp / "playbooks.yaml").write_text(
        "playbooks:\n"
        "  - name: drift-notify\n"
        "    trigger: {kind: input_drift, threshold: 0.25}\n"
        f"    actions: [{{action: notify_webhook, url: '{hook.url}'}}, {{action: open_retrain}}]\n"
    )
    with uvicorn_controller(
        tmp,
        pub,
        db_url,
        EDGELOOP_FLEET_OBSERVE_PERIOD_S="0.5",
        EDGELOOP_FLEET_OBSERVE_WINDOW_S="5",
        EDGELOOP_FLEET_OBSERVE_PLAYBOOKS_PATH=str(tmp / "playbooks.yaml"),
    ) as (base, _):
        yield {"base": base, "key": key, "db_url": db_url, "tmp": tmp, "log": tmp / "uvicorn.log"}


@pytest.fixture
def controller(tmp_path: Path, webhook: Webhook) -> Iterator[dict[str, Any]]:
    yield from start_controller(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", webhook)


@pytest.fixture
def pg_controller(tmp_path: Path, webhook: Webhook, postgres_db: str) -> Iterator[dict[str, Any]]:
    yield from start_controller(tmp_path, postgres_db, webhook)


def simulation(c: dict[str, Any], drift_fraction: float) -> Simulation:
    """``DEVICES`` host-cpu devices on v1 of a tiny model; the reference is the clean field data."""
    tmp: Path = c["tmp"]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    field_x = rng.normal(0, 1, size=(4000, 64)).astype(np.float32)
    field_y = (field_x @ w).argmax(axis=1)
    with httpx.Client(base_url=c["base"], timeout=30) as client:
        register(c, client, "1", "host-cpu", write_model(tmp / "v1.onnx", w))
        r = client.put("/v1/baselines/digits", json={"version": "1"}, headers=ADMIN_HEADERS)
        assert r.status_code == 200, r.text
    return Simulation(
        c["base"],
        ADMIN,
        devices=DEVICES,
        classes={"host-cpu": 1.0},
        field_x=field_x,
        field_y=field_y,
        report_interval_s=0.25,
        rows_per_report=50,
        faults=FaultPlan(drift=FaultWindow(drift_fraction, start_s=3.0), drift_shift=1.0),
        drift_reference=build_reference(field_x, predictions=field_y, classes=10),
        detector_policy=DetectorPolicy(min_rows=200),
        seed=3,
    )


def get(c: dict[str, Any], path: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{c['base']}{path}", headers=ADMIN_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json())


def drift_alerts(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in get(c, "/v1/alerts?status=all") if a["kind"] == "input_drift"]


def run_until(sim: Simulation, done: Callable[[], bool], timeout_s: float) -> None:
    sim.run_sync(until=done, timeout_s=timeout_s, check_s=0.5)


def check_drift_alert_and_playbook(c: dict[str, Any], hook: Webhook, drifting: int) -> None:
    sim = simulation(c, drift_fraction=drifting / DEVICES)
    try:
        hit = sorted(d for d, r in sim.result.devices.items() if "drift" in r.faults)
        assert len(hit) == drifting

        def acted() -> bool:
            return any(r["status"] == "succeeded" for r in get(c, "/v1/playbook-runs"))

        started = time.monotonic()
        run_until(sim, acted, timeout_s=60)
        assert acted(), c["log"].read_text()[-3000:]
        run_until(sim, lambda: False, timeout_s=3)  # more drifted reports: the same alert
        elapsed = time.monotonic() - started
    finally:
        sim.close()
    (alert,) = drift_alerts(c)
    assert alert["scope"] == {"model": "digits", "version": "1", "class": "host-cpu"}
    assert alert["reason"].startswith("input drift on feature f")
    assert "PSI" in alert["reason"] and f"/{DEVICES} devices" in alert["reason"]
    assert alert["occurrences"] > 1
    drifted_in_reason = int(alert["reason"].split(" devices")[0].split(" on ")[-1].split("/")[0])
    assert drifted_in_reason <= drifting  # clean devices do not report drift
    runs = {r["action"]: r for r in get(c, "/v1/playbook-runs")}
    assert set(runs) == {"notify_webhook", "open_retrain"}
    assert runs["notify_webhook"]["status"] == "succeeded"
    assert runs["notify_webhook"]["alert_id"] == alert["id"]
    assert runs["notify_webhook"]["cause"].startswith("input_drift model=digits,version=1")
    assert runs["open_retrain"]["status"] == "skipped"
    assert runs["open_retrain"]["result"].startswith("skipped: no Prefect API")
    assert [b["id"] for b in hook.bodies] == [alert["id"]]  # acted on once
    series = get(c, "/v1/series?model=digits&version=1&class=host-cpu&metric=drift_psi")
    assert series and max(p["value"] for p in series) > 0.25
    assert elapsed < 120


def test_drift_on_ten_percent_of_devices_alerts_once_and_runs_the_playbook(
    controller: dict[str, Any], webhook: Webhook
) -> None:
    check_drift_alert_and_playbook(controller, webhook, drifting=2)


def test_drift_alert_and_playbook_on_postgresql(
    pg_controller: dict[str, Any], webhook: Webhook
) -> None:
    check_drift_alert_and_playbook(pg_controller, webhook, drifting=2)


def test_an_alert_storm_is_one_alert(controller: dict[str, Any], webhook: Webhook) -> None:
    check_drift_alert_and_playbook(controller, webhook, drifting=DEVICES)


def test_a_device_sending_garbage_statistics_gets_422_and_is_counted(
    controller: dict[str, Any], webhook: Webhook
) -> None:
    base = controller["base"]
    token = httpx.post(
        f"{base}/v1/enrolment-tokens", json={"uses": 1}, headers=ADMIN_HEADERS
    ).json()["token"]
    r = httpx.post(
        f"{base}/v1/enrol",
        json={"token": token, "device_id": "broken-1", "hardware_class": "host-cpu"},
    )
    credential = r.json()["credential"]
    report = {
        "seq": 1,
        "buffer_id": "b",
        "model": "digits",
        "version": "1",
        "window_start": 0,
        "window_end": 1,
        "inferences": 10,
        "errors": 0,
        "latency_ms": {"bounds_ms": [0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000],
                       "counts": [0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0]},
        "input_stats": {"count": 10, "features_tracked": 2, "mean": [float("nan"), 0.0],
                        "std": [1.0, 1.0]},
    }  # fmt: skip
    for _ in range(3):
        r = httpx.post(
            f"{base}/v1/devices/broken-1/telemetry",
            content=json.dumps({"reports": [report]}),
            headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
        )
        assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
    engine = db.make_engine(controller["db_url"])
    try:
        with db.make_sessionmaker(engine)() as session:
            assert stored_events.rejected_counts(session) == {"broken-1": 3}
    finally:
        engine.dispose()
