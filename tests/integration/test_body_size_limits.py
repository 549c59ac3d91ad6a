"""A 300 MB request body, to a real controller process and a real promotion listener process, with a
declared Content-Length and chunked: each is a 413 long before 300 MB could be sent, the server stays
healthy, and nothing is stored.

The body is a valid request that would be stored if it were read (a telemetry batch of one report
padded with whitespace, a signed MLflow delivery), so without the limits the test fails on what was
stored, not only on the time taken. It comes from a generator that counts what the client handed to
the socket: the test never holds 300 MB, and it measures how much the server took before answering
(what the socket buffers held, plus the route's limit for a chunked body the server counted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import (
    ADMIN_HEADERS,
    free_port,
    stop_group,
    uvicorn_controller,
    wait_healthy,
    write_public_key,
)

from fleet.controller.settings import TELEMETRY_MAX_BODY_BYTES
from fleet.shared.body_limit import MiB
from fleet.shared.latency import LATENCY_BOUNDS_MS
from registry.webhook_auth import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

pytestmark = pytest.mark.integration

HUGE = 300_000_000
BUFFERS = 32 * MiB
"""What the client may hand the socket before it sees the answer: the kernel's buffers on both
sides (a few MiB on loopback) and the server's read-ahead, with room."""
SECRET = "body-limit-test-secret"
PADDING = b" " * MiB


@dataclass
class Sent:
    bytes: int = 0


def padded(head: bytes, tail: bytes, total: int, sent: Sent | None = None) -> Iterator[bytes]:
    """``head``, whitespace, ``tail``: ``total`` bytes of valid JSON, a MiB at a time."""
    left = total - len(head) - len(tail)
    for chunk in (head, *_spaces(left), tail):
        if sent is not None:
            sent.bytes += len(chunk)
        yield chunk


def _spaces(n: int) -> Iterator[bytes]:
    while n > 0:
        yield PADDING[: min(n, len(PADDING))]
        n -= len(PADDING)


def post(
    url: str, body: Iterator[bytes], headers: dict[str, str], length: int | None
) -> tuple[httpx.Response, float]:
    """POST ``body``, with ``Content-Length: length`` or chunked (None); the answer and the time."""
    if length is not None:
        headers = {**headers, "Content-Length": str(length)}
    started = time.monotonic()
    with httpx.Client(timeout=120) as client:
        answer = client.post(url, content=body, headers=headers)
    return answer, time.monotonic() - started


def report(seq: int) -> dict[str, object]:
    return {
        "seq": seq, "buffer_id": "b", "version": "1", "window_start": 0.0, "window_end": 1.0,
        "inferences": 1, "errors": 0, "latency_ms": {"counts": [1] + [0] * len(LATENCY_BOUNDS_MS)},
    }  # fmt: skip


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A controller process (uvicorn, SQLite) for the module's tests, each with a device of its
    own; its base URL and its log."""
    root = tmp_path_factory.mktemp("controller")
    key = write_public_key(Ed25519PrivateKey.generate(), root / "k.pem")
    with uvicorn_controller(root, key) as (base, _db_url):
        yield base, root / "uvicorn.log"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_300_mb_telemetry_batch_is_refused_and_stores_nothing(
    controller: tuple[str, Path], declared: bool
) -> None:
    base, log = controller
    device_id = f"d-{'declared' if declared else 'chunked'}"
    token = httpx.post(f"{base}/v1/enrolment-tokens", json={"uses": 1}, headers=ADMIN_HEADERS)
    body = {"token": token.json()["token"], "device_id": device_id, "hardware_class": "host-cpu"}
    credential = httpx.post(f"{base}/v1/enrol", json=body).json()["credential"]
    device = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    telemetry = f"{base}/v1/devices/{device_id}/telemetry"
    head = json.dumps({"reports": [report(1)]})[:-2].encode()  # stored, were it read
    sent = Sent()
    length = HUGE if declared else None
    answer, took = post(telemetry, padded(head, b"]}", HUGE, sent), device, length)

    assert answer.status_code == 413, answer.text[:500]
    assert f"over {TELEMETRY_MAX_BODY_BYTES} bytes" in answer.json()["detail"]
    assert "EDGELOOP_AGENT_TELEMETRY_BATCH" in answer.json()["detail"]  # what to do about it
    read_at_most = BUFFERS if declared else TELEMETRY_MAX_BODY_BYTES + BUFFERS
    assert sent.bytes < read_at_most, f"{sent.bytes} bytes sent before the answer"
    assert took < 30, f"{took:.1f} s"
    print(f"{'declared' if declared else 'chunked'}: 413 after {sent.bytes} bytes in {took:.2f} s")

    assert httpx.get(f"{base}/v1/health").status_code == 200
    stored = httpx.post(telemetry, json={"reports": [report(1)]}, headers=device)
    assert stored.status_code == 200 and stored.json()["accepted"] == [1]  # not a duplicate
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_300_mb_body_without_a_credential_is_refused_by_the_default_limit(
    controller: tuple[str, Path],
) -> None:
    base, _log = controller
    for length in (HUGE, None):
        sent = Sent()
        body = padded(b'{"model": "m"', b"}", HUGE, sent)
        answer, took = post(
            f"{base}/v1/rollouts", body, {"Content-Type": "application/json"}, length
        )
        assert answer.status_code == 413, answer.text[:500]
        assert f"over {MiB} bytes" in answer.json()["detail"]  # before the missing credential
        assert sent.bytes < MiB + BUFFERS and took < 30, (sent.bytes, took)
    assert httpx.get(f"{base}/v1/health").status_code == 200


@pytest.mark.parametrize("who", ["nobody", "another device"])
def test_a_large_body_route_checks_the_credential_before_reading_the_body(
    controller: tuple[str, Path], who: str
) -> None:
    """A 90 MB telemetry batch (under the telemetry limit) and a 300 MB upload, without a valid
    credential or with another device's: refused before the body is read (early_auth)."""
    base, _log = controller
    token = httpx.post(f"{base}/v1/enrolment-tokens", json={"uses": 1}, headers=ADMIN_HEADERS)
    device_id = f"d-early-{who.replace(' ', '-')}"
    body = {"token": token.json()["token"], "device_id": device_id, "hardware_class": "host-cpu"}
    credential = httpx.post(f"{base}/v1/enrol", json=body).json()["credential"]
    bearer = {"Authorization": f"Bearer {credential if who != 'nobody' else 'x' * 43}"}
    victim = "d-declared" if who != "nobody" else device_id
    head = json.dumps({"reports": [report(1)]})[:-2].encode()
    for url, size, refused in [
        (f"{base}/v1/devices/{victim}/telemetry", 90_000_000, 403 if who != "nobody" else 401),
        (f"{base}/v1/artifacts?model=m&version=1&variant=v", HUGE, 401),
    ]:
        sent = Sent()
        headers = {**bearer, "Content-Type": "application/json"}
        answer, took = post(url, padded(head, b"]}", size, sent), headers, size)
        assert answer.status_code == refused, (url, answer.text[:300])
        assert answer.headers["connection"] == "close"
        assert sent.bytes < BUFFERS and took < 30, (url, sent.bytes, took)
    assert httpx.get(f"{base}/v1/health").status_code == 200


