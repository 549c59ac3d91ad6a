"""Start Prefect's temporary local API early, so it boots while the flows' libraries import.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a child process on the first
flow call and waits for it (seconds on a small machine). Starting it from a thread at the top of a
command overlaps that wait with importing torch, MLflow and Great Expectations. With
``PREFECT_API_URL`` set there is nothing to start.
"""

from __future__ import annotations

import contextlib
import os
import threading


def _start() -> None:
    from prefect.server.api.server import SubprocessASGIServer

    # On failure the first flow call starts it again and reports the error itself.
    with contextlib.suppress(Exception):
        SubprocessASGIServer().start()


def start_prefect_api() -> threading.Thread:
    """A started thread; ``join()`` it before the first flow call."""
    wanted = not os.environ.get("PREFECT_API_URL")
    thread = threading.Thread(target=_start if wanted else None, name="prefect-api", daemon=True)
    thread.start()
    return thread
