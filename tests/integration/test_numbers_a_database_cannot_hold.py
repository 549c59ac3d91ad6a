"""Numbers no database column holds, sent to a real controller process on SQLite and PostgreSQL as a
hostile or broken device or admin client would: each is a 422 naming the field, never a 500, and
nothing is stored; a long label is refused at enrolment instead of breaking every observation pass."""

from __future__ import annotations

import json

import httpx
import pytest
from servers import ADMIN_HEADERS

from fleet.shared.latency import LATENCY_BOUNDS_MS

pytestmark = pytest.mark.integration

HUGE = 2**70


def report(**changes: object) -> dict[str, object]:
    return {
        "seq": 1, "buffer_id": "b", "version": "1", "window_start": 0.0, "window_end": 1.0,
        "inferences": 1, "errors": 0,
        "latency_ms": {"counts": [1] + [0] * len(LATENCY_BOUNDS_MS)}, **changes,
    }  # fmt: skip


def enrolled(base: str, **labels: str) -> tuple[int, dict[str, str]]:
    r = httpx.post(f"{base}/v1/enrolment-tokens", json={"uses": 1}, headers=ADMIN_HEADERS)
    body = {"token": r.json()["token"], "device_id": "d-1", "hardware_class": "host-cpu"}
    answer = httpx.post(f"{base}/v1/enrol", json={**body, "labels": labels})
    credential = answer.json().get("credential", "") if answer.status_code == 200 else ""
    return answer.status_code, {"Authorization": f"Bearer {credential}"}


def test_out_of_range_numbers_are_422_and_store_nothing(controller_on_each_db: str) -> None:
    base = controller_on_each_db
    status, _ = enrolled(base, site="s" * 300)
    assert status == 422  # before: enrolled, then every observation pass failed on PostgreSQL
    status, device = enrolled(base, site="berlin")
    assert status == 200  # the same id: the refused enrolment left nothing behind
    telemetry = f"{base}/v1/devices/d-1/telemetry"
    hostile = {
        "seq": report(seq=2**63),
        "dropped_total": report(dropped_total=2**64),
        "window_end": report(
            window_end=float("inf")
        ),  # the literal Infinity, as json.dumps writes it
        "input_stats": report(input_stats={"count": HUGE, "mean": [], "std": []}),
        "1e400": report(input_stats={"count": 1, "mean": [1e400], "std": [0.0]}),
    }
    for name, body in hostile.items():
        r = httpx.post(
            telemetry,
            content=json.dumps({"reports": [body]}),
            headers={**device, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (name, r.status_code, r.text)
    r = httpx.get(f"{base}/v1/devices/d-1/desired", params={"revision": HUGE}, headers=device)
    assert r.status_code == 422, r.text
    for path in ("/v1/alerts", "/v1/playbook-runs"):
        r = httpx.get(f"{base}{path}", params={"offset": HUGE}, headers=ADMIN_HEADERS)
        assert r.status_code == 422 and "offset" in r.text, (path, r.text)
    ok = httpx.post(telemetry, json={"reports": [report()]}, headers=device)
    # stored now, not a duplicate: no refused report with seq 1 was stored before it
    assert ok.status_code == 200 and ok.json()["accepted"] == [1]
