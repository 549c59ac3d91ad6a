"""Who is calling: the admin bearer token, and device credentials bound to the device's own paths.

Authentication is separate from the routes so every device endpoint gets the same answers: no or an
unknown credential → 401, a valid credential on another device's path → 403. The lookup goes by the
credential's hash only, so neither answer depends on whether the device in the path exists: nothing
leaks. The device lookup uses its own short session, so a long-poll holds no database connection
while it waits.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fleet.controller import store

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


def require_admin(request: Request, credentials: Bearer) -> None:
    """The admin token from ``EDGELOOP_FLEET_ADMIN_TOKEN``; with none configured, nobody is admin."""
    expected: str = request.app.state.settings.admin_token
    if (
        not expected
        or credentials is None
        or not hmac.compare_digest(credentials.credentials.encode(), expected.encode())
    ):
        raise _unauthorised()


def current_device(request: Request, credentials: Bearer) -> DeviceIdentity:
    """The device whose credential is presented, or 401."""
    if credentials is None or not credentials.credentials:
        raise _unauthorised()
    with request.app.state.sessions() as session:
        row = store.device_by_credential(session, credentials.credentials)
        if row is None:
            raise _unauthorised()
        return DeviceIdentity(device_id=row.device_id, hardware_class=row.hardware_class)


def device_on_own_path(
    device_id: str, device: Annotated[DeviceIdentity, Depends(current_device)]
) -> DeviceIdentity:
    """A device may act only on its own ``/devices/{device_id}`` paths: otherwise 403."""
    if device.device_id != device_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="not this device's resource")
    return device


Admin = Depends(require_admin)
SessionDep = Annotated[Session, Depends(get_session)]
CurrentDevice = Annotated[DeviceIdentity, Depends(current_device)]
OwnDevice = Annotated[DeviceIdentity, Depends(device_on_own_path)]
