"""Who is calling: the admin bearer token, and device credentials bound to the device's own paths.

Authentication is separate from the routes so every device endpoint gets the same answers: no or an
unknown credential → 401, a valid credential on another device's path → 403. The lookup goes by the
credential's hash only, so neither answer depends on whether the device in the path exists: nothing
leaks. The device lookup uses its own short session, so a long-poll holds no database connection
while it waits; a credential the database confirmed in the last minute is answered from memory
(:class:`CredentialCache`), so a device's telemetry after its long-poll costs no lookup.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fleet.controller.storage import store
from fleet.controller.storage.db import Session

_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class DeviceIdentity:
    """The authenticated device, detached from any session."""

    device_id: str
    hardware_class: str


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request, closed after the answer."""
    with request.app.state.sessions() as session:
        yield session


def _unauthorised(detail: str = "missing or invalid credentials") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=_CHALLENGE)


def _presented(credentials: HTTPAuthorizationCredentials | None, *tokens: str) -> bool:
    """Whether the bearer token is one of the configured ``tokens`` (an empty one matches none)."""
    given = credentials.credentials.encode() if credentials is not None else b""
    return bool(given) and any(t and hmac.compare_digest(given, t.encode()) for t in tokens)


def require_admin(request: Request, credentials: Bearer) -> None:
    """The admin token from ``EDGELOOP_FLEET_ADMIN_TOKEN``; with none configured, nobody is admin."""
    if not _presented(credentials, request.app.state.settings.admin_token):
        raise _unauthorised()


def require_metrics_reader(request: Request, credentials: Bearer) -> None:
    """``EDGELOOP_FLEET_METRICS_TOKEN`` (read /metrics, nothing else) or the admin token."""
    settings = request.app.state.settings
    if not _presented(credentials, settings.metrics_token, settings.admin_token):
        raise _unauthorised()


class CredentialCache:
    """Verified credentials of this process: credential hash → device, bounded and short-lived.

    Holds only what the database holds (the sha256, never the credential) and only credentials the
    database confirmed: an unknown credential is looked up every time, so a device enrolled a moment
    ago is never refused. Least recently used entries go first beyond ``max_entries``; an entry is
    trusted for ``ttl_s``, after which the database is asked again. Credentials are issued once and
    never change, so the time limit only bounds how long a process could act on a device row
    removed behind its back."""

    def __init__(self, max_entries: int = 65_536, ttl_s: float = 60.0) -> None:
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._entries: OrderedDict[str, tuple[float, DeviceIdentity]] = OrderedDict()

    def get(self, credential_hash: str) -> DeviceIdentity | None:
        entry = self._entries.get(credential_hash)
        if entry is None:
            return None
        if time.monotonic() - entry[0] >= self.ttl_s:
            del self._entries[credential_hash]
            return None
        self._entries.move_to_end(credential_hash)
        return entry[1]

    def forget(self, device_ids: Iterable[str]) -> None:
        """Drop the entries of ``device_ids`` (retired: their credentials must stop working now)."""
        gone = set(device_ids)
        for key in [k for k, (_, d) in self._entries.items() if d.device_id in gone]:
            del self._entries[key]

    def put(self, credential_hash: str, device: DeviceIdentity) -> None:
        self._entries[credential_hash] = (time.monotonic(), device)
        self._entries.move_to_end(credential_hash)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _credential_cache(request: Request) -> CredentialCache:
    """The app's cache, made on first use (one per app, so apps over other databases share none)."""
    state = request.app.state
    cache: CredentialCache | None = getattr(state, "credential_cache", None)
    if cache is None:
        cache = state.credential_cache = CredentialCache()
    return cache


def forget_devices(request: Request, device_ids: Iterable[str]) -> None:
    """This process stops accepting the credentials of ``device_ids`` at once (others within the
    cache's ``ttl_s``)."""
    _credential_cache(request).forget(device_ids)


def _device_by_hash(request: Request, credential_hash: str) -> DeviceIdentity | None:
    with request.app.state.sessions() as session:
        row = store.device_by_credential_hash(session, credential_hash)
        if row is None:
            return None
        return DeviceIdentity(device_id=row.device_id, hardware_class=row.hardware_class)


async def device_for(request: Request, credential: str) -> DeviceIdentity | None:
    """The device whose credential this is, or None. A credential verified recently is answered
    from :class:`CredentialCache` on the event loop; any other goes to the database on a worker
    thread."""
    if not credential:
        return None
    credential_hash = store.hash_secret(credential)
    cache = _credential_cache(request)
    device = cache.get(credential_hash)
    if device is None:
        device = await run_in_threadpool(_device_by_hash, request, credential_hash)
        if device is None:
            return None
        cache.put(credential_hash, device)
    return device


def is_admin(request: Request, token: str) -> bool:
    return (
        bool(token)
        and hmac.compare_digest(token.encode(), request.app.state.settings.admin_token.encode())
        and bool(request.app.state.settings.admin_token)
    )


async def current_device(request: Request, credentials: Bearer) -> DeviceIdentity:
    """The device whose credential is presented, or 401."""
    device = await device_for(request, credentials.credentials if credentials else "")
    if device is None:
        raise _unauthorised()
    return device


async def device_on_own_path(
    device_id: str, device: Annotated[DeviceIdentity, Depends(current_device)]
) -> DeviceIdentity:
    """A device may act only on its own ``/devices/{device_id}`` paths: otherwise 403. No I/O, so
    ``async``: it runs on the event loop instead of taking a worker thread per request."""
    if device.device_id != device_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="not this device's resource")
    return device


Admin = Depends(require_admin)
MetricsReader = Depends(require_metrics_reader)
SessionDep = Annotated[Session, Depends(get_session)]
CurrentDevice = Annotated[DeviceIdentity, Depends(current_device)]
OwnDevice = Annotated[DeviceIdentity, Depends(device_on_own_path)]
