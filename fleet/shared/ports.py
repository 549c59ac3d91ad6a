"""A free TCP port on loopback, for processes a test, a bench or the demo starts itself."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now on 127.0.0.1 (another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
