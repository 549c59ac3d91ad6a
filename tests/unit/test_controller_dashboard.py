"""The dashboard on a tmp SQLite: sign-in with the admin token, the overview panels, the paginated
device table, and each bad input answered with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_controller_builders import (
    ADMIN,
    ADMIN_HEADERS,
    Fleet,
    report,
    settings,
)

from fleet.controller.api.app import create_app
from fleet.controller.dashboard import pages
from fleet.controller.dashboard.routes import MAX_LOGIN_BODY, SESSION_TTL_S
from fleet.controller.storage import overview


def sign_in(client: TestClient, token: str = ADMIN) -> int:
    r = client.post(
        "/dashboard/login",
        content=f"token={token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    return r.status_code


def test_dashboard_needs_sign_in_and_sets_a_cookie_without_the_token(fleet: Fleet) -> None:
    r = fleet.client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert sign_in(fleet.client) == 303
    cookie = fleet.client.cookies.get("edgeloop_dashboard")
    assert cookie and ADMIN not in cookie
    page = fleet.client.get("/dashboard")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    fleet.client.post("/dashboard/logout")
    assert fleet.client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_session_ends_at_sign_out_even_for_a_copied_cookie_and_after_its_ttl(
    fleet: Fleet,
) -> None:
    def page_with(cookie: str) -> int:
        fleet.client.cookies.clear()
        fleet.client.cookies.set("edgeloop_dashboard", cookie, path="/dashboard")
        return fleet.client.get("/dashboard", follow_redirects=False).status_code

    fleet.clock.at(0)
    assert sign_in(fleet.client) == 303
    copied = fleet.client.cookies.get("edgeloop_dashboard")
    assert copied and page_with(copied) == 200
    fleet.client.post("/dashboard/logout", follow_redirects=False)
    assert page_with(copied) == 303  # revoked, not only deleted from this browser

    fleet.client.cookies.clear()
    assert sign_in(fleet.client) == 303
    fresh = fleet.client.cookies.get("edgeloop_dashboard")
    assert fresh and page_with(fresh) == 200
    fleet.clock.at(SESSION_TTL_S - 1)
    assert page_with(fresh) == 200
    fleet.clock.at(SESSION_TTL_S)
    assert page_with(fresh) == 303  # expired
    expires, session_id, mac = fresh.split(".")
    forged = f"{int(expires) + 3600}.{session_id}.{mac}"  # a later expiry without the key
    assert page_with(forged) == 303


def test_a_sign_in_form_over_the_limit_is_refused_unread(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/dashboard/login",
        content="token=" + "x" * MAX_LOGIN_BODY,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413 and f"over {MAX_LOGIN_BODY} bytes" in r.text


def test_wrong_token_is_refused_with_a_message(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/dashboard/login",
        content="token=nope",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 401 and "wrong admin token" in r.text
    assert "edgeloop_dashboard" not in fleet.client.cookies


def test_without_an_admin_token_the_dashboard_is_off(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path).model_copy(update={"admin_token": ""}))
    with TestClient(app) as client:
        r = client.get("/dashboard/login")
        assert r.status_code == 503 and "EDGELOOP_FLEET_ADMIN_TOKEN" in r.text
        assert sign_in(client, "") == 503
        assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_overview_shows_devices_and_charts(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-a")
    fleet.enrol("dev-b", "edge-small")
    r = fleet.client.post(
        "/v1/devices/dev-a/telemetry",
        json={"reports": [report(1, "7", latency_ms=3.0)]},
        headers={"Authorization": f"Bearer {credential}"},
    )
    assert r.status_code == 200
    page = fleet.client.get("/dashboard", headers=ADMIN_HEADERS).text
    assert "2 devices enrolled, 1 online" in page
    assert "host-cpu</a></td><td>7</td><td>1</td><td>0</td><td>0</td>" in page
    assert "p95 latency per version and class" in page and "v7 host-cpu" in page
    assert "no rollouts yet" in page
    assert "alerts" in page and "playbook" in page.lower()


def test_device_table_paginates(fleet: Fleet) -> None:
    token = fleet.token(uses=30)
    for i in range(25):
        fleet.enrol(f"dev-{i:02d}", token=token)
    first = fleet.client.get("/dashboard/devices?size=10", headers=ADMIN_HEADERS).text
    assert "page 1 of 3 (25 devices)" in first and "dev-00" in first and "dev-10" not in first
    third = fleet.client.get("/dashboard/devices?size=10&page=3", headers=ADMIN_HEADERS).text
    assert "dev-24" in third and "id='next'" not in third and "id='prev'" in third
    fleet.enrol("dev-edge", "edge-small")
    overview = fleet.client.get("/dashboard", headers=ADMIN_HEADERS).text
    assert "href='/dashboard/devices?hardware_class=edge-small'" in overview
    edge = fleet.client.get("/dashboard/devices?hardware_class=edge-small", headers=ADMIN_HEADERS)
    assert "page 1 of 1 (1 devices)" in edge.text and "dev-edge" in edge.text


def test_page_past_the_end_names_the_last_page(fleet: Fleet) -> None:
    fleet.enrol("dev-a")
    r = fleet.client.get("/dashboard/devices?page=4", headers=ADMIN_HEADERS)
    assert r.status_code == 404 and "page 4 is past the last page (1)" in r.text


def test_page_size_out_of_range_is_refused(fleet: Fleet) -> None:
    r = fleet.client.get("/dashboard/devices?size=100000", headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "size" in r.text


def test_database_text_is_escaped(fleet: Fleet) -> None:
    r = fleet.client.post(
        "/v1/enrol",
        json={
            "token": fleet.token(),
            "device_id": "dev-x",
            "hardware_class": "host-cpu",
            "labels": {"site": "<script>alert(1)</script>"},
        },
    )
    assert r.status_code == 200, r.text
    page = fleet.client.get("/dashboard/devices", headers=ADMIN_HEADERS).text
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_alerts_playbook_runs_and_drift_are_shown(fleet: Fleet) -> None:
    from fleet.controller.observe import alerts
    from fleet.controller.storage.db import BaselineRow
    from fleet.controller.storage.observe_tables import PlaybookRunRow, SeriesPointRow

    now = fleet.clock()
    with fleet.app.state.sessions() as session:
        session.add(BaselineRow(model="churn", version="4", updated_at=now))
        alert = alerts.raise_alert(
            session,
            kind="input_drift",
            scope={"model": "churn", "version": "4"},
            value=0.41,
            threshold=0.2,
            reason="PSI 0.41 on px_3 above 0.2",
            now=now,
        )
        assert alert is not None
        session.add(
            PlaybookRunRow(
                playbook="drift-retrain", alert_id=alert.id, action="open_retrain",
                cause="alert input_drift churn v4", status="done", result="flow run 7",
                attempts=1, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        for i, psi in enumerate((0.05, 0.41)):
            session.add(
                SeriesPointRow(
                    model="churn", version="4", hardware_class="host-cpu", label="*",
                    metric="drift_psi", window_end=fleet.clock.at(60 * i), value=psi,
                    devices=3, samples=30,
                )
            )  # fmt: skip
        session.commit()
    page = fleet.client.get("/dashboard", headers=ADMIN_HEADERS).text
    alerts_html = page[page.index("id='alerts'") : page.index("id='playbooks'")]
    assert "input_drift" in alerts_html and "PSI 0.41 on px_3 above 0.2" in alerts_html
    runs_html = page[page.index("id='playbooks'") :]
    assert "drift-retrain" in runs_html and "flow run 7" in runs_html
    assert "churn v4 host-cpu" in page  # the drift chart's series


def test_a_quarantined_device_shows_as_quarantined(fleet: Fleet) -> None:
    from fleet.controller.storage.observe_tables import QuarantineRow

    fleet.enrol("dev-q")
    fleet.enrol("dev-ok")
    with fleet.app.state.sessions() as session:
        session.add(
            QuarantineRow(device_id="dev-q", model="churn", version="1", reason="drift",
                          created_at=fleet.clock())
        )  # fmt: skip
        session.commit()
    table = fleet.client.get("/dashboard/devices", headers=ADMIN_HEADERS).text
    assert "<td>dev-q</td>" in table and "class='quarantined'>quarantined<" in table
    assert "class='never_seen'>never_seen<" in table  # dev-ok
    page = fleet.client.get("/dashboard", headers=ADMIN_HEADERS).text
    assert "host-cpu</a></td><td>none</td><td>0</td><td>0</td><td>1</td><td>1</td>" in page


HOSTILE = """<script>alert("x")</script>'"""
HOSTILE_ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;"


