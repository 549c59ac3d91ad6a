"""Builders shared by the controller tests: an app on a tmp SQLite with a fake clock, and reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from builders import REGISTRY_KEY, claim, registry_key
from fastapi.testclient import TestClient

from fleet.controller.api.app import create_app
from fleet.controller.settings import FleetSettings
from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


ADMIN = "admin-secret-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


@dataclass
class Fleet:
    client: TestClient
    clock: Clock
    tmp: Path

    @property
    def app(self) -> Any:
        return self.client.app

    def token(self, uses: int = 100, **extra: object) -> str:
        r = self.client.post(
            "/v1/enrolment-tokens", json={"uses": uses, **extra}, headers=ADMIN_HEADERS
        )
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def enrol(self, device_id: str, hardware_class: str = "host-cpu", token: str = "") -> str:
        r = self.client.post(
            "/v1/enrol",
            json={
                "token": token or self.token(),
                "device_id": device_id,
                "hardware_class": hardware_class,
            },
        )
        assert r.status_code == 200, r.text
        return str(r.json()["credential"])

    def artifact(
        self, model: str, version: str, hardware_class: str = "host-cpu", signed: bool = True
    ) -> dict[str, Any]:
        data = f"model {model} {version} {hardware_class}".encode() * 100
        variant = f"{hardware_class}-int8"
        query = claim(
            REGISTRY_KEY if signed else None, variant, data, model=model, version=version,
            hardware_class=hardware_class,
        )  # fmt: skip
        r = self.client.post("/v1/artifacts", params=query, content=data, headers=ADMIN_HEADERS)
        assert r.status_code == 200, r.text
        return {"data": data, "variant": variant, "body": r.json()}


def settings(tmp: Path, **changes: Any) -> FleetSettings:
    changes.setdefault("public_key_path", registry_key(tmp))
    changes.setdefault("artifact_dir", tmp / "artifact-store")
    return FleetSettings(
        db_url=f"sqlite:///{tmp / 'fleet.db'}",
        admin_token=ADMIN,
        reconcile_enabled=False,
        long_poll_recheck_s=0.2,
        **changes,
    )


def make_fleet(tmp: Path, **changes: Any) -> TestClient:
    return TestClient(create_app(settings(tmp, **changes), clock=Clock()))


def report(
    seq: int,
    version: str,
    *,
    inferences: int = 200,
    errors: int = 0,
    latency_ms: float = 1.0,
    labels: int = 100,
    correct: int = 95,
    buffer_id: str = "buf-1",
) -> dict[str, Any]:
    hist = LatencyHistogram.of([latency_ms] * inferences, LATENCY_BOUNDS_MS)
    feedback = [{"predicted": 1, "label": 1 if i < correct else 0} for i in range(labels)]
    return {
        "seq": seq,
        "buffer_id": buffer_id,
        "model": "churn",
        "version": version,
        "variant": "host-cpu-int8",
        "window_start": 1.0,
        "window_end": 2.0,
        "inferences": inferences,
        "errors": errors,
        "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
        "feedback": feedback,
    }


def policy(fractions: tuple[float, ...] = (0.5, 1.0), p95_ms: float = 5.0) -> dict[str, Any]:
    return {
        "cohorts": {"host-cpu": {"p95_latency_ms": p95_ms}},
        "stages": [
            {
                "fraction": f,
                "bake_s": 60,
                "deadline_s": 300,
                "min_confirmed_devices": 1,
                "min_confirmed_fraction": 1.0,
                "min_inferences": 100,
                "min_feedback": 50,
            }
            for f in fractions
        ],
        "gates": {
            "max_error_rate": 0.05,
            "accuracy": {"delta": 0.02, "alpha": 0.05, "min_samples": 50},
        },
        "on_inconclusive": "fail",
        "rollback_timeout_s": 120,
    }
