"""Forged reports through a real controller's telemetry API (uvicorn; SQLite, and two replicas on one
PostgreSQL database), sent as an attacker holding device credentials would send them.

- One device alone, reporting input drift and an error rate going through the roof for versions it
  made up, raises no alert and so runs no playbook (``alert_min_devices``), while two devices
  reporting the same on another version raise both alerts and the playbooks act: the same pass, the
  same thresholds, so the silence is the minimum's and not a detector asleep.
- Two colluding devices inventing versions raise one input-drift alert per version; the shipped
  ``playbooks.yaml`` pauses rollouts and opens retraining for at most three alerts of the model per
  hour, and records the others as ``limited`` with the reason, on one controller and across two
  replicas sharing the database.

Devices that were never targeted may report what they run, which is what lets them invent versions.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import ADMIN_HEADERS, REPO, uvicorn_controller, write_public_key

from fleet.shared.latency import LATENCY_BOUNDS_MS, LatencyHistogram

pytestmark = pytest.mark.integration

MODEL = "digits"
DRIFT = {"kind": "input_drift", "value": 0.9, "threshold": 0.25, "window_s": 5, "feature": "f7"}
ANOMALY_BOOK = (
    "  - name: error-rate\n"
    "    trigger: {kind: error_rate_anomaly}\n"
    "    actions: [{action: pause_rollout}]\n"
)
OBSERVE = {
    "EDGELOOP_FLEET_OBSERVE_PERIOD_S": "0.5",
    "EDGELOOP_FLEET_OBSERVE_WINDOW_S": "3",
    "EDGELOOP_FLEET_OBSERVE_ANOMALY_MIN_HISTORY": "3",
}


class Device:
    """An enrolled device's credential, and reports it makes up."""

    seqs = itertools.count(1)

    def __init__(self, base: str, device_id: str) -> None:
        self.device_id = device_id
        token = admin(base, "POST", "/v1/enrolment-tokens", json={"uses": 1})["token"]
        r = httpx.post(
            f"{base}/v1/enrol",
            json={"token": token, "device_id": device_id, "hardware_class": "host-cpu"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        self.headers = {"Authorization": f"Bearer {r.json()['credential']}"}

    def send(self, base: str, versions: list[str], *, errors: int, drift: bool = False) -> None:
        hist = LatencyHistogram.of([2.0] * 200, LATENCY_BOUNDS_MS)
        reports = [
            {
                "seq": next(self.seqs), "buffer_id": "forged", "model": MODEL, "version": v,
                "window_start": 0.0, "window_end": 1.0, "inferences": 200, "errors": errors,
                "latency_ms": {"bounds_ms": list(hist.bounds_ms), "counts": list(hist.counts)},
                "events": [DRIFT] if drift else [],
            }
            for v in versions
        ]  # fmt: skip
        r = httpx.post(
            f"{base}/v1/devices/{self.device_id}/telemetry",
            json={"reports": reports},
            headers=self.headers,
            timeout=30,
        )
        assert r.status_code == 200 and len(r.json()["accepted"]) == len(reports), r.text


def admin(base: str, method: str, path: str, **kwargs: Any) -> Any:
    r = httpx.request(method, f"{base}{path}", headers=ADMIN_HEADERS, timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def alerts(base: str) -> list[dict[str, Any]]:
    return list(admin(base, "GET", "/v1/alerts?status=all&limit=1000"))


def runs(base: str) -> list[dict[str, Any]]:
    return list(admin(base, "GET", "/v1/playbook-runs?limit=1000"))


def wait_for(what: str, check: Callable[[], Any], log: Path, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"no {what} after {timeout_s} s: {log.read_text()[-3000:]}")


def controllers(
    tmp: Path, db_url: str | None, replicas: int, playbooks: str
) -> Iterator[list[str]]:
    """``replicas`` controller processes on one database, each running the observation pass with
    ``playbooks``; started one after the other (the first migrates the database)."""
    key = write_public_key(Ed25519PrivateKey.generate(), tmp / "k.pem")
    (tmp / "playbooks.yaml").write_text(playbooks)
    with ExitStack() as stack:
        bases = []
        for i in range(replicas):
            root = tmp / f"replica-{i}"
            root.mkdir()
            base, db_url = stack.enter_context(
                uvicorn_controller(
                    root, key, db_url or f"sqlite:///{tmp / 'fleet.db'}", **OBSERVE,
                    EDGELOOP_FLEET_OBSERVE_PLAYBOOKS_PATH=str(tmp / "playbooks.yaml"),
                )
            )  # fmt: skip
            bases.append(base)
        yield bases


def shipped() -> str:
    return (REPO / "playbooks.yaml").read_text()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[list[str]]:
    """One controller (SQLite) with the shipped playbooks and one acting on error-rate anomalies."""
    yield from controllers(tmp_path, None, 1, shipped() + ANOMALY_BOOK)


def test_one_device_alone_raises_no_alert_and_runs_no_playbook(
    watched: list[str], tmp_path: Path
) -> None:
    (base,) = watched
    log = tmp_path / "replica-0" / "uvicorn.log"
    liar = Device(base, "liar")
    twins = [Device(base, f"twin-{i}") for i in range(2)]
    forged = ["forged-1", "forged-2", "forged-3"]
    started = time.monotonic()
    while time.monotonic() - started < 3:  # a steady 1% error rate: the series' history
        liar.send(base, forged, errors=2)
        for twin in twins:
            twin.send(base, ["control"], errors=2)
        time.sleep(0.2)

    def both_control_alerts() -> bool:
        liar.send(base, forged, errors=180, drift=True)
        for twin in twins:
            twin.send(base, ["control"], errors=180, drift=True)
        kinds = {a["kind"] for a in alerts(base) if a["scope"].get("version") == "control"}
        return kinds == {"input_drift", "error_rate_anomaly"}

    wait_for("input_drift and error_rate_anomaly alerts on the control version",
             both_control_alerts, log)  # fmt: skip
    wait_for("playbook runs on the control alerts", lambda: len(runs(base)) >= 3, log)
    for _ in range(8):  # the liar keeps at it past the moment two devices were enough
        liar.send(base, forged, errors=180, drift=True)
        time.sleep(0.25)

    raised = alerts(base)
    assert {a["scope"]["version"] for a in raised} == {"control"}, raised
    assert all("2/2 devices" in a["reason"] or ", 2 devices)" in a["reason"] for a in raised)
    control = {a["id"] for a in raised}
    acted = runs(base)
    assert {r["alert_id"] for r in acted} == control, acted
    assert sorted((r["playbook"], r["action"]) for r in acted) == [
        ("error-rate", "pause_rollout"),
        ("input-drift", "open_retrain"),
        ("input-drift", "pause_rollout"),
    ]
    series = admin(base, "GET", f"/v1/series?model={MODEL}&version=forged-1&metric=error_rate")
    assert series and max(p["value"] for p in series) > 0.5  # stored, and seen: one device's


@pytest.fixture(params=["sqlite", "postgresql-two-replicas"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The shipped playbooks on one controller (SQLite), or on two replicas sharing PostgreSQL."""
    if request.param == "sqlite":
        yield from controllers(tmp_path, None, 1, shipped())
    else:
        db_url = request.getfixturevalue("postgres_db")
        yield from controllers(tmp_path, db_url, 2, shipped())


def test_colluding_devices_inventing_versions_are_acted_on_three_times_an_hour(
    fleet: list[str], tmp_path: Path
) -> None:
    base = fleet[0]
    log = tmp_path / "replica-0" / "uvicorn.log"
    bots = [Device(base, f"bot-{i}") for i in range(2)]
    invented = [f"fake-{i}" for i in range(8)]

    def every_alert_scheduled() -> bool:
        for i, bot in enumerate(bots):  # each replica takes some of the forged telemetry
            bot.send(fleet[i % len(fleet)], invented, errors=0, drift=True)
        drift = [a for a in alerts(base) if a["kind"] == "input_drift"]
        versions = {a["scope"]["version"] for a in drift}
        return versions == set(invented) and len(runs(base)) == 2 * len(drift)

    wait_for("an alert and two runs per invented version", every_alert_scheduled, log)
    time.sleep(2)  # a few more passes on every replica: nothing more is scheduled or performed
    drift = {a["id"]: a for a in alerts(base) if a["kind"] == "input_drift"}
    assert {a["scope"]["version"] for a in drift.values()} == set(invented)
    if len(fleet) == 1:
        assert len(drift) == len(invented)
    # else two replicas' passes may both open the first alert of a version (they deduplicate by
    # reading the open alerts first): more alerts to act on, and the limit holds all the same
    recorded = runs(base)
    assert len(recorded) == 2 * len(drift)  # once per alert and action, whatever the replicas
    by_alert: dict[int, dict[str, dict[str, Any]]] = {}
    for r in recorded:
        assert r["playbook"] == "input-drift"
        by_alert.setdefault(r["alert_id"], {})[r["action"]] = r
    assert set(by_alert) == set(drift)
    performed = sorted(a for a, acts in by_alert.items() if acts["pause_rollout"]["attempts"])
    limited = sorted(
        a for a, acts in by_alert.items() if acts["pause_rollout"]["status"] == "limited"
    )
    assert len(performed) == 3 and len(limited) == len(drift) - 3, recorded
    for alert_id in performed:
        pause, retrain = by_alert[alert_id]["pause_rollout"], by_alert[alert_id]["open_retrain"]
        assert pause["result"] == f"skipped: no progressing rollout of {MODEL}"
        assert retrain["result"].startswith("skipped: no Prefect API")
    for alert_id in limited:
        for action in ("pause_rollout", "open_retrain"):
            run_ = by_alert[alert_id][action]
            assert (run_["status"], run_["attempts"], run_["next_attempt_at"]) == (
                "limited",
                0,
                None,
            )
            assert run_["result"] == (
                f"limited: playbook input-drift already acted on 3 alerts of model {MODEL} "
                "within 3600 s (max_runs_per_model 3); not performed"
            )
    page = httpx.get(f"{base}/dashboard", headers=ADMIN_HEADERS, timeout=30).text
    assert page.count("limited: playbook input-drift") == 2 * len(limited)
