"""Credentials before bodies: the routes that take large bodies check who is asking first.

FastAPI reads a request's whole body before it runs the route's dependencies, the credential check
among them. The body limits (:mod:`fleet.controller.api.body_limits`) bound that read by the route's
limit, which is large where a device sends its telemetry (94 MiB) or field samples (26 MiB) and
where an artifact is uploaded (2 GiB): without this, anyone who can reach the controller could make
it take that much per request. So on those routes the bearer token is checked before a byte of the
body is read: the device's own credential on its ``/devices/{id}/...`` path, the admin token on
``/v1/artifacts``. Anything else is answered 401 (403: another device's path) with the body unread
and the connection closed. The route's own dependency checks again (the credential cache answers).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet.controller.api.auth import device_for, is_admin
from fleet.controller.api.body_limits import ARTIFACT_UPLOAD_PATHS
from fleet.shared.protocol import field_samples_path, telemetry_path

_DEVICE = "{device_id}"
_DEVICE_ROUTES = [
    tuple(p(_DEVICE).strip("/").split("/")) for p in (telemetry_path, field_samples_path)
]
_ADMIN_ROUTES = [tuple(p.strip("/").split("/")) for p in ARTIFACT_UPLOAD_PATHS]


def _match(template: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    return len(template) == len(segments) and all(
        want in (got, _DEVICE) for want, got in zip(template, segments, strict=True)
    )


class CredentialBeforeBody:
    """Pure ASGI: refuses an unauthenticated request to a large-body route before the app runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no receive: nothing here can read the body
        segments = tuple(
            s for s in request.url.path.removeprefix(scope.get("root_path", "")).split("/") if s
        )
        token = _bearer(request)
        refusal: tuple[int, str] | None = None
        if any(_match(t, segments) for t in _ADMIN_ROUTES):
            if not is_admin(request, token):
                refusal = (401, "missing or invalid credentials")
        else:
            for template in _DEVICE_ROUTES:
                if _match(template, segments):
                    device_id = segments[template.index(_DEVICE)]
                    device = await device_for(request, token)
                    if device is None:
                        refusal = (401, "missing or invalid credentials")
                    elif device.device_id != device_id:
                        refusal = (403, "not this device's resource")
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await _refuse(send, *refusal)


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def _refuse(send: Send, code: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the body is never read: the server must not read it either
    ]
    if code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
