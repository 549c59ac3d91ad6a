"""fleet.controller.observe.anomaly: the median/MAD robust z-score, with properties; and the observation
pass raising an anomaly alert (with its reason) per scope, including a site label, only when enough
distinct devices stand behind the series (one device alone, lying or broken, raises none)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_controller_builders import ADMIN_HEADERS, Fleet, report

from fleet.controller.observe.aggregate import fleet_series
from fleet.controller.observe.anomaly import MAD_TO_SIGMA, RobustZ
from fleet.controller.observe.loop import ObserveSettings, detect
from fleet.controller.storage.observe_tables import AlertRow, DeviceEventRow, SeriesPointRow

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(value=values, n=st.integers(8, 60))
def test_a_constant_series_never_alerts(value: float, n: int) -> None:
    detector = RobustZ(direction="both")
    assert not detector.is_anomaly([value] * n, value)


@given(
    base=st.floats(min_value=-100, max_value=100),
    spread=st.floats(min_value=0.5, max_value=10),
    k=st.floats(min_value=1.05, max_value=20),
    n=st.integers(8, 40),
)
def test_a_step_past_k_mad_alerts(base: float, spread: float, k: float, n: int) -> None:
    # alternating base +- spread: median = base (n even) or close, MAD = spread
    history = [base + spread * (1 if i % 2 else -1) for i in range(2 * n)]
    detector = RobustZ(threshold=3.5, direction="up", rel_scale=0.0)
    step = k * 3.5 * spread / MAD_TO_SIGMA
    assert detector.is_anomaly(history, base + step)
    assert not detector.is_anomaly(history, base + step / k * 0.9)


def test_direction_and_short_history() -> None:
    history = [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 10.0, 10.2]
    assert RobustZ(direction="down").is_anomaly(history, 0.0)
    assert not RobustZ(direction="up").is_anomaly(history, 0.0)
    assert not RobustZ(min_history=20).is_anomaly(history, 1e9)
    assert RobustZ().score(history[:3], 5.0) is None


def test_an_outlier_in_the_history_does_not_move_the_limit_much() -> None:
    history = [10.0, 10.5, 9.5, 10.0, 10.2, 9.8, 10.1, 9.9]
    limit = RobustZ().limit(history)
    assert limit is not None
    polluted = RobustZ().limit([*history[:-1], 1000.0])
    assert polluted is not None and abs(polluted - limit) < 1.0


# --- in the observation pass -------------------------------------------------------------------


def test_a_latency_step_raises_an_anomaly_alert_with_its_reason(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/v1/enrol",
        json={
            "token": fleet.token(),
            "device_id": "dev-1",
            "hardware_class": "host-cpu",
            "labels": {"site": "berlin"},
        },
    )
    headers = {"Authorization": f"Bearer {r.json()['credential']}"}
    settings = ObserveSettings(
        window_s=10, anomaly_min_history=8, playbooks_path=fleet.tmp / "x", alert_min_devices=1
    )
    raised = []
    for i in range(12):
        fleet.clock.at(10 * i + 5)
        latency = 40.0 if i == 11 else 2.0 + 0.1 * (i % 3)
        body = {"reports": [report(i + 1, "1", latency_ms=latency)]}
        assert fleet.client.post(
            "/v1/devices/dev-1/telemetry", json=body, headers=headers
        ).is_success
        with fleet.app.state.sessions() as session:
            raised.append(detect(session, fleet.clock.at(10 * i + 10), settings))
    assert all(not r for r in raised[:-1])  # steady latency: no alert
    kinds = sorted((a.kind, a.scope.get("label", "*")) for a in raised[-1])
    assert kinds == [("latency_p95_ms_anomaly", "*"), ("latency_p95_ms_anomaly", "site=berlin")]
    assert "latency_p95_ms" in raised[-1][0].reason and "robust limit" in raised[-1][0].reason
    with fleet.app.state.sessions() as session:
        points = fleet_series(session, model="churn", metric="latency_p95_ms", label="site=berlin")
        p50 = fleet_series(session, model="churn", metric="latency_p50_ms")
        p99 = fleet_series(session, model="churn", metric="latency_p99_ms")
    assert len(points) == 12 and points[-1]["value"] > points[0]["value"]
    assert p50[0]["value"] <= points[0]["value"] <= p99[0]["value"]


def test_old_observations_are_pruned_and_alerts_kept(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    event = {"kind": "input_drift", "value": 0.9, "threshold": 0.25, "window_s": 5, "feature": "f1"}
    body = {"reports": [{**report(1, "1"), "events": [event]}]}
    headers = {"Authorization": f"Bearer {credential}"}
    fleet.clock.at(5)
    assert fleet.client.post("/v1/devices/dev-1/telemetry", json=body, headers=headers).is_success
    settings = ObserveSettings(
        window_s=10, retention_s=60, playbooks_path=fleet.tmp / "x", alert_min_devices=1
    )
    with fleet.app.state.sessions() as session:
        (alert,) = detect(session, fleet.clock.at(10), settings)
        assert "feature f1: PSI 0.90" in alert.reason
        assert session.query(DeviceEventRow).count() == 1
        assert session.query(SeriesPointRow).count() > 0
        detect(session, fleet.clock.at(100), settings)  # everything is older than 60 s now
        assert session.query(DeviceEventRow).count() == 0
        assert session.query(SeriesPointRow).count() == 0
        assert session.query(AlertRow).count() == 1


def test_one_device_reporting_drift_raises_no_alert_two_do(fleet: Fleet) -> None:
    event = {"kind": "input_drift", "value": 0.9, "threshold": 0.25, "window_s": 5, "feature": "f1"}
    settings = ObserveSettings(window_s=10, playbooks_path=fleet.tmp / "x")
    credentials = {d: fleet.enrol(d) for d in ("dev-0", "dev-1")}

    def drift(at: float, devices: list[str], seq: int) -> list[AlertRow]:
        fleet.clock.at(at)
        for device_id in devices:
            body = {"reports": [{**report(seq, "1"), "events": [event]}]}
            headers = {"Authorization": f"Bearer {credentials[device_id]}"}
            r = fleet.client.post(f"/v1/devices/{device_id}/telemetry", json=body, headers=headers)
            assert r.is_success
        with fleet.app.state.sessions() as session:
            return detect(session, fleet.clock.at(at + 5), settings)

    assert drift(5, ["dev-0"], 1) == []  # one device of two: its noise, or its lie
    (alert,) = drift(25, ["dev-0", "dev-1"], 2)
    assert "on 2/2 devices" in alert.reason


def test_one_device_alone_raises_no_series_alert_two_do(fleet: Fleet) -> None:
    """The same distinct-device minimum as input drift (``alert_min_devices``): a series standing on
    one device's reports raises nothing, however far it moves; with a second device it does. And a
    device counts for a series only with numbers in it: one device sending labelled feedback beside
    another that sends none is still one device behind the accuracy."""
    settings = ObserveSettings(window_s=10, anomaly_min_history=8, playbooks_path=fleet.tmp / "x")
    credentials = {d: fleet.enrol(d) for d in ("dev-0", "dev-1", "dev-2")}

    def window(i: int, reports: dict[str, dict[str, object]]) -> list[AlertRow]:
        fleet.clock.at(10 * i + 5)
        for device_id, body in reports.items():
            headers = {"Authorization": f"Bearer {credentials[device_id]}"}
            r = fleet.client.post(
                f"/v1/devices/{device_id}/telemetry", json={"reports": [body]}, headers=headers
            )
            assert r.is_success and r.json()["accepted"] == [i + 1], r.text
        with fleet.app.state.sessions() as session:
            return detect(session, fleet.clock.at(10 * i + 10), settings)

    steady = {
        "dev-0": lambda i: report(i + 1, "7", latency_ms=2.0 + 0.1 * (i % 3), correct=95),
        "dev-2": lambda i: report(i + 1, "9", latency_ms=2.0 + 0.1 * (i % 3), labels=0),
        "dev-1": lambda i: report(i + 1, "9", latency_ms=2.0 + 0.1 * (i % 3), correct=95),
    }
    for i in range(10):
        assert window(i, {d: make(i) for d, make in steady.items()}) == []
    # dev-0 alone on version 7: its latency jumps 20x and its accuracy falls to nothing
    forged = report(11, "7", latency_ms=40.0, errors=150, correct=0)
    # dev-1 is the only device labelling version 9 (dev-2 reports no feedback): accuracy falls
    lone_label = report(11, "9", latency_ms=2.0, correct=0)
    quiet = report(11, "9", latency_ms=2.0, labels=0)
    assert window(10, {"dev-0": forged, "dev-1": lone_label, "dev-2": quiet}) == []
    # dev-1 and dev-2 together on version 9: two devices behind the latency step
    step = {d: report(12, "9", latency_ms=40.0, labels=0) for d in ("dev-1", "dev-2")}
    raised = window(11, step)
    assert {(a.kind, a.scope["version"]) for a in raised} == {("latency_p95_ms_anomaly", "9")}
    assert "2 devices" in raised[0].reason


def test_series_api_refuses_an_unknown_metric(fleet: Fleet) -> None:
    r = fleet.client.get("/v1/series?model=churn&metric=vibes", headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "unknown metric 'vibes'" in r.json()["detail"]
    r = fleet.client.get("/v1/series?model=churn&metric=error_rate", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json() == []
    assert fleet.client.get("/v1/series?model=churn&metric=error_rate").status_code == 401


def test_a_tiny_move_of_a_very_steady_series_is_not_an_anomaly() -> None:
    history = [0.10, 0.101, 0.099, 0.10, 0.102, 0.10, 0.098, 0.10, 0.101, 0.10]
    strict = RobustZ(min_change=0.0)
    assert strict.is_anomaly(history, 0.16)  # z is huge on a flat series...
    sensible = RobustZ(min_change=1.0)
    assert not sensible.is_anomaly(history, 0.16)  # ...but 0.06 ms is nothing to act on
    assert sensible.is_anomaly(history, 1.5)
    assert sensible.limit(history) == pytest.approx(1.10)


def test_series_refusals_are_documented_and_a_nul_character_is_422(fleet: Fleet) -> None:
    """The unknown-metric refusal is ``{"detail": str}`` and the document says so (it used to list
    only FastAPI's validation error); NUL in a query, which no PostgreSQL text column holds, is a
    422 on either database (it was a 500 on PostgreSQL)."""
    from test_controller_api import assert_as_documented

    doc = fleet.client.get("/openapi.json").json()
    r = fleet.client.get("/v1/series?model=churn&metric=vibes", headers=ADMIN_HEADERS)
    assert r.status_code == 422
    assert_as_documented(doc, "/v1/series", "get", r)
    for query in ("model=a%00b", "model=churn&version=a%00b", "model=churn&class=a%00b",
                  "model=churn&label=site%3Da%00b"):  # fmt: skip
        r = fleet.client.get(f"/v1/series?metric=error_rate&{query}", headers=ADMIN_HEADERS)
        assert r.status_code == 422, (query, r.text)
        assert_as_documented(doc, "/v1/series", "get", r)
    r = fleet.client.get("/v1/series?model=churn&metric=error_rate&label=site%3Dberlin",
                         headers=ADMIN_HEADERS)  # fmt: skip
    assert r.status_code == 200 and r.json() == []
