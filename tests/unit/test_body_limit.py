"""fleet.shared.body_limit: the ASGI middleware on its own, driven message by message, so each test
sees exactly what reached the app, what the app read and what went back to the client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fleet.shared.body_limit import BodyLimit, BodyTooLarge, LimitBodySize, Message, Scope

LIMITS = [
    BodyLimit(1000, hint="send a smaller body"),
    BodyLimit(5000, "/v1/devices/{device_id}/telemetry", hint="send fewer reports"),
    BodyLimit(100, "/v1/devices", hint="devices take little"),
]


def http(path: str, length: int | None = None, method: str = "POST") -> Scope:
    headers = [(b"host", b"controller"), (b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers}


class Exchange:
    """A client that sends ``chunks`` as the body, and what happened: the messages the server sent,
    how many chunks it asked for, and what the app got."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked = 0
        self.sent: list[Message] = []
        self.app_called = False
        self.app_body = b""
        self.app_error: BaseException | None = None

    async def receive(self) -> Message:
        self.asked += 1
        if self.asked > len(self.chunks):
            return {"type": "http.disconnect"}
        more = self.asked < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.asked - 1], "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def echo(self, scope: Scope, receive: Any, send: Any) -> None:
        """An app that reads the whole body, then answers 200 with its length (FastAPI, roughly:
        a body it could not read becomes its own 400)."""
        self.app_called = True
        try:
            while True:
                message = await receive()
                self.app_body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except BodyTooLarge as exc:
            self.app_error = exc
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b'{"detail":"parse error"}'})
            return
        body = json.dumps({"length": len(self.app_body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": body})

    async def unread(self, scope: Scope, receive: Any, send: Any) -> None:
        """An app that answers without reading the body (a route that takes none)."""
        self.app_called = True
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def run(self, scope: Scope, limits: list[BodyLimit] = LIMITS, *, read: bool = True) -> Exchange:
        app = self.echo if read else self.unread
        asyncio.run(LimitBodySize(app, limits=limits)(scope, self.receive, self.send))
        return self

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def test_a_declared_length_over_the_limit_is_a_413_at_once_and_the_app_never_runs() -> None:
    done = Exchange([b"x" * 1001]).run(http("/v1/rollouts", length=1001))
    assert done.status == 413
    assert not done.app_called and done.asked == 0  # not a byte of the body was read
    assert done.headers[b"content-type"] == b"application/json"
    assert done.headers[b"connection"] == b"close"  # the server reads no further either
    assert int(done.headers[b"content-length"]) == len(json.dumps(done.json()))
    assert [m["type"] for m in done.sent] == ["http.response.start", "http.response.body"]


def test_the_413_names_the_limit_in_bytes_the_route_and_what_to_do() -> None:
    detail = Exchange([]).run(http("/v1/devices/d-1/telemetry", length=300_000_000)).json()
    assert set(detail) == {"detail"}
    assert "over 5000 bytes" in detail["detail"]
    assert "POST /v1/devices/d-1/telemetry" in detail["detail"]
    assert detail["detail"].endswith("send fewer reports")


def test_a_chunked_body_is_refused_as_soon_as_its_count_passes_the_limit() -> None:
    chunks = [b"x" * 400] * 1000  # 400 kB in all; the limit is 1000 bytes
    done = Exchange(chunks).run(http("/v1/rollouts"))
    assert done.asked == 3  # 1200 bytes: the third chunk passes the limit, no fourth is asked for
    assert done.status == 413 and "over 1000 bytes" in done.json()["detail"]
    assert isinstance(done.app_error, BodyTooLarge)  # the app learns the body is not coming
    assert len(done.sent) == 2  # the app's own 400 never reaches the client


def test_a_chunked_body_at_the_limit_passes() -> None:
    done = Exchange([b"x" * 500, b"y" * 500]).run(http("/v1/rollouts"))
    assert done.status == 200 and done.json() == {"length": 1000}


def test_a_body_under_the_limit_reaches_the_app_unchanged() -> None:
    body = json.dumps({"reports": [{"seq": 1}] * 100}).encode()
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)]
    done = Exchange(chunks).run(http("/v1/devices/d-1/telemetry", length=len(body)))
    assert done.app_body == body and done.app_error is None
    assert done.status == 200 and done.headers == {b"x-app": b"1"}
    assert done.json() == {"length": len(body)}


def test_an_answer_to_a_body_left_unread_closes_the_connection() -> None:
    """Or the server would read (and drop) the rest to reuse the connection: a chunked body
    without end, a declared one up to its route's limit (2 GiB for an artifact upload)."""
    for length in (None, 400):
        unread = Exchange([b"x" * 400] * 1000).run(http("/v1/rollouts", length), read=False)
        assert unread.status == 204 and unread.asked == 0
        assert unread.headers[b"connection"] == b"close"
    for length in (None, 401):
        read = Exchange([b"x" * 400, b"y"]).run(http("/v1/rollouts", length))
        assert read.status == 200 and b"connection" not in read.headers
    for headers in ([], [(b"content-length", b"0")]):
        get = {**http("/v1/rollouts", method="GET"), "headers": headers}
        no_body = Exchange([]).run(get, read=False)
        assert no_body.status == 204 and b"connection" not in no_body.headers  # kept alive


def test_the_longest_matching_template_wins_and_slash_is_the_default() -> None:
    middleware = LimitBodySize(Exchange([]).echo, limits=LIMITS)
    assert middleware.limit_for("/v1/devices/d-1/telemetry").max_bytes == 5000
    assert middleware.limit_for("/v1/devices/d-1/telemetry/").max_bytes == 5000
    assert middleware.limit_for("/v1/devices/d-1/telemetry/more").max_bytes == 5000
    assert middleware.limit_for("/v1/devices/d-1/desired").max_bytes == 100
    assert middleware.limit_for("/v1/devices").max_bytes == 100
    assert middleware.limit_for("/v1/devices-x").max_bytes == 1000  # whole segments only
    assert middleware.limit_for("/v1/devices/telemetry").max_bytes == 100
    assert middleware.limit_for("/").max_bytes == 1000
    assert middleware.limit_for("/dashboard/login").max_bytes == 1000


def test_a_root_path_in_front_of_the_app_does_not_hide_a_route() -> None:
    scope = {**http("/api/v1/devices/d-1/telemetry", length=4000), "root_path": "/api"}
    assert Exchange([b"x" * 4000]).run(scope).status == 200


def test_limits_without_a_default_are_refused() -> None:
    with pytest.raises(ValueError, match="default"):
        LimitBodySize(Exchange([]).echo, limits=[BodyLimit(10, "/v1")])
    with pytest.raises(ValueError, match="bytes"):
        BodyLimit(-1)


def test_what_is_not_http_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        pass

    middleware = LimitBodySize(app, limits=[BodyLimit(0)])
    asyncio.run(middleware({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]


@pytest.fixture
def fastapi_client() -> Iterator[TestClient]:
    app = FastAPI()
    app.add_middleware(LimitBodySize, limits=[BodyLimit(1000)])

    @app.post("/items")
    def items(body: dict[str, list[int]]) -> dict[str, int]:
        return {"items": len(body["items"])}

    with TestClient(app) as client:
        yield client


def test_fastapi_answers_413_not_its_own_400_for_a_chunked_body(fastapi_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"items": ['
        for _ in range(1000):
            yield b"1, " * 10
        yield b"1]}"

    r = fastapi_client.post(
        "/items", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "over 1000 bytes" in r.json()["detail"]
    small = fastapi_client.post("/items", json={"items": [1, 2, 3]})
    assert small.status_code == 200 and small.json() == {"items": 3}