def _assert_escaped(html: str, at_least: int) -> None:
    assert "<script" not in html and 'alert("x")' not in html
    assert html.count(HOSTILE_ESCAPED) >= at_least, html


def test_a_hostile_device_id_label_or_class_is_escaped_on_every_page() -> None:
    """Templates autoescape: markup and quotes from the database never reach the page as markup."""
    from datetime import timedelta

    from test_next_state import EDGE, obs, started

    from fleet.controller.rollout.decide import next_state

    line = overview.DeviceLine(
        device_id=HOSTILE, hardware_class=HOSTILE, labels={HOSTILE: HOSTILE},
        running_version=HOSTILE, desired_version="1", last_seen=None, health="online",
    )  # fmt: skip
    table = pages.devices_page(overview.DevicePage([line], page=1, size=1, total=3), HOSTILE)
    _assert_escaped(table, at_least=6)  # heading, id, class, running, the label's key and value
    assert "hardware_class=%3Cscript%3E" in table  # the pager's links keep the class, URL-encoded

    status, now = started()
    now += timedelta(seconds=10)
    rolled_back, _ = next_state(status, obs(status, now, latency_ms={EDGE: 40.0}), now)
    rolled_back = rolled_back.model_copy(update={"silent_devices": (HOSTILE,)})
    page = pages.overview_page(
        pages.OverviewData(
            now=now,
            groups=[overview.DeviceGroup(HOSTILE, HOSTILE, overview.ONLINE, 1)],
            rollouts=[rolled_back],
            reports=[],
            alerts=[{"kind": "input_drift", "scope": {"device": HOSTILE}, "reason": HOSTILE}],
            playbook_runs=[{"playbook": HOSTILE, "cause": HOSTILE}],
            drift={HOSTILE: [(-60.0, 0.1), (0.0, 0.4)]},
        )
    )
    # class and version in the group table and the bar charts, the silent device, the alert's
    # scope and reason, the playbook run, the drift series' legend
    _assert_escaped(page, at_least=10)
    assert "hardware_class=%3Cscript%3E" in page

    _assert_escaped(pages.login(HOSTILE), at_least=1)