def test_a_route_that_takes_no_body_answers_without_reading_a_300_mb_one(
    controller: tuple[str, Path],
) -> None:
    base, _log = controller
    sent = Sent()
    answer, took = post(f"{base}/dashboard/logout", padded(b"", b"", HUGE, sent), {}, None)
    assert answer.status_code == 303  # signed out (of no session), the body never read
    assert answer.headers["connection"] == "close"  # not drained to keep the connection
    assert sent.bytes < BUFFERS and took < 30, (sent.bytes, took)
    assert httpx.get(f"{base}/v1/health").status_code == 200


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`edgeloop listener serve` (a dry run: it records rollouts to a file); its webhook URL. A
    delivery that starts no rollout never reaches MLflow, so none is running."""
    tmp_path = tmp_path_factory.mktemp("listener")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP_", "MLFLOW_"))}
    env.update(
        EDGELOOP_HOME=str(tmp_path / "home"),
        EDGELOOP_LISTENER_SECRET=SECRET,
        EDGELOOP_LISTENER_RECORD_TO=str(tmp_path / "rollouts.jsonl"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    port = free_port()
    log = tmp_path / "listener.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "listener", "serve", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log)
        yield f"{base}/webhooks/mlflow"
    finally:
        stop_group(proc)


def signed_headers(delivery_id: str, chunks: Iterator[bytes]) -> dict[str, str]:
    """MLflow's headers for a delivery of ``chunks`` (hashed as they come: never all in memory)."""
    timestamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), f"{delivery_id}.{timestamp}.".encode(), hashlib.sha256)
    for chunk in chunks:
        mac.update(chunk)
    return {
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"v1,{base64.b64encode(mac.digest()).decode()}",
        "Content-Type": "application/json",
    }


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_300_mb_signed_delivery_is_refused_and_not_remembered(
    listener: str, declared: bool
) -> None:
    head = b'{"entity": "model_version", "action": "created", "data": {}'
    delivery = f"delivery-{'declared' if declared else 'chunked'}"
    headers = signed_headers(delivery, padded(head, b"}", HUGE))  # authentic, were it read
    sent = Sent()
    answer, took = post(
        listener, padded(head, b"}", HUGE, sent), headers, HUGE if declared else None
    )

    assert answer.status_code == 413, answer.text[:500]
    assert f"over {MiB} bytes" in answer.json()["detail"]
    assert "EDGELOOP_LISTENER_MAX_BODY_BYTES" in answer.json()["detail"]
    assert sent.bytes < MiB + BUFFERS and took < 30, (sent.bytes, took)
    print(f"{'declared' if declared else 'chunked'}: 413 after {sent.bytes} bytes in {took:.2f} s")

    assert httpx.get(listener.replace("/webhooks/mlflow", "/health")).status_code == 200
    small = head + b"}"
    again = httpx.post(listener, content=small, headers=signed_headers(delivery, iter([small])))
    assert again.status_code == 200, again.text  # not 409: the refused delivery was not recorded
    assert again.json()["status"] == "ignored"
