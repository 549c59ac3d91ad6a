"""The controller's body limits (fleet.controller.api.body_limits): what each route takes, that the
largest batch an agent sends still fits, and that a 413 is an answer the OpenAPI document lists."""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_controller_api import assert_as_documented
from test_controller_builders import ADMIN_HEADERS, Fleet, make_fleet, report

from fleet.agent.telemetry import FeedbackPair, TelemetryWindow
from fleet.controller.api import body_limits
from fleet.controller.settings import (
    FIELD_SAMPLES_MAX_BODY_BYTES,
    REPORT_WIRE_BYTES,
    TELEMETRY_MAX_BODY_BYTES,
    FleetSettings,
)
from fleet.shared.body_limit import LimitBodySize, MiB, Receive, Scope, Send
from fleet.shared.protocol import (
    MAX_FIELD_BATCH_VALUES,
    MAX_FIELD_SAMPLES_PER_BATCH,
    MAX_REPORTS_PER_BATCH,
    MAX_SHADOW_CLASSES,
    FieldSample,
    FieldSampleBatch,
    TelemetryBatch,
    TelemetryReport,
)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A controller that takes 64 KiB of body, and 1 MiB on the telemetry route."""
    with make_fleet(tmp_path, max_body_bytes=64 * 1024, telemetry_max_body_bytes=MiB) as client:
        yield Fleet(client=client, clock=client.app.state.clock, tmp=tmp_path)  # type: ignore[attr-defined]


async def no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("only limit_for is called")


def largest_agent_report() -> TelemetryReport:
    """A report as full as an agent's window makes it: every feedback pair and tracked feature it
    keeps, a shadow report of the most classes a side, the most events and refusals, long names."""
    caps = inspect.signature(TelemetryWindow).parameters
    max_feedback, max_features = caps["max_feedback"].default, caps["max_features"].default
    rng = np.random.default_rng(0)
    window = TelemetryWindow(max_feedback=max_feedback, max_features=max_features)
    for _ in range(3):
        rows = rng.normal(scale=1e3, size=(50, max_features + 10))
        window.record_inference(12.5, rows=len(rows), inputs=rows)
    for i in range(max_feedback):
        window.record_feedback(FeedbackPair(uuid.uuid4().hex, 99_999 - i, 99_999))
    name = "m" * 128
    raw = window.flush("v" * 128, model=name, variant="x" * 128)
    classes = {str(99_000 + i): 100_000_000 for i in range(MAX_SHADOW_CLASSES)}
    event = {"kind": "input_drift", "value": 0.123456789, "threshold": 0.2, "window_s": 60.5}
    refusal = {"version": "v" * 128, "variant": "x" * 128, "reason": "smoke", "detail": "d" * 500}
    return TelemetryReport.model_validate(
        {
            **raw,
            "seq": 2**62,
            "buffer_id": uuid.uuid4().hex,
            "dropped_total": 2**62,
            "shadow": {
                "against": "s" * 128,
                **dict.fromkeys(("compared", "disagreed"), 100),
                "busy_ms": 123456.789,
                "canary_classes": classes,
                "stable_classes": classes,
            },
            "events": [{**event, "feature": "f" * 128}] * 64,
            "refusals": [refusal] * 16,
        }
    )


def test_the_largest_report_an_agent_builds_fits_its_share_of_the_telemetry_limit() -> None:
    one = largest_agent_report()
    size = len(one.model_dump_json())
    assert 100_000 < size <= REPORT_WIRE_BYTES  # about 172 KiB
    full = len(TelemetryBatch(reports=[one]).model_dump_json()) + (MAX_REPORTS_PER_BATCH - 1) * (
        size + 1
    )
    assert full <= TELEMETRY_MAX_BODY_BYTES == FleetSettings().telemetry_max_body_bytes


def test_a_full_batch_of_field_samples_of_the_longest_numbers_fits_its_limit() -> None:
    per_sample = MAX_FIELD_BATCH_VALUES // MAX_FIELD_SAMPLES_PER_BATCH
    sample = FieldSample(
        model="m" * 128,
        version="v" * 128,
        features=[-2.2250738585072014e-308] * per_sample,
        predicted=99_999,
        label=99_999,
        drifted=True,
    )
    one = len(FieldSampleBatch(samples=[sample], dropped_total=2**62).model_dump_json())
    full = one + (MAX_FIELD_SAMPLES_PER_BATCH - 1) * (len(sample.model_dump_json()) + 1)
    assert full <= FIELD_SAMPLES_MAX_BODY_BYTES == FleetSettings().field_samples_max_body_bytes
    assert 32 * MiB > FIELD_SAMPLES_MAX_BODY_BYTES


def test_each_route_has_its_limit_and_the_rest_the_default() -> None:
    settings = FleetSettings()
    limits = LimitBodySize(no_app, limits=body_limits.controller_limits(settings))
    assert settings.max_body_bytes == 1 * MiB
    assert limits.limit_for("/v1/devices/d-1/telemetry").max_bytes == TELEMETRY_MAX_BODY_BYTES
    assert limits.limit_for("/v1/devices/d-1/field-samples").max_bytes == (
        FIELD_SAMPLES_MAX_BODY_BYTES
    )
    for path in ("/v1/rollouts", "/v1/enrolment-tokens", "/v1/enrol", "/dashboard/login", "/x"):
        assert limits.limit_for(path).max_bytes == 1 * MiB, path
    assert TELEMETRY_MAX_BODY_BYTES < 300_000_000  # a 300 MB body is refused everywhere


def test_an_artifact_upload_route_gets_its_limit_by_adding_its_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(body_limits, "ARTIFACT_UPLOAD_PATHS", ("/v1/artifacts/{model}/upload",))
    settings = FleetSettings(artifact_upload_max_body_bytes=3 * 1024 * MiB)
    limits = LimitBodySize(no_app, limits=body_limits.controller_limits(settings))
    assert limits.limit_for("/v1/artifacts/churn/upload").max_bytes == 3 * 1024 * MiB
    assert limits.limit_for("/v1/artifacts").max_bytes == 1 * MiB


def test_every_operation_that_takes_a_body_documents_the_413(fleet: Fleet) -> None:
    doc = fleet.client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in ("post", "put", "patch") or "requestBody" in operation:
                assert "413" in operation["responses"], (method, path)


def test_a_body_over_the_default_or_a_routes_own_limit_is_a_documented_413(fleet: Fleet) -> None:
    doc = fleet.client.get("/openapi.json").json()
    big = {"uses": 1, "labels": {"site": "x" * 100_000}}
    r = fleet.client.post("/v1/enrolment-tokens", json=big, headers=ADMIN_HEADERS)
    assert r.status_code == 413 and f"over {64 * 1024} bytes" in r.json()["detail"]
    assert_as_documented(doc, "/v1/enrolment-tokens", "post", r)
    credential = fleet.enrol("dev-1")

    def chunked() -> Iterator[bytes]:
        yield json.dumps({"reports": [report(1, "1")]})[:-2].encode()
        for _ in range(100):
            yield b" " * 100_000
        yield b"]}"

    r = fleet.client.post(
        "/v1/devices/dev-1/telemetry",
        content=chunked(),
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and f"over {MiB} bytes" in r.json()["detail"]  # 10 MB, chunked
    assert_as_documented(doc, "/v1/devices/{device_id}/telemetry", "post", r)


def test_a_telemetry_batch_over_the_default_limit_is_taken(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    batch = {"reports": [report(seq, "1", inferences=1000, labels=1000) for seq in range(1, 11)]}
    body = json.dumps(batch)
    assert 4 * 64 * 1024 < len(body) < MiB  # over the default, within the route's own limit
    r = fleet.client.post(
        "/v1/devices/dev-1/telemetry",
        content=body,
        headers={"Authorization": f"Bearer {credential}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
