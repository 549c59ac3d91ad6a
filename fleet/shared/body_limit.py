"""Request body size limits, enforced before anything reads the body: a pure ASGI middleware.

Why: a FastAPI route reads its whole body into memory before it checks a single field, so without a
limit one request of 300 MB, or a chunked one that never ends, costs the server that much memory
before the first 422. Here a body with a ``Content-Length`` over its route's limit is answered 413 at
once, none of it read; a body without one (chunked) is counted as it arrives and answered 413 the
moment the count passes the limit, the rest never read and nothing of it buffered here. The 413
closes the connection, so the server does not go on reading (and discarding) what the client sends;
so does any answer to a body the app did not read to its end.

Each limit holds for a path template (``{name}`` is one path segment) and every path below it; the
longest template that matches a path wins, and the limit on ``/`` is the default. Only the standard
library, so the device-safe code (``fleet.shared``, the agent) could use it too; the controller and
the promotion listener wrap their apps with it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MiB = 1024 * 1024


@dataclass(frozen=True)
class BodyLimit:
    """At most ``max_bytes`` of request body on ``path`` (a template: ``{name}`` stands for one
    segment) and below it; ``hint`` tells a client refused with 413 what to do instead."""

    max_bytes: int
    path: str = "/"
    hint: str = "send a smaller body"
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"a body limit is a number of bytes >= 0, not {self.max_bytes}")
        object.__setattr__(self, "segments", _segments(self.path))

    def matches(self, segments: Sequence[str]) -> bool:
        if len(segments) < len(self.segments):
            return False
        return all(
            want == got or (want.startswith("{") and want.endswith("}"))
            for want, got in zip(self.segments, segments, strict=False)
        )

    def detail(self, method: str, path: str) -> str:
        """The 413's ``detail``: the limit in bytes, and what to do."""
        return too_large_detail(self.max_bytes, f"{method} {path}", self.hint)


def too_large_detail(max_bytes: int, where: str, hint: str) -> str:
    """One wording of a 413 for every server of the project (the agent's local one included)."""
    return (
        f"the request body is over {max_bytes} bytes, the limit of {where}: refused, and "
        f"nothing of it was stored; {hint}"
    )


class BodyTooLarge(Exception):
    """Raised to the app by ``receive`` once a body without a ``Content-Length`` passes its limit:
    the 413 has been sent by then, and whatever the app answers instead is dropped."""


class LimitBodySize:
    """The middleware: ``LimitBodySize(app, limits=[BodyLimit(1 * MiB), BodyLimit(...), ...])``
    (with Starlette or FastAPI: ``app.add_middleware(LimitBodySize, limits=...)``). One of the
    limits must be on ``/``: it is the default of every path no other template matches."""

    def __init__(self, app: ASGIApp, *, limits: Sequence[BodyLimit]) -> None:
        if not any(limit.segments == () for limit in limits):
            raise ValueError("body limits need a default: a BodyLimit on path '/'")
        self.app = app
        self.limits = sorted(limits, key=lambda limit: len(limit.segments), reverse=True)

    def limit_for(self, path: str) -> BodyLimit:
        segments = _segments(path)
        return next(limit for limit in self.limits if limit.matches(segments))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        limit = self.limit_for(path)
        detail = limit.detail(str(scope.get("method", "")), path)
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await _refuse(send, detail)
            return
        chunked = declared is None and _header(scope, b"transfer-encoding") is not None
        has_body = chunked or bool(declared)
        counted = _Counted(limit.max_bytes, detail, receive, send, has_body=has_body)
        try:
            await self.app(scope, counted.receive, counted.send)
        except BodyTooLarge:
            if not counted.refused:
                raise


class _Counted:
    """``receive`` and ``send`` of one request: counts the body's bytes as the app reads them.

    A body the app answers without reading to its end (a route that takes no body, a refusal of
    the first bytes of an upload) gets ``Connection: close`` on the answer, or the server would
    read (and drop) what the client goes on sending to reuse the connection: up to the limit with a
    ``Content-Length``, and without end for a chunked body."""

    def __init__(
        self, max_bytes: int, detail: str, receive: Receive, send: Send, *, has_body: bool
    ) -> None:
        self.max_bytes = max_bytes
        self.detail = detail
        self._receive = receive
        self._send = send
        self.received = 0
        self.complete = not has_body
        self.started = False
        self.refused = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.max_bytes:
                if not self.refused:
                    self.refused = True
                    if not self.started:  # an answer already begun cannot become a 413
                        self.started = True
                        await _refuse(self._send, self.detail)
                raise BodyTooLarge(self.detail)
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the app's answer to a body it did not get (FastAPI's 400, say): dropped
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers", ()))
            if not self.complete and all(name.lower() != b"connection" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await self._send(message)


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # or the server reads (and drops) the rest of it
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.split("/") if s)


def _route_path(scope: Scope) -> str:
    """The path the app routes on: without the ``root_path`` a proxy mounts the app under."""
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _content_length(scope: Scope) -> int | None:
    """The declared length, or None (none: chunked or no body; or a value the server would have
    refused itself)."""
    text = _header(scope, b"content-length")
    return int(text) if text is not None and text.isdigit() else None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            return str(value.decode("latin-1").strip())
    return None
