"""``GET /metrics`` on a tmp SQLite: fleet series from the database, counters that advance by the
reports stored since the previous scrape, and rejected telemetry counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_controller_builders import ADMIN_HEADERS, Clock, Fleet, make_fleet, policy, report

SCRAPER = {"Authorization": "Bearer scraper-token-0123456789"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with make_fleet(tmp_path, metrics_token="scraper-token-0123456789") as client:
        clock = client.app.state.clock  # type: ignore[attr-defined]
        assert isinstance(clock, Clock)
        yield Fleet(client=client, clock=clock, tmp=tmp_path)


def scrape(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = fleet.client.get("/metrics", headers=SCRAPER)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def send(fleet: Fleet, credential: str, device: str, *reports: dict[str, object]) -> int:
    r = fleet.client.post(
        f"/v1/devices/{device}/telemetry",
        json={"reports": list(reports)},
        headers={"Authorization": f"Bearer {credential}"},
    )
    return r.status_code


def test_metrics_count_devices_telemetry_and_rejections(fleet: Fleet) -> None:
    a = fleet.enrol("dev-a")
    fleet.enrol("dev-b", "edge-small")
    assert send(fleet, a, "dev-a", report(1, "1", inferences=200, errors=2, labels=10)) == 200
    fleet.clock.at(5)  # reports count once they are SETTLE_S old
    m = scrape(fleet)
    key = (("hardware_class", "host-cpu"), ("model", "churn"), ("version", "1"))
    assert m[("edgeloop_fleet_telemetry_inferences_total", key)] == 200
    assert m[("edgeloop_fleet_telemetry_errors_total", key)] == 2
    assert m[("edgeloop_fleet_telemetry_reports_total", key)] == 1
    device = (("hardware_class", "host-cpu"), ("health", "online"), ("version", "1"))
    assert m[("edgeloop_fleet_devices", device)] == 1
    silent = (("hardware_class", "edge-small"), ("health", "never_seen"), ("version", "none"))
    assert m[("edgeloop_fleet_devices", silent)] == 1
    assert m[("edgeloop_fleet_devices_online", ())] == 1
    inf = (("hardware_class", "host-cpu"), ("le", "+Inf"), ("version", "1"))
    assert m[("edgeloop_fleet_inference_latency_ms_bucket", inf)] == 200

    assert send(fleet, a, "dev-a", report(2, "1", inferences=50)) == 200
    assert send(fleet, a, "dev-a", {**report(3, "1"), "inferences": -1}) == 422
    m = scrape(fleet)  # report 2 is not settled yet
    assert m[("edgeloop_fleet_telemetry_inferences_total", key)] == 200
    assert m[("edgeloop_fleet_telemetry_rejected_batches_total", ())] == 1
    fleet.clock.at(10)
    for _ in range(2):  # later scrapes add only what settled since the previous one, once
        m = scrape(fleet)
        assert m[("edgeloop_fleet_telemetry_inferences_total", key)] == 250
        assert m[("edgeloop_fleet_inference_latency_ms_bucket", inf)] == 250

    fleet.clock.at(3600)  # an hour later nobody has been heard from
    m = scrape(fleet)
    assert m[("edgeloop_fleet_devices_online", ())] == 0
    offline = (("hardware_class", "host-cpu"), ("health", "offline"), ("version", "1"))
    assert m[("edgeloop_fleet_devices", offline)] == 1


def test_metrics_show_rollouts_by_phase_and_open_rollout_stage(fleet: Fleet) -> None:
    fleet.enrol("dev-a")
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    r = fleet.client.post(
        "/v1/rollouts",
        json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy()},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["rollout_id"]
    assert fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success
    m = scrape(fleet)
    assert m[("edgeloop_rollouts", (("phase", "progressing"),))] == 1
    assert m[("edgeloop_rollouts", (("phase", "rolled_back"),))] == 0
    assert m[("edgeloop_rollouts_rolled_back_total", ())] == 0
    labels = (("model", "churn"), ("rollout_id", rollout_id), ("version", "2"))
    assert m[("edgeloop_rollout_stage", labels)] == 1


def test_metrics_count_open_alerts_and_playbook_runs(fleet: Fleet) -> None:
    from fleet.controller.observe import alerts
    from fleet.controller.storage.observe_tables import PlaybookRunRow

    now = fleet.clock()
    with fleet.app.state.sessions() as session:
        alert = alerts.raise_alert(
            session, kind="input_drift", scope={"model": "churn"}, value=0.5, threshold=0.2,
            reason="PSI 0.5", now=now,
        )  # fmt: skip
        assert alert is not None
        session.add(
            PlaybookRunRow(
                playbook="p", alert_id=alert.id, action="pause_rollout", cause="c",
                status="failed", result="r", attempts=3, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        session.commit()
    m = scrape(fleet)
    assert m[("edgeloop_alerts_open", (("kind", "input_drift"),))] == 1
    runs = (("action", "pause_rollout"), ("status", "failed"))
    assert m[("edgeloop_playbook_runs", runs)] == 1


def test_metrics_are_for_the_scraper_token_or_the_admin_token(fleet: Fleet) -> None:
    assert fleet.client.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert fleet.client.get("/metrics", headers=wrong).status_code == 401
    assert fleet.client.get("/metrics", headers=ADMIN_HEADERS).status_code == 200
    assert fleet.client.get("/metrics", headers=SCRAPER).status_code == 200
    # the scraper's token reads metrics and nothing else
    assert fleet.client.get("/v1/rollouts", headers=SCRAPER).status_code == 401
