"""The dashboard on a tmp SQLite: sign-in with the admin token, the overview panels, the paginated
device table, and each bad input answered with one clear message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_controller_builders import (
    ADMIN,
    ADMIN_HEADERS,
    Clock,
    Fleet,
    make_fleet,
    report,
    settings,
)

from fleet.controller.app import create_app


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with make_fleet(tmp_path) as client:
        clock = client.app.state.clock  # type: ignore[attr-defined]
        assert isinstance(clock, Clock)
        yield Fleet(client=client, clock=clock, tmp=tmp_path)


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
    assert fleet.client.get("/dashboard").status_code == 200
    fleet.client.post("/dashboard/logout")
    assert fleet.client.get("/dashboard", follow_redirects=False).status_code == 303


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
    assert "<td>host-cpu</td><td>7</td><td>1</td><td>0</td><td>0</td>" in page
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
