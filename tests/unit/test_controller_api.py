"""fleet.controller HTTP API on a tmp SQLite: enrolment, auth, long-poll, artifacts, telemetry,
rollout creation and commands."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from builders import REGISTRY_KEY, claim
from test_controller_builders import (
    ADMIN_HEADERS,
    Fleet,
    make_fleet,
    policy,
    report,
)

from fleet.controller.settings import FleetSettings
from fleet.controller.storage.db import Base, make_engine
from fleet.shared.profile import load_profile

REPO = Path(__file__).resolve().parents[2]


def auth(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


# --- schema ---------------------------------------------------------------------------------


def test_migrations_match_the_models(fleet: Fleet) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(str(fleet.app.state.settings.db_url))
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_openapi_lists_the_v1_endpoints(fleet: Fleet) -> None:
    paths = fleet.client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/enrol",
        "/v1/enrolment-tokens",
        "/v1/devices/{device_id}/desired",
        "/v1/devices/{device_id}/telemetry",
        "/v1/artifacts/{model}/{version}/{variant}",
        "/v1/rollouts",
        "/v1/rollouts/{rollout_id}",
        "/v1/rollouts/{rollout_id}/{command}",
    ):
        assert path in paths


# --- enrolment and auth ---------------------------------------------------------------------


def test_enrol_gives_a_credential_that_reads_desired_state(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    r = fleet.client.get("/v1/devices/dev-1/desired", headers=auth(credential))
    assert r.status_code == 200
    assert r.json() == {
        "device_id": "dev-1",
        "revision": 0,
        "artifact": None,
        "rollout_id": None,
        "shadow": None,
        "rollback": False,
    }


def test_admin_endpoints_need_the_admin_token(fleet: Fleet) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert (
            fleet.client.post("/v1/enrolment-tokens", json={}, headers=headers).status_code == 401
        )
        assert fleet.client.get("/v1/rollouts", headers=headers).status_code == 401


def test_enrol_refuses_bad_used_up_expired_and_wrong_class_tokens(fleet: Fleet) -> None:
    body = {"device_id": "dev-x", "hardware_class": "host-cpu"}
    assert fleet.client.post("/v1/enrol", json={**body, "token": "x" * 32}).status_code == 401

    once = fleet.token(uses=1)
    fleet.enrol("dev-1", token=once)
    assert fleet.client.post("/v1/enrol", json={**body, "token": once}).status_code == 401

    short = fleet.token(ttl_s=60)
    fleet.clock.at(61)
    assert fleet.client.post("/v1/enrol", json={**body, "token": short}).status_code == 401

    edge_only = fleet.token(hardware_class="edge-small")
    assert fleet.client.post("/v1/enrol", json={**body, "token": edge_only}).status_code == 401


def _create_token(fleet: Fleet, **body: object) -> dict[str, object]:
    r = fleet.client.post("/v1/enrolment-tokens", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    created: dict[str, object] = r.json()
    return created


def test_a_token_bound_to_an_id_or_a_prefix_enrols_no_other_id(fleet: Fleet) -> None:
    enrol = {"hardware_class": "host-cpu"}
    bound = _create_token(fleet, device_id="cam-7")["token"]
    r = fleet.client.post("/v1/enrol", json={**enrol, "token": bound, "device_id": "cam-8"})
    assert r.status_code == 401
    assert (
        fleet.client.post(
            "/v1/enrol", json={**enrol, "token": bound, "device_id": "cam-7"}
        ).status_code
        == 200
    )
    # "_" is not a wildcard: a prefix is compared as it is written
    prefixed = _create_token(fleet, uses=5, device_prefix="kiosk_")["token"]
    for refused in ["kioskX1", "kiosk", "k", "gateway-kiosk_1"]:
        r = fleet.client.post("/v1/enrol", json={**enrol, "token": prefixed, "device_id": refused})
        assert r.status_code == 401, refused
    r = fleet.client.post("/v1/enrol", json={**enrol, "token": prefixed, "device_id": "kiosk_1"})
    assert r.status_code == 200
    listed = fleet.client.get("/v1/enrolment-tokens", headers=ADMIN_HEADERS).json()
    assert [(t["device_prefix"], t["uses_left"]) for t in listed] == [("kiosk_", 4)]
    for body in [{"device_id": "a", "uses": 2}, {"device_id": "a", "device_prefix": "a"}]:
        r = fleet.client.post("/v1/enrolment-tokens", json=body, headers=ADMIN_HEADERS)
        assert r.status_code == 422, body


def test_a_revoked_token_enrols_nobody_and_is_no_longer_listed(fleet: Fleet) -> None:
    created = _create_token(fleet, uses=3)
    listed = fleet.client.get("/v1/enrolment-tokens", headers=ADMIN_HEADERS).json()
    assert [t["token_id"] for t in listed] == [created["token_id"]]
    assert "token" not in listed[0]
    url = f"/v1/enrolment-tokens/{created['token_id']}"
    assert fleet.client.delete(url).status_code == 401  # the admin's call alone
    assert fleet.client.delete(url, headers=ADMIN_HEADERS).status_code == 204
    body = {"token": created["token"], "device_id": "dev-1", "hardware_class": "host-cpu"}
    assert fleet.client.post("/v1/enrol", json=body).status_code == 401
    assert fleet.client.get("/v1/enrolment-tokens", headers=ADMIN_HEADERS).json() == []
    assert fleet.client.delete("/v1/enrolment-tokens/999", headers=ADMIN_HEADERS).status_code == 404


def test_enrol_twice_with_the_same_id_is_a_conflict(fleet: Fleet) -> None:
    fleet.enrol("dev-1")
    r = fleet.client.post(
        "/v1/enrol",
        json={"token": fleet.token(), "device_id": "dev-1", "hardware_class": "host-cpu"},
    )
    assert r.status_code == 409


def test_only_the_token_hash_and_credential_hash_are_stored(fleet: Fleet) -> None:
    token = fleet.token()
    credential = fleet.enrol("dev-1", token=token)
    raw = (fleet.tmp / "fleet.db").read_bytes()
    assert token.encode() not in raw and credential.encode() not in raw


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/devices/{id}/desired", None),
        ("post", "/v1/devices/{id}/telemetry", {"reports": [report(1, "1")]}),
    ],
)
def test_device_endpoints_answer_401_and_403_without_leaking(
    fleet: Fleet, method: str, path: str, body: object
) -> None:
    mine = fleet.enrol("dev-1")
    fleet.enrol("dev-2")

    def call(device_id: str, headers: dict[str, str]) -> int:
        kwargs: dict[str, object] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        return getattr(fleet.client, method)(path.format(id=device_id), **kwargs).status_code

    for device_id in ("dev-1", "dev-2", "nobody"):
        assert call(device_id, {}) == 401
        assert call(device_id, auth("not-a-credential")) == 401
    assert call("dev-2", auth(mine)) == 403
    assert call("nobody", auth(mine)) == 403  # same answer whether the device exists or not


def test_artifact_download_needs_a_device_credential(fleet: Fleet) -> None:
    info = fleet.artifact("churn", "1")
    url = f"/v1/artifacts/churn/1/{info['variant']}"
    assert fleet.client.get(url).status_code == 401
    assert fleet.client.get(url, headers=auth("nope")).status_code == 401
    edge = fleet.enrol("edge-1", "edge-small")
    assert fleet.client.get(url, headers=auth(edge)).status_code == 404  # not its class


# --- long-poll ------------------------------------------------------------------------------


def _create_and_start(fleet: Fleet, devices: int = 2) -> tuple[str, dict[str, str]]:
    credentials = {f"dev-{i}": fleet.enrol(f"dev-{i}") for i in range(devices)}
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    r = fleet.client.post(
        "/v1/rollouts",
        json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy()},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["rollout_id"]), credentials


def test_long_poll_answers_at_once_on_a_revision_mismatch(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    started = time.monotonic()
    r = fleet.client.get(
        "/v1/devices/dev-1/desired", params={"revision": 7, "wait": 20}, headers=auth(credential)
    )
    assert r.status_code == 200 and r.json()["revision"] == 0
    assert time.monotonic() - started < 1.0


def test_long_poll_times_out_with_the_same_state(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    started = time.monotonic()
    r = fleet.client.get(
        "/v1/devices/dev-1/desired", params={"revision": 0, "wait": 0.5}, headers=auth(credential)
    )
    assert r.json()["revision"] == 0
    assert 0.4 < time.monotonic() - started < 2.0


def test_long_poll_wakes_within_half_a_second_of_a_change(fleet: Fleet) -> None:
    rollout_id, credentials = _create_and_start(fleet, devices=2)
    answers: dict[str, tuple[float, dict[str, object]]] = {}

    def poll(device_id: str) -> None:
        r = fleet.client.get(
            f"/v1/devices/{device_id}/desired",
            params={"revision": 0, "wait": 10},
            headers=auth(credentials[device_id]),
        )
        answers[device_id] = (time.monotonic(), r.json())

    threads = [threading.Thread(target=poll, args=(d,)) for d in credentials]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while fleet.app.state.notifier.waiting() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    changed_at = time.monotonic()
    r = fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    for t in threads:
        t.join(timeout=10)
    targeted = [d for d, (_, body) in answers.items() if body["revision"] == 1]
    assert len(targeted) == 1  # stage 1 targets half of two devices
    at, body = answers[targeted[0]]
    assert at - changed_at < 0.5 + 0.3  # the start request itself is inside the measurement
    artifact = body["artifact"]
    assert isinstance(artifact, dict) and artifact["version"] == "2"
    assert body["rollout_id"] == rollout_id


# --- artifacts ------------------------------------------------------------------------------


def test_artifact_etag_range_and_not_modified(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    info = fleet.artifact("churn", "1")
    url = f"/v1/artifacts/churn/1/{info['variant']}"
    data = info["data"]
    sha = info["body"]["sha256"]

    full = fleet.client.get(url, headers=auth(credential))
    assert full.status_code == 200 and full.content == data
    assert full.headers["etag"] == f'"{sha}"'
    assert full.headers["accept-ranges"] == "bytes"

    part = fleet.client.get(url, headers={**auth(credential), "Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == data[10:]
    assert part.headers["content-range"] == f"bytes 10-{len(data) - 1}/{len(data)}"

    cached = fleet.client.get(url, headers={**auth(credential), "If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304 and cached.content == b""
    stale = fleet.client.get(url, headers={**auth(credential), "If-None-Match": '"other"'})
    assert stale.status_code == 200


# --- telemetry ------------------------------------------------------------------------------


def test_telemetry_is_idempotent_and_accepts_any_order(fleet: Fleet) -> None:
    credential = fleet.enrol("dev-1")
    url = "/v1/devices/dev-1/telemetry"
    batch = {"reports": [report(3, "1"), report(1, "1")]}
    first = fleet.client.post(url, json=batch, headers=auth(credential))
    assert first.status_code == 200
    assert first.json() == {"accepted": [3, 1], "duplicates": [], "refused": []}
    again = fleet.client.post(url, json=batch, headers=auth(credential))
    assert again.json() == {"accepted": [], "duplicates": [3, 1], "refused": []}
    mixed = {"reports": [report(2, "1"), report(3, "1"), report(2, "1")]}
    assert fleet.client.post(url, json=mixed, headers=auth(credential)).json() == {
        "accepted": [2],
        "duplicates": [3, 2],
        "refused": [],
    }
    other_buffer = {"reports": [report(1, "1", buffer_id="buf-2")]}
    assert fleet.client.post(url, json=other_buffer, headers=auth(credential)).json() == {
        "accepted": [1],
        "duplicates": [],
        "refused": [],
    }


def test_telemetry_updates_last_seen(fleet: Fleet) -> None:
    from fleet.controller.storage.db import DeviceRow

    credential = fleet.enrol("dev-1")
    fleet.clock.at(42)
    fleet.client.post(
        "/v1/devices/dev-1/telemetry", json={"reports": [report(1, "1")]}, headers=auth(credential)
    )
    with fleet.app.state.sessions() as session:
        device = session.get(DeviceRow, "dev-1")
        assert device.last_seen == fleet.clock.now


@pytest.mark.parametrize(
    "change",
    [
        {"inferences": -1},
        {"errors": 10_000, "inferences": 10},
        {"inferences": 10**12},
        {"seq": 0},
        {"window_start": 5.0, "window_end": 1.0},
        {"latency_ms": {"bounds_ms": [1.0, 2.0], "counts": [1, 2]}},
        {"latency_ms": {"bounds_ms": [1.0, 2.0], "counts": [1, 2, 3]}},  # another bucket layout
        {"version": "../../etc"},
    ],
)
def test_absurd_telemetry_is_422(fleet: Fleet, change: dict[str, object]) -> None:
    credential = fleet.enrol("dev-1")
    bad = {**report(1, "1"), **change}
    r = fleet.client.post(
        "/v1/devices/dev-1/telemetry", json={"reports": [bad]}, headers=auth(credential)
    )
    assert r.status_code == 422


# --- rollouts -------------------------------------------------------------------------------


def test_rollout_create_status_and_commands(fleet: Fleet) -> None:
    rollout_id, _ = _create_and_start(fleet)
    r = fleet.client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS)
    assert r.json()["phase"] == "pending" and r.json()["status"]["rollout_id"] == rollout_id
    assert [
        s["rollout_id"] for s in fleet.client.get("/v1/rollouts", headers=ADMIN_HEADERS).json()
    ] == [rollout_id]

    def command(name: str, **body: str) -> tuple[int, dict[str, object]]:
        r = fleet.client.post(
            f"/v1/rollouts/{rollout_id}/{name}", json=body or None, headers=ADMIN_HEADERS
        )
        return r.status_code, r.json()

    assert command("resume")[0] == 409  # not paused
    code, body = command("start")
    assert code == 200 and body["phase"] == "progressing"
    assert command("start")[0] == 409
    code, body = command("pause", reason="looking at a dashboard")
    assert body["phase"] == "paused" and "looking at a dashboard" in str(body["reason"])
    assert command("resume")[1]["phase"] == "progressing"
    code, body = command("abort")
    assert body["phase"] == "rolling_back"  # devices were targeted: they go back first
    assert command("retry")[0] == 409  # not ended yet
    assert command("explode")[0] == 422
    assert fleet.client.post("/v1/rollouts/nope/start", headers=ADMIN_HEADERS).status_code == 404


def test_an_artifact_is_stored_only_when_its_signature_binds_its_names_and_release(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The controller checks what it is handed against the registry's public key: bytes signed
    as another model, version, variant or release, or changed after signing, are a 422 and
    nothing is stored (no row, no file in the store); without a key to check with it refuses
    signed artifacts (409)."""
    data = b"model bytes" * 50
    good = claim(
        REGISTRY_KEY, "host-cpu-int8", data, model="churn", version="3", hardware_class="host-cpu"
    )

    def upload(query: dict[str, Any], body: bytes = data) -> Any:
        return fleet.client.post("/v1/artifacts", params=query, content=body, headers=ADMIN_HEADERS)

    for changes in ({"model": "faces"}, {"version": "4"}, {"variant": "fp32"}, {"release": 2}):
        r = upload({**good, **changes})
        assert r.status_code == 422, (changes, r.text)
        assert "the signature does not verify" in r.json()["detail"], changes
    tampered = b"model bytez" * 50
    r = upload(good, tampered)  # the claim's sha256 is the signed file's, the bytes another's
    assert r.status_code == 422 and "nothing was stored" in r.json()["detail"]
    assert f"have sha256 {hashlib.sha256(tampered).hexdigest()}" in r.json()["detail"]
    r = upload({**good, "sha256": hashlib.sha256(tampered).hexdigest()}, tampered)
    assert r.status_code == 422 and "the signature does not verify" in r.json()["detail"]
    from fleet.controller.storage.db import ArtifactRow

    with fleet.app.state.sessions() as session:
        assert session.query(ArtifactRow).count() == 0
    store = tmp_path / "artifact-store"
    assert [p for p in store.rglob("*") if p.is_file()] == []  # not even a temporary file
    r = upload(good)
    assert r.status_code == 200 and r.json()["release"] == 3, r.text
    assert r.json()["sha256"] == good["sha256"] and r.json()["size_bytes"] == len(data)
    stored = store / str(good["sha256"])[:2] / str(good["sha256"])
    assert stored.read_bytes() == data
    assert [p for p in store.rglob("*") if p.is_file()] == [stored]

    (tmp_path / "keyless").mkdir()
    keyless = make_fleet(tmp_path / "keyless", public_key_path=tmp_path / "none.pem")
    r = keyless.post("/v1/artifacts", params=good, content=data, headers=ADMIN_HEADERS)
    assert r.status_code == 409 and "EDGELOOP_FLEET_PUBLIC_KEY_PATH" in r.json()["detail"]


