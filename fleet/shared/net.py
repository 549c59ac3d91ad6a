"""Network rules both ends of the device protocol share: which hosts count as this machine.

Plain HTTP is allowed only to a loopback address; the agent checks the controller's URL with this rule
and the controller checks its own listening address with it, so the two never disagree.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback IPv4/IPv6 literal (brackets allowed)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
