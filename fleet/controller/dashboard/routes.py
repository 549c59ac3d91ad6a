"""The fleet dashboard at ``/dashboard``: read-only HTML served by the controller, behind the admin token.

Signing in: ``/dashboard/login`` takes the admin token (``EDGELOOP_FLEET_ADMIN_TOKEN``) in a form and
sets an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS) holding a session: its expiry
(``SESSION_TTL_S``) and a random id, signed with an HMAC keyed by the token, never the token itself.
Signing out revokes that session in this process, so a copy of the cookie is refused too; rotating
the token signs every browser out. Scripts may send the token as a
bearer header instead. With no admin token configured the dashboard is refused, like the admin API.
The token never travels in a URL, so it stays out of access logs and browser history.

Pages are rendered from a few grouped queries (``overview``), so they load at the same speed for ten
or ten thousand devices: the device table is paginated in SQL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from datetime import datetime, timedelta
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fleet.controller.dashboard import pages
from fleet.controller.observe import aggregate, alerts
from fleet.controller.observe.playbooks import runner as playbook_runner
from fleet.controller.rollout.decide import RolloutStatus
from fleet.controller.storage import overview
from fleet.controller.storage.db import Session

COOKIE = "edgeloop_dashboard"
SESSION_TTL_S = 8 * 3600
MAX_LOGIN_BODY = 4096
"""Bytes of the sign-in form read at most: it holds one token; a larger body is refused unread."""
CHART_WINDOW_S = 3600.0
MAX_PAGE_SIZE = 500

router = APIRouter(prefix="/dashboard", include_in_schema=False)
HEADERS = {
    # Only this page's own inline style and SVG; no script, no frames, forms post back here only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)


def _signature(token: str, session: str) -> str:
    message = f"edgeloop fleet dashboard {session}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _new_session(token: str, now: float) -> str:
    """``EXPIRES.ID.SIGNATURE``: when it ends, which session, and the HMAC of both."""
    session = f"{int(now + SESSION_TTL_S)}.{secrets.token_urlsafe(16)}"
    return f"{session}.{_signature(token, session)}"


class _Revoked:
    """Sessions signed out in this process, kept until they would have expired anyway."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, session_id: str, expires: float, now: float) -> None:
        with self._lock:
            self._until = {s: t for s, t in self._until.items() if t > now}
            self._until[session_id] = expires

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._until


def _session(request: Request, token: str) -> tuple[str, float] | None:
    """The id and expiry of the request's cookie when it is a live session signed with ``token``."""
    session, _, mac = request.cookies.get(COOKIE, "").rpartition(".")
    expires, _, session_id = session.partition(".")
    if not (mac and session_id and expires.isdigit()):
        return None
    if not hmac.compare_digest(mac.encode(), _signature(token, session).encode()):
        return None
    if request.app.state.clock().timestamp() >= int(expires) or session_id in _revoked(request):
        return None
    return session_id, float(expires)


def _revoked(request: Request) -> _Revoked:
    state = request.app.state
    if not hasattr(state, "dashboard_revoked"):
        state.dashboard_revoked = _Revoked()
    revoked: _Revoked = state.dashboard_revoked
    return revoked


def signed_in(request: Request) -> bool:
    """The admin token as a bearer header, or a live session ``/dashboard/login`` set."""
    expected: str = request.app.state.settings.admin_token
    if not expected:
        return False
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer ") and hmac.compare_digest(
        bearer[7:].strip().encode(), expected.encode()
    ):
        return True
    return _session(request, expected) is not None


def _to_login() -> Response:
    return RedirectResponse("/dashboard/login", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    if not request.app.state.settings.admin_token:
        return _html(pages.login(_NO_TOKEN), status_code=503)
    return _html(pages.login())


_NO_TOKEN = (
    "the dashboard is off: this controller has no admin token; "
    "set EDGELOOP_FLEET_ADMIN_TOKEN and restart it"
)


@router.post("/login")
async def login(request: Request) -> Response:
    expected: str = request.app.state.settings.admin_token
    if not expected:
        return _html(pages.login(_NO_TOKEN), status_code=503)
    body = await _bounded_body(request, MAX_LOGIN_BODY)
    if body is None:
        return _html(pages.login(f"the form is over {MAX_LOGIN_BODY} bytes"), status_code=413)
    form = parse_qs(body.decode(errors="replace"))
    given = (form.get("token") or [""])[0]
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return _html(
            pages.login("wrong admin token: use the value of EDGELOOP_FLEET_ADMIN_TOKEN"),
            status_code=401,
        )
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        COOKIE,
        _new_session(expected, request.app.state.clock().timestamp()),
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/dashboard",
    )
    return response


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (read no further)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


@router.post("/logout")
def logout(request: Request) -> Response:
    expected: str = request.app.state.settings.admin_token
    live = _session(request, expected) if expected else None
    if live is not None:
        _revoked(request).add(*live, now=request.app.state.clock().timestamp())
    response = _to_login()
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


def _overview_data(request: Request) -> pages.OverviewData:
    now: datetime = request.app.state.clock()
    since = now - timedelta(seconds=CHART_WINDOW_S)
    with request.app.state.sessions() as session:
        return pages.OverviewData(
            now=now,
            groups=overview.device_groups(session, now),
            rollouts=[
                RolloutStatus.model_validate(r.status)
                for r in overview.recent_rollouts(session, limit=10)
            ],
            reports=overview.recent_reports(session, since=since),
            alerts=alerts.list_alerts(session, status="open", limit=50),
            playbook_runs=playbook_runner.list_playbook_runs(session, limit=50),
            drift=_drift(session, now, since),
        )


def _drift(
    session: Session, now: datetime, since: datetime
) -> dict[str, list[tuple[float, float]]]:
    """The largest input-drift PSI per model version and class over the chart window."""
    series: dict[str, list[tuple[float, float]]] = {}
    for model in overview.known_models(session):
        for point in aggregate.fleet_series(
            session, model=model, metric="drift_psi", since=since, limit=2000
        ):
            cls = "all classes" if point["class"] == aggregate.ALL else point["class"]
            at = datetime.fromisoformat(point["window_end"])
            at = at if at.tzinfo else at.replace(tzinfo=now.tzinfo)
            series.setdefault(f"{model} v{point['version']} {cls}", []).append(
                ((at - now).total_seconds(), float(point["value"]))
            )
    return series


@router.get("", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    if not signed_in(request):
        return _to_login()
    data = await run_in_threadpool(_overview_data, request)
    return _html(pages.overview_page(data))


@router.get("/devices", response_class=HTMLResponse)
async def devices(
    request: Request,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    hardware_class: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    if not signed_in(request):
        return _to_login()

    def read() -> overview.DevicePage:
        with request.app.state.sessions() as session:
            return overview.device_page(
                session,
                request.app.state.clock(),
                page=page,
                size=size,
                hardware_class=hardware_class,
            )

    result = await run_in_threadpool(read)
    if page > result.pages:
        return _html(pages.past_last_page(page, result.pages), status_code=404)
    return _html(pages.devices_page(result, hardware_class))
