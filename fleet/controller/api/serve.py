"""Serving the controller: uvicorn over ``create_app``, HTTPS when given a certificate and key.

Why this boundary exists: a device credential and every model travel over this socket, so the decision
"may this listen in the clear?" is made once, here, before anything binds. Plain HTTP is allowed on a
loopback address (the embedded default, tests, a TLS-terminating sidecar on the same host); anywhere
else it needs ``tls_certfile`` + ``tls_keyfile``, or ``allow_plain_http`` said out loud (a proxy in
front terminates TLS). The agent enforces the same rule from its side (``fleet.agent.client``).

``python -m fleet.controller.api.serve`` runs it with settings from ``EDGELOOP_FLEET_*``.
"""

from __future__ import annotations

from fleet.controller.errors import ControllerError
from fleet.controller.settings import FleetSettings
from fleet.controller.storage import replicas
from fleet.shared.net import is_loopback  # one rule on both sides of the socket


def check_serving(settings: FleetSettings) -> None:
    """Raise :class:`ControllerError` for a TLS setup that is half given, or plain HTTP on a
    non-loopback host without ``allow_plain_http``."""
    cert, key = settings.tls_certfile, settings.tls_keyfile
    if (cert is None) != (key is None):
        raise ControllerError(
            "TLS needs both tls_certfile and tls_keyfile",
            hint="set EDGELOOP_FLEET_TLS_CERTFILE and EDGELOOP_FLEET_TLS_KEYFILE",
        )
    for path in (cert, key):
        if path is not None and not path.is_file():
            raise ControllerError(f"TLS file {path} does not exist")
    if cert is None and not is_loopback(settings.host) and not settings.allow_plain_http:
        raise ControllerError(
            f"refusing plain HTTP on {settings.host}: device credentials and models would travel "
            "in the clear",
            hint="give tls_certfile and tls_keyfile, or set allow_plain_http behind a TLS proxy",
        )


def serve(settings: FleetSettings) -> None:
    """Run the controller in this process until interrupted (blocking)."""
    import uvicorn

    from fleet.controller.api.app import create_app

    check_serving(settings)
    app = create_app(settings)  # a bad playbooks file stops here, before any file is made
    # a second process on one SQLite file: refused here, with the reason and no traceback (the
    # app's start takes the same lock, for a controller run under uvicorn directly)
    release = replicas.hold_sqlite(settings.db_url)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
            ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
            log_level="warning",
        )
    finally:
        release()


if __name__ == "__main__":  # pragma: no cover - a process entry point
    serve(FleetSettings())
