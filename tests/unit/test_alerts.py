"""fleet.controller.observe.alerts (dedup, rate limit, closing, listing) and the garbage-statistics checks of
telemetry ingest (refused with 422 and counted per device), over the API's migrated database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_controller_builders import ADMIN_HEADERS, Fleet, report

from fleet.controller.observe import alerts
from fleet.controller.storage import events as stored_events
from fleet.controller.storage.observe_tables import DeviceEventRow, InputStatsRow

SCOPE = {"model": "churn", "version": "2", "class": "host-cpu"}


def raise_one(fleet: Fleet, at: float, kind: str = "input_drift", **rules: Any) -> int | None:
    with fleet.app.state.sessions() as session:
        row = alerts.raise_alert(
            session, kind=kind, scope=SCOPE, value=0.9, threshold=0.25,
            reason=f"{kind} at {at}", now=fleet.clock.at(at), rules=alerts.AlertRules(**rules),
        )  # fmt: skip
        session.commit()
        return None if row is None else row.id


def test_the_same_kind_and_scope_while_open_is_one_alert(fleet: Fleet) -> None:
    ids = {raise_one(fleet, t) for t in range(50)}
    assert len(ids) == 1
    with fleet.app.state.sessions() as session:
        (alert,) = alerts.list_alerts(session)
    assert alert["occurrences"] == 50 and alert["reason"] == "input_drift at 49"


def test_another_scope_is_another_alert(fleet: Fleet) -> None:
    raise_one(fleet, 0)
    with fleet.app.state.sessions() as session:
        alerts.raise_alert(
            session, kind="input_drift", scope={**SCOPE, "class": "edge-small"}, value=1,
            threshold=0.25, reason="x", now=fleet.clock.at(1),
        )  # fmt: skip
        session.commit()
        assert len(alerts.list_alerts(session)) == 2


def test_new_alerts_per_scope_are_rate_limited_and_the_rest_counted(fleet: Fleet) -> None:
    rules = {"max_new_per_scope": 2, "rate_window_s": 600}
    assert raise_one(fleet, 0, "a", **rules) is not None
    assert raise_one(fleet, 1, "b", **rules) is not None
    assert raise_one(fleet, 2, "c", **rules) is None
    assert raise_one(fleet, 3, "d", **rules) is None
    with fleet.app.state.sessions() as session:
        latest = alerts.list_alerts(session)[0]
        assert latest["kind"] == "b" and latest["suppressed"] == 2
    assert raise_one(fleet, 700, "c", **rules) is not None  # the window has passed


def test_quiet_alerts_close_and_a_new_finding_opens_a_new_one(fleet: Fleet) -> None:
    first = raise_one(fleet, 0)
    with fleet.app.state.sessions() as session:
        assert alerts.close_stale(session, fleet.clock.at(100), quiet_s=600) == 0
        assert alerts.close_stale(session, fleet.clock.at(601), quiet_s=600) == 1
        session.commit()
        assert alerts.list_alerts(session, status="open") == []
        assert [a["status"] for a in alerts.list_alerts(session, status="all")] == ["closed"]
    assert raise_one(fleet, 700) not in (None, first)


def test_alerts_api_pages_newest_first(fleet: Fleet) -> None:
    for i in range(5):
        with fleet.app.state.sessions() as session:
            alerts.raise_alert(
                session, kind=f"k{i}", scope={"device": f"d{i}"}, value=i, threshold=0,
                reason="r", now=fleet.clock.at(i),
            )  # fmt: skip
            session.commit()
    r = fleet.client.get("/v1/alerts?status=all&limit=2&offset=1", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    assert [a["kind"] for a in r.json()] == ["k3", "k2"]
    assert fleet.client.get("/v1/alerts").status_code == 401


def test_unknown_scope_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope keys"):
        alerts.scope_key({"colour": "red"})


# --- garbage statistics ------------------------------------------------------------------------

STATS = {"count": 20, "features": 2, "features_tracked": 2, "mean": [0.1, 0.2], "std": [1.0, 1.0]}
EVENT = {"kind": "input_drift", "value": 0.5, "threshold": 0.25, "window_s": 10, "feature": "f0"}
GARBAGE = {
    "nan_mean": ({"input_stats": {**STATS, "mean": [float("nan"), 0.2]}}, "finite"),
    "negative_count": ({"input_stats": {**STATS, "count": -3}}, "must be an integer in [0,"),
    "huge_count": ({"input_stats": {**STATS, "count": 2**64}}, "must be an integer in [0,"),
    "wrong_lengths": ({"input_stats": {**STATS, "std": [1.0]}}, "lengths disagree"),
    "negative_std": ({"input_stats": {**STATS, "std": [1.0, -1.0]}}, "std must be non-negative"),
    "psi_out_of_range": ({"events": [{**EVENT, "value": 1e6}]}, "outside"),
    "negative_psi": ({"events": [{**EVENT, "value": -0.1}]}, "outside"),
    "nan_event": ({"events": [{**EVENT, "threshold": float("inf")}]}, "must be finite"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_statistics_are_refused_with_422_and_counted(fleet: Fleet, case: str) -> None:
    extra, message = GARBAGE[case]
    credential = fleet.enrol("dev-1")
    headers = {"Authorization": f"Bearer {credential}"}
    body = {**report(1, "1"), **extra}
    for attempt in (1, 2):
        r = fleet.client.post(
            "/v1/devices/dev-1/telemetry",
            content=json.dumps({"reports": [body]}),  # NaN/Infinity literals, as a buggy device
            headers={**headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"] and "report 1" in r.json()["detail"]
        with fleet.app.state.sessions() as session:
            assert stored_events.rejected_counts(session) == {"dev-1": attempt}
    with fleet.app.state.sessions() as session:  # nothing half-stored
        assert session.query(InputStatsRow).count() == 0
        assert session.query(DeviceEventRow).count() == 0


def test_events_and_their_input_statistics_are_stored_once(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    body = {**report(1, "1"), "input_stats": STATS, "events": [EVENT]}
    for _ in range(2):  # a resent report is a duplicate: stored once
        r = fleet.client.post(
            "/v1/devices/dev-1/telemetry",
            json={"reports": [body]},
            headers={"Authorization": f"Bearer {credential}"},
        )
        assert r.status_code == 200, r.text
    quiet = {**report(2, "1"), "input_stats": STATS}  # no events: its statistics are not kept
    r = fleet.client.post(
        "/v1/devices/dev-1/telemetry",
        json={"reports": [quiet]},
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert r.status_code == 200, r.text
    with fleet.app.state.sessions() as session:
        assert session.query(InputStatsRow).count() == 1
        (event,) = session.query(DeviceEventRow).all()
        assert (event.kind, event.feature, event.value) == ("input_drift", "f0", 0.5)
        assert stored_events.rejected_counts(session) == {}