def test_agreement_in_shadow_is_charted_per_version_and_class() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    latency = {"bounds_ms": [1.0, 2.0], "counts": [10, 0, 0]}

    def sample(
        seconds_ago: float, version: str, shadow: dict[str, object] | None
    ) -> overview.ReportSample:
        return overview.ReportSample(
            now - timedelta(seconds=seconds_ago), version, "host-cpu", latency, 10, 0, 0, 0, shadow
        )

    reports = [
        sample(100, "2", None),
        sample(50, "3", {"compared": 40, "disagreed": 10}),
        sample(49, "3", {"compared": 60, "disagreed": 0}),
    ]
    series = pages.chart_series(reports, now)
    assert series.accuracy == {}  # no label anywhere
    assert list(series.agreement) == ["v3 host-cpu"]
    ((_, agreement),) = series.agreement["v3 host-cpu"]
    assert agreement == pytest.approx(0.9)
    assert set(series.latency) == {"v2 host-cpu", "v3 host-cpu"}


def test_line_charts_have_labelled_axes_and_health_has_its_colours() -> None:
    from fleet.controller.dashboard import charts

    chart = charts.lines("p95", {"v2 host-cpu": [(-300.0, 1.0), (-10.0, 4.0)]}, " ms")
    assert [t.label for t in chart.y_ticks] == ["0 ms", "2 ms", "4 ms"]
    assert [t.label for t in chart.x_ticks] == ["-5 min", "-3 min", "-107 s", "-10 s"]
    assert chart.y_ticks[0].at > chart.y_ticks[-1].at  # 0 at the bottom
    bars = charts.bars("by health", {"online": 3, "quarantined": 1}, pages.HEALTH_COLOURS)
    assert [b.colour for b in bars.bars] == ["#16a34a", "#dc2626"]


def test_one_timestamp_format_and_folded_reasons() -> None:
    from datetime import UTC, datetime

    assert pages.cell("2026-12-07T03:14:15.123456+00:00") == "2026-12-07 03:14:15 UTC"
    assert pages.cell(datetime(2026, 12, 7, 3, 14, 15, tzinfo=UTC)) == "2026-12-07 03:14:15 UTC"
    assert pages.cell("not a time") == "not a time"
    long = "gate agreement failed on host-cpu; " + "details " * 50
    assert pages.summary(long) == "gate agreement failed on host-cpu;"
    assert pages.summary("short") == "short"
    assert pages.summary("x" * 500).endswith("…") and len(pages.summary("x" * 500)) == 160