def test_an_artifact_registration_takes_no_host_path(fleet: Fleet) -> None:
    """The old form (a JSON body naming a file on the controller's disk) is gone: a ``path`` is
    an unknown parameter, and a JSON body is just bytes that do not hash to the claim."""
    data = b"x" * 100
    good = claim(
        REGISTRY_KEY, "host-cpu-int8", data, model="churn", version="1", hardware_class="host-cpu"
    )
    r = fleet.client.post(
        "/v1/artifacts", params={**good, "path": "/etc/passwd"}, content=data, headers=ADMIN_HEADERS
    )
    assert r.status_code == 422 and "path" in r.text
    r = fleet.client.post(
        "/v1/artifacts", json={**good, "path": "/etc/passwd"}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 422


def test_a_source_url_is_fetched_only_from_an_allowed_origin(fleet: Fleet) -> None:
    """``source`` instead of a body: refused unless the operator listed its origin, and never
    together with a body."""
    data = b"y" * 100
    query = {
        **claim(
            REGISTRY_KEY, "host-cpu-int8", data, model="churn", version="1",
            hardware_class="host-cpu",
        ),
        "source": "http://169.254.169.254/latest/meta-data/",
    }  # fmt: skip
    r = fleet.client.post("/v1/artifacts", params=query, headers=ADMIN_HEADERS)
    assert r.status_code == 422, r.text
    assert "does not fetch from http://169.254.169.254" in r.json()["detail"]
    r = fleet.client.post("/v1/artifacts", params=query, content=data, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    bad = {**query, "source": "http://q\u00ef\U000fbb80\x1b"}  # found by the API fuzz test: a 500
    r = fleet.client.post("/v1/artifacts", params=bad, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "not a URL" in r.json()["detail"], r.text


@contextmanager
def http_files(files: dict[str, bytes]) -> Iterator[str]:
    """A plain HTTP server on loopback serving ``files`` by path, and 302 for ``/moved``; its
    origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/model.onnx")
                self.end_headers()
                return
            data = files.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *_: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


def test_a_source_on_an_allowed_origin_is_fetched_and_checked_like_an_upload(
    tmp_path: Path,
) -> None:
    data = b"served model" * 100
    files = {"/model.onnx": data, "/tampered.onnx": data[:-1] + b"!", "/big.onnx": b"b" * 5000}
    with (
        http_files(files) as origin,
        make_fleet(
            tmp_path, artifact_source_origins=[origin], artifact_upload_max_body_bytes=4096
        ) as fleet,
    ):
        query = claim(
            REGISTRY_KEY, "host-cpu-int8", data, model="churn", version="1",
            hardware_class="host-cpu",
        )  # fmt: skip

        def register(path: str) -> Any:
            return fleet.post(
                "/v1/artifacts", params={**query, "source": f"{origin}{path}"},
                headers=ADMIN_HEADERS,
            )  # fmt: skip

        for path, why in (
            ("/tampered.onnx", "nothing was stored"),
            ("/moved", "answered 302"),  # no redirect: it could leave the allowed origins
            ("/missing.onnx", "answered 404"),
            ("/big.onnx", "more than 4096 bytes"),
        ):
            r = register(path)
            assert r.status_code == 422 and why in r.json()["detail"], (path, r.text)
        assert [p for p in (tmp_path / "artifact-store").rglob("*") if p.is_file()] == []
        r = register("/model.onnx")
        assert r.status_code == 200 and r.json()["size_bytes"] == len(data), r.text
        sha = str(query["sha256"])
        assert (tmp_path / "artifact-store" / sha[:2] / sha).read_bytes() == data


def test_the_way_back_to_the_stable_version_is_marked_a_rollback(fleet: Fleet) -> None:
    """Devices take a lower release only on the controller's rollback path: the desired state of
    a canary device says ``rollback`` once an aborted rollout sends it back to stable."""
    from fleet.controller.reconcile import reconcile_once

    rollout_id, credentials = _create_and_start(fleet, devices=4)
    assert fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success

    def desired() -> dict[str, dict[str, Any]]:
        return {
            d: fleet.client.get(f"/v1/devices/{d}/desired", headers=auth(c)).json()
            for d, c in credentials.items()
        }

    canaries = [d for d, s in desired().items() if (s["artifact"] or {}).get("version") == "2"]
    assert canaries and all(not desired()[d]["rollback"] for d in canaries)
    fleet.client.post(f"/v1/rollouts/{rollout_id}/abort", headers=ADMIN_HEADERS)
    with fleet.app.state.sessions() as session:
        reconcile_once(session, rollout_id, fleet.clock())
    back = desired()
    for device in canaries:
        assert back[device]["artifact"]["version"] == "1" and back[device]["rollback"], back[device]
        assert back[device]["artifact"]["release"] == 1


def test_a_device_reports_only_for_what_it_was_told_to_run(fleet: Fleet) -> None:
    """Device-scoped telemetry: reports of the model and version a device is told to run, or the
    version it was told to run before (late labels), are stored; a report naming any other version
    or model is acknowledged as refused, not stored, and counted against the device."""
    from fleet.controller.storage import store
    from fleet.controller.storage.db import TelemetryRow
    from fleet.controller.storage.observe_tables import RejectedReportsRow

    credential = fleet.enrol("dev-0")
    url, headers = "/v1/devices/dev-0/telemetry", auth(credential)
    before = {"reports": [report(1, "0")]}  # never targeted: it may report what it runs
    assert fleet.client.post(url, json=before, headers=headers).json()["accepted"] == [1]
    for version in ("1", "2"):
        fleet.artifact("churn", version)
        with fleet.app.state.sessions() as session:
            store.target_devices(
                session, ["dev-0"], model="churn", version=version, rollout_id=None,
                now=fleet.clock(),
            )  # fmt: skip
            session.commit()
    batch = {
        "reports": [
            {**report(2, "2"), "model": "churn"},
            {**report(3, "1"), "model": "churn", "running": False},  # the one it ran before
            {**report(4, "7"), "model": "churn"},  # not told to run v7 (any more)
            {**report(5, "2"), "model": "faces"},  # nor another model
            report(6, "2"),  # an agent that does not name its model
        ]
    }
    ack = fleet.client.post(url, json=batch, headers=headers).json()
    assert ack == {"accepted": [2, 3, 6], "duplicates": [], "refused": [4, 5]}, ack
    again = fleet.client.post(url, json=batch, headers=headers).json()
    assert again == {"accepted": [], "duplicates": [2, 3, 6], "refused": [4, 5]}
    with fleet.app.state.sessions() as session:
        stored = session.query(TelemetryRow.seq).filter(TelemetryRow.device_id == "dev-0").all()
        assert sorted(s for (s,) in stored) == [1, 2, 3, 6]
        rejected = session.get(RejectedReportsRow, "dev-0")
        assert rejected is not None and rejected.count == 2
        assert "not told to run" in rejected.last_reason


def test_a_second_rollout_is_refused_unless_superseding(fleet: Fleet) -> None:
    first, _ = _create_and_start(fleet)
    fleet.artifact("churn", "3")
    body = {"model": "churn", "version": "3", "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 409 and first in r.json()["reason"]
    r = fleet.client.post("/v1/rollouts", json={**body, "supersede": True}, headers=ADMIN_HEADERS)
    assert r.status_code == 201
    old = fleet.client.get(f"/v1/rollouts/{first}", headers=ADMIN_HEADERS).json()
    assert old["phase"] == "aborted" and "superseded" in old["reason"]


def test_rollouts_without_a_variant_or_signature_are_refused_with_the_reason(fleet: Fleet) -> None:
    fleet.artifact("churn", "4", signed=False)
    body = {"model": "churn", "version": "4", "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "no signature" in r.json()["reason"]
    r = fleet.client.post("/v1/rollouts", json={**body, "version": "5"}, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "no variant for host-cpu" in r.json()["reason"]
    bad_policy = {**body, "policy": {"cohorts": {}}}
    assert (
        fleet.client.post("/v1/rollouts", json=bad_policy, headers=ADMIN_HEADERS).status_code == 422
    )


def test_starting_without_devices_is_a_conflict(fleet: Fleet) -> None:
    fleet.artifact("churn", "2")
    r = fleet.client.post(
        "/v1/rollouts",
        json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy()},
        headers=ADMIN_HEADERS,
    )
    rollout_id = r.json()["rollout_id"]
    r = fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 409 and r.json()["command"] == "start"


# --- default budgets from hardware profiles ---------------------------------------------------


def _default_policy_budgets(tmp: Path, **settings: Any) -> tuple[int, dict[str, Any]]:
    with make_fleet(tmp, **settings) as client:
        fleet = Fleet(client=client, clock=client.app.state.clock, tmp=tmp)  # type: ignore[attr-defined]
        for version in ("1", "2"):
            for cls in ("host-cpu", "other-cpu"):
                fleet.artifact("churn", version, cls)
        r = client.post(
            "/v1/rollouts",
            json={"model": "churn", "version": "2", "stable_version": "1"},
            headers=ADMIN_HEADERS,
        )
        body = r.json()
        if r.status_code != 201:
            return r.status_code, body
        cohorts = body["status"]["policy"]["cohorts"]
        return r.status_code, {c: v["p95_latency_ms"] for c, v in cohorts.items()}


def test_default_budgets_come_from_the_hardware_profiles(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shutil.copy(REPO / "hardware-tests" / "profiles" / "host-cpu.yaml", profiles)
    code, budgets = _default_policy_budgets(tmp_path, profiles_dir=profiles)
    assert code == 201, budgets
    expected = load_profile("host-cpu", profiles).budgets.p95_latency_ms
    # a class with a profile gets its budget; one without falls back to the configured default
    assert budgets == {"host-cpu": expected, "other-cpu": 100.0}
    assert expected != FleetSettings().default_p95_budget_ms["host-cpu"]


def test_without_a_profiles_dir_the_configured_defaults_apply(tmp_path: Path) -> None:
    code, budgets = _default_policy_budgets(tmp_path)
    assert code == 201, budgets
    assert budgets == {"host-cpu": 50.0, "other-cpu": 100.0}


def test_a_broken_profile_refuses_the_rollout_with_the_reason(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "host-cpu.yaml").write_text("name: host-cpu\nbudgets: {p95_latency_ms: -1}\n")
    code, body = _default_policy_budgets(tmp_path, profiles_dir=profiles)
    assert code == 422
    assert body["reason"].startswith("hardware profile:") and "host-cpu" in body["reason"]


# --- shadow comparisons -----------------------------------------------------------------------


def label_free_policy() -> dict[str, Any]:
    raw = policy()
    raw["cohorts"]["host-cpu"]["required"] = ["p95_latency", "error_rate", "agreement"]
    raw["gates"]["agreement"] = {"max_disagreement": 0.05, "min_samples": 100}
    raw["shadow"] = {"rate": 0.2, "cpu_budget": 0.3, "tolerance": 0.5}
    return raw


def shadow_counts(compared: int, disagreed: int) -> dict[str, Any]:
    return {"against": "1", "compared": compared, "disagreed": disagreed}


def test_canary_devices_are_told_to_compare_with_stable_and_their_counts_are_summed(
    fleet: Fleet,
) -> None:
    from fleet.controller.storage import store
    from fleet.controller.storage.observe_tables import RejectedReportsRow

    credentials = {f"dev-{i}": fleet.enrol(f"dev-{i}") for i in range(2)}
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    baseline = {"version": "1"}  # the devices run v1 before the rollout
    assert fleet.client.put("/v1/baselines/churn", json=baseline, headers=ADMIN_HEADERS).is_success
    body = {"model": "churn", "version": "2", "stable_version": "1", "policy": label_free_policy()}
    rollout_id = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS).json()[
        "rollout_id"
    ]
    assert fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success
    plans = {}
    for device_id, credential in credentials.items():
        state = fleet.client.get(f"/v1/devices/{device_id}/desired", headers=auth(credential))
        plans[device_id] = (state.json()["artifact"] or {}).get("version"), state.json()["shadow"]
    canary = next(d for d, (version, _) in plans.items() if version == "2")
    assert plans[canary][1] == {"version": "1", "rate": 0.2, "cpu_budget": 0.3, "tolerance": 0.5}
    assert all(shadow is None for d, (_, shadow) in plans.items() if d != canary)

    url = f"/v1/devices/{canary}/telemetry"
    headers = auth(credentials[canary])
    first = {**report(1, "2"), "shadow": shadow_counts(150, 3)}
    second = {**report(2, "2"), "shadow": shadow_counts(50, 1)}
    late = {**report(3, "1"), "running": False}  # labels for the model it replaced, after the swap
    r = fleet.client.post(url, json={"reports": [first, second, late]}, headers=headers)
    assert r.status_code == 200, r.text
    lying = {**report(4, "2"), "shadow": shadow_counts(500, 0)}  # 500 rows of 200 served
    r = fleet.client.post(url, json={"reports": [lying]}, headers=headers)
    assert r.status_code == 422 and "more than the 200 the report served" in r.text

    with fleet.app.state.sessions() as session:
        assert session.get(RejectedReportsRow, canary).count == 1
        status = store.status_of(store.load_rollout(session, rollout_id))
        seen = store.observations(session, status).by_id()[canary]
    assert seen.running_version == "2"  # not the late report's version
    canary_telemetry = seen.of_version("2")
    assert canary_telemetry is not None
    summed = canary_telemetry.shadow_against("1")
    assert summed is not None and (summed.compared, summed.disagreed) == (200, 4)


def test_a_regressors_target_feedback_is_summed_for_the_mae_gate(fleet: Fleet) -> None:
    """Feedback is a class pair or an absolute error, never both or neither; the errors of a
    window's reports reach the observations as n, sum and sum of squares."""
    from fleet.controller.storage import store

    credential = fleet.enrol("dev-0")
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    body = {"model": "churn", "version": "2", "stable_version": "1", "policy": label_free_policy()}
    rollout_id = fleet.client.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS).json()[
        "rollout_id"
    ]
    assert fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS).is_success
    url, headers = "/v1/devices/dev-0/telemetry", auth(credential)
    for bad in (
        {"abs_error": 1.0, "predicted": 1, "label": 1},
        {"predicted": 1},
        {"abs_error": -1.0},
        {"abs_error": 1e16},
        {},
    ):
        r = fleet.client.post(
            url, json={"reports": [{**report(1, "2"), "feedback": [bad]}]}, headers=headers
        )
        assert r.status_code == 422, (bad, r.text)
    errors = [{"abs_error": e} for e in (1.0, 2.0, 4.0)]
    first = {**report(1, "2"), "feedback": errors[:2]}
    second = {**report(2, "2"), "feedback": [*errors[2:], {"predicted": 1, "label": 2}]}
    r = fleet.client.post(url, json={"reports": [first, second]}, headers=headers)
    assert r.status_code == 200, r.text
    with fleet.app.state.sessions() as session:
        status = store.status_of(store.load_rollout(session, rollout_id))
        telemetry = store.observations(session, status).by_id()["dev-0"].of_version("2")
    assert telemetry is not None
    assert telemetry.targets.model_dump() == {"n": 3, "total": 7.0, "squares": 21.0}
    assert (telemetry.feedback_total, telemetry.labelled) == (1, 4)


def test_retired_devices_lose_their_credential_and_leave_every_rollout(fleet: Fleet) -> None:
    from fleet.controller.storage import store

    fleet.clock.at(0)
    credentials = {f"dev-{i}": fleet.enrol(f"dev-{i}") for i in range(3)}
    fleet.clock.at(600)
    for device_id in ("dev-0", "dev-1"):  # dev-2 never reports
        r = fleet.client.post(
            f"/v1/devices/{device_id}/telemetry",
            json={"reports": [report(1, "1")]},
            headers=auth(credentials[device_id]),
        )
        assert r.status_code == 200
    body = {"device_ids": ["dev-0"], "silent_for_s": 300}
    r = fleet.client.post("/v1/devices/retire", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json() == {"retired": ["dev-0", "dev-2"]}
    again = fleet.client.post("/v1/devices/retire", json=body, headers=ADMIN_HEADERS)
    assert again.json() == {"retired": []}
    assert fleet.client.post("/v1/devices/retire", json=body).status_code == 401  # admin only
    desired = fleet.client.get("/v1/devices/dev-0/desired", headers=auth(credentials["dev-0"]))
    assert desired.status_code == 401  # at once, though its credential was cached
    assert fleet.client.get(
        "/v1/devices/dev-1/desired", headers=auth(credentials["dev-1"])
    ).is_success
    fleet.artifact("churn", "1")
    fleet.artifact("churn", "2")
    made = fleet.client.post(
        "/v1/rollouts",
        json={"model": "churn", "version": "2", "stable_version": "1", "policy": policy()},
        headers=ADMIN_HEADERS,
    )
    rollout_id = made.json()["rollout_id"]
    with fleet.app.state.sessions() as session:
        status = store.status_of(store.load_rollout(session, rollout_id))
        seen = [d.device_id for d in store.observations(session, status).devices]
    assert seen == ["dev-1"]


def test_a_command_that_races_a_reconcile_pass_is_decided_again(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.controller.api import routes_rollouts
    from fleet.controller.errors import ConcurrentUpdate

    rollout_id, _ = _create_and_start(fleet)
    real = routes_rollouts.apply_decision
    raced: list[str] = []

    def first_loses(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append("lost")
            raise ConcurrentUpdate("changed by another pass", rollout_id=rollout_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes_rollouts, "apply_decision", first_loses)
    r = fleet.client.post(f"/v1/rollouts/{rollout_id}/start", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json()["phase"] == "progressing", r.text
    assert raced == ["lost"]


# --- every answer as the OpenAPI document lists it (tests/integration/test_api_fuzz.py) ---------


def assert_as_documented(doc: dict[str, Any], path: str, method: str, r: Any) -> None:
    """``r`` has a status the OpenAPI document ``doc`` lists for ``method path``, and a JSON body
    that conforms to the schema it lists for that status."""
    import jsonschema

    answers = doc["paths"][path][method]["responses"]
    assert str(r.status_code) in answers, (method, path, r.status_code, sorted(answers))
    schema = answers[str(r.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(r.json(), {**schema, "components": doc["components"]})


def test_a_body_that_is_not_utf8_is_a_documented_400(fleet: Fleet) -> None:
    doc = fleet.client.get("/openapi.json").json()
    headers = {**ADMIN_HEADERS, "Content-Type": "application/json"}
    r = fleet.client.post("/v1/enrolment-tokens", content=b'{"uses": "\xff"}', headers=headers)
    assert r.status_code == 400  # FastAPI's "There was an error parsing the body"
    assert_as_documented(doc, "/v1/enrolment-tokens", "post", r)


def test_a_missing_or_unknown_credential_is_a_documented_401(fleet: Fleet) -> None:
    doc = fleet.client.get("/openapi.json").json()
    for method, path in (
        ("get", "/v1/rollouts"),
        ("post", "/v1/devices/retire"),
        ("get", "/v1/devices/{device_id}/desired"),
        ("post", "/v1/devices/{device_id}/telemetry"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = fleet.client.request(method, path.format(device_id="dev-1"), headers=headers)
            assert r.status_code == 401
            assert_as_documented(doc, path, method, r)


def test_rollout_refusals_are_documented_with_the_bodies_they_have(fleet: Fleet) -> None:
    doc = fleet.client.get("/openapi.json").json()
    r = fleet.client.get("/v1/rollouts/churn-0123456789", headers=ADMIN_HEADERS)
    assert r.status_code == 404
    assert_as_documented(doc, "/v1/rollouts/{rollout_id}", "get", r)
    r = fleet.client.post("/v1/rollouts/churn-0123456789/start", headers=ADMIN_HEADERS)
    assert r.status_code == 404
    assert_as_documented(doc, "/v1/rollouts/{rollout_id}/{command}", "post", r)
    no_stable = {"model": "churn", "version": "2", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=no_stable, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and r.json()["reason"]
    assert_as_documented(doc, "/v1/rollouts", "post", r)
    r = fleet.client.post("/v1/rollouts", json={"model": "churn"}, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)  # does not parse
    assert_as_documented(doc, "/v1/rollouts", "post", r)
    _create_and_start(fleet)
    again = {"model": "churn", "version": "2", "stable_version": "1", "policy": policy()}
    r = fleet.client.post("/v1/rollouts", json=again, headers=ADMIN_HEADERS)
    assert r.status_code == 409
    assert_as_documented(doc, "/v1/rollouts", "post", r)


def test_a_nul_character_is_a_422_not_a_database_error(fleet: Fleet) -> None:
    """No PostgreSQL text column holds NUL: each of these was a 500 there (the fuzz test on
    PostgreSQL); on SQLite the same requests were stored or answered 404."""
    doc = fleet.client.get("/openapi.json").json()
    credential = fleet.enrol("dev-1")
    for method, template, path in (
        ("get", "/v1/rollouts/{rollout_id}", "/v1/rollouts/a%00b"),
        ("post", "/v1/rollouts/{rollout_id}/{command}", "/v1/rollouts/a%00b/abort"),
        ("put", "/v1/baselines/{model}", "/v1/baselines/a%00b"),
    ):
        r = fleet.client.request(method, path, json={"version": "1"}, headers=ADMIN_HEADERS)
        assert r.status_code == 422, (path, r.text)
        assert_as_documented(doc, template, method, r)
    r = fleet.client.post(
        "/v1/devices/retire", json={"device_ids": ["a\x00b"]}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 422 and "device_ids" in r.text
    event = {"kind": "input_drift", "value": 1.0, "threshold": 0.5, "window_s": 5}
    for change in (
        {"buffer_id": "a\x00b"},
        {"model": "a\x00b"},
        {"variant": "a\x00b"},
        {"events": [{**event, "feature": "a\x00b"}]},
    ):
        r = fleet.client.post(
            "/v1/devices/dev-1/telemetry",
            json={"reports": [{**report(1, "1"), **change}]},
            headers=auth(credential),
        )
        assert r.status_code == 422, (change, r.text)
    body = {"token": fleet.token(), "device_id": "dev-2", "hardware_class": "host-cpu"}
    r = fleet.client.post("/v1/enrol", json={**body, "labels": {"site": "a\x00b"}})
    assert r.status_code == 422 and "labels" in r.text


def test_retiring_by_a_silence_longer_than_a_century_is_422(fleet: Fleet) -> None:
    # before: OverflowError computing the cutoff, a 500
    body = {"silent_for_s": 5.5e307}
    r = fleet.client.post("/v1/devices/retire", json=body, headers=ADMIN_HEADERS)
    assert r.status_code == 422 and "silent_for_s" in r.text
    body = {"silent_for_s": 100 * 365 * 86_400}
    assert fleet.client.post("/v1/devices/retire", json=body, headers=ADMIN_HEADERS).is_success
