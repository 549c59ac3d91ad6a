"""Enrolment tokens against a real controller process (uvicorn, SQLite and PostgreSQL): a token's
uses are taken by the database, so many devices racing on one single-use token enrol one; a refusal
for a device id that is taken spends the use too, so a token cannot probe device ids."""

from __future__ import annotations

import threading

import httpx
import pytest
from servers import ADMIN_HEADERS

pytestmark = pytest.mark.integration

RACERS = 8


@pytest.fixture
def controller(controller_on_each_db: str) -> str:
    return controller_on_each_db


def token(base: str, uses: int = 1) -> str:
    r = httpx.post(f"{base}/v1/enrolment-tokens", json={"uses": uses}, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def enrol(base: str, secret: str, device_id: str) -> int:
    body = {"token": secret, "device_id": device_id, "hardware_class": "host-cpu"}
    return httpx.post(f"{base}/v1/enrol", json=body, timeout=30).status_code


def race(base: str, secret: str, name: str) -> list[int]:
    """RACERS devices enrol with ``secret`` at once; their answers."""
    start = threading.Barrier(RACERS)
    answers: list[int] = []

    def one(i: int) -> None:
        start.wait()
        answers.append(enrol(base, secret, f"{name}-{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_racing_devices_enrol_once_per_use(controller: str) -> None:
    for round_, uses in enumerate((1, 1, 1, 3)):
        answers = race(controller, token(controller, uses), f"race-{round_}")
        assert sorted(answers) == sorted([200] * uses + [401] * (RACERS - uses)), (uses, answers)


def test_a_taken_device_id_spends_the_use(controller: str) -> None:
    assert enrol(controller, token(controller), "taken") == 200
    once = token(controller)
    assert enrol(controller, once, "taken") == 409
    assert enrol(controller, once, "free") == 401  # the 409 spent it


def test_a_prefix_bound_token_compares_the_prefix_as_written(controller: str) -> None:
    """On either database: ``_`` and ``%`` are no wildcards, and only ids that begin with the
    prefix enrol."""
    r = httpx.post(
        f"{controller}/v1/enrolment-tokens",
        json={"uses": 5, "device_prefix": "cam_"},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 200, r.text
    secret = str(r.json()["token"])
    for refused in ["camX1", "cam", "site-cam_1", "CAM_1"]:
        assert enrol(controller, secret, refused) == 401, refused
    assert enrol(controller, secret, "cam_1") == 200
