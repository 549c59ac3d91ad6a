"""Wake long-polling devices in this process when their desired state changes.

A long-poll must answer within a round trip of a change (a rollback reaches online devices at once), but
changes are written by sync code in worker threads (routes, the reconcile pass). :class:`ChangeNotifier`
bridges the two: waiters are asyncio events bound to their loop, and ``notify`` may be called from any
thread. It only covers this process; other replicas' changes are seen by re-reading the database
every ``long_poll_recheck_s``, so correctness never depends on the notifier, only latency does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class ChangeNotifier:
    """Per-device wake-ups, safe to ``notify`` from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    @contextmanager
    def subscribe(self, device_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of ``device_id`` while the block runs (clear it yourself)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(device_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(device_id)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[device_id]

    def notify(self, device_ids: Iterable[str]) -> None:
        with self._lock:
            entries = [e for d in device_ids for e in self._waiters.get(d, ())]
        for loop, event in entries:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def waiting(self) -> int:
        """Number of long-polls held now (for tests and metrics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())
