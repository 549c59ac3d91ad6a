"""Device authentication through the credential cache: bounded, short-lived, hashes only, and no
answer of the API changes because a credential was seen before; and the SQLite settings behind the
telemetry path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from test_controller_builders import Fleet, make_fleet, report

from fleet.controller.api import auth
from fleet.controller.api.auth import CredentialCache, DeviceIdentity
from fleet.controller.storage.db import make_engine
from fleet.controller.storage.store import hash_secret

ONE = DeviceIdentity(device_id="dev-1", hardware_class="host-cpu")
TWO = DeviceIdentity(device_id="dev-2", hardware_class="host-cpu")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with make_fleet(tmp_path) as client:
        yield Fleet(client=client, clock=client.app.state.clock, tmp=tmp_path)  # type: ignore[attr-defined]


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_the_cache_answers_what_was_put_and_nothing_else() -> None:
    cache = CredentialCache()
    assert cache.get("a") is None
    cache.put("a", ONE)
    assert cache.get("a") == ONE
    assert cache.get("b") is None


def test_the_cache_forgets_an_entry_after_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = CredentialCache(ttl_s=60.0)
    cache.put("a", ONE)
    now[0] = 159.9
    assert cache.get("a") == ONE
    now[0] = 160.0
    assert cache.get("a") is None
    now[0] = 1000.0
    assert cache.get("a") is None  # gone, not merely hidden


def test_the_cache_drops_the_least_recently_used_beyond_its_bound() -> None:
    cache = CredentialCache(max_entries=2)
    cache.put("a", ONE)
    cache.put("b", TWO)
    assert cache.get("a") == ONE  # "b" is now the least recently used
    cache.put("c", ONE)
    assert cache.get("b") is None
    assert cache.get("a") == ONE and cache.get("c") == ONE


def test_a_verified_credential_is_cached_by_its_hash_only(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    r = fleet.client.get("/v1/devices/dev-1/desired", headers=bearer(credential))
    assert r.status_code == 200, r.text
    cache = fleet.app.state.credential_cache
    assert cache.get(hash_secret(credential)) == ONE
    assert credential not in repr(cache._entries)


def test_a_cached_credential_changes_no_answer(fleet: Fleet) -> None:
    mine = fleet.enrol("dev-1")
    theirs = fleet.enrol("dev-2")
    body = {"reports": [report(1, "1")]}
    path = "/v1/devices/{}/telemetry"
    first = fleet.client.post(path.format("dev-1"), json=body, headers=bearer(mine))
    assert first.status_code == 200 and first.json()["accepted"] == [1]
    again = fleet.client.post(path.format("dev-1"), json=body, headers=bearer(mine))
    assert again.status_code == 200 and again.json() == {
        "accepted": [],
        "duplicates": [1],
        "refused": [],
    }
    assert (
        fleet.client.post(path.format("dev-2"), json=body, headers=bearer(mine)).status_code == 403
    )
    assert (
        fleet.client.post(path.format("dev-1"), json=body, headers=bearer("x")).status_code == 401
    )
    assert fleet.client.post(path.format("dev-1"), json=body).status_code == 401
    other = fleet.client.post(path.format("dev-2"), json=body, headers=bearer(theirs))
    assert other.status_code == 200 and other.json()["accepted"] == [1]


def test_an_unknown_credential_is_not_remembered(fleet: Fleet) -> None:
    fleet.enrol("dev-1")
    r = fleet.client.get("/v1/devices/dev-1/desired", headers=bearer("not-a-credential"))
    assert r.status_code == 401
    cache = getattr(fleet.app.state, "credential_cache", None)
    assert cache is None or cache.get(hash_secret("not-a-credential")) is None


@pytest.mark.parametrize(("setting", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_sqlite_runs_wal_durable_by_default_and_normal_on_request(
    tmp_path: Path, setting: str, level: int
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}", sqlite_synchronous=setting)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == level
    engine.dispose()
    default = make_engine(f"sqlite:///{tmp_path / 'default.db'}")
    with default.connect() as connection:
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    default.dispose()
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous="OFF")
