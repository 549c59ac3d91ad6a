"""Wake long-polling devices in this process when their desired state changes.

A long-poll must answer within a round trip of a change (a rollback reaches online devices at once), but
changes are written by sync code in worker threads (routes, the reconcile pass). :class:`ChangeNotifier`
bridges the two: waiters are asyncio events bound to their loop, and ``notify``/``publish`` may be
called from any thread. A change wakes its waiters with one callback per event loop (a broadcast), not
one per device, so re-targeting a thousand devices costs one hop into the loop.

``publish`` also hands each waiter its new desired state, built from one :class:`Targeted` document per
change (model, version, rollout and the signed variant of every hardware class): a woken long-poll
answers without touching the database. ``notify`` only wakes; the waiter then reads the database.

It only covers this process. On PostgreSQL other replicas' changes arrive by ``LISTEN``
(``storage.replicas.ChangeListener`` calls ``notify``); and every long-poll still re-reads the
database every ``long_poll_recheck_s``, so correctness never depends on the notifier, only latency
does.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from fleet.shared.protocol import Artifact, DesiredState


@dataclass(frozen=True)
class Targeted:
    """What a set of devices was just pointed at: one document shared by all of them."""

    model: str | None
    version: str | None
    rollout_id: str | None
    artifacts: Mapping[str, Artifact] = field(default_factory=dict)
    """The signed variant of ``version`` by hardware class (a class without one gets no artifact)."""
    rollback: bool = False
    """``version`` is the way back to the known-good version (``store.is_rollback``)."""

    def desired(self, device_id: str, hardware_class: str, revision: int) -> DesiredState:
        artifact = self.artifacts.get(hardware_class)
        return DesiredState(
            device_id=device_id,
            revision=revision,
            artifact=artifact,
            rollout_id=self.rollout_id,
            rollback=self.rollback and artifact is not None,
        )


class Waiter:
    """One held long-poll: ``event`` is set on a change; ``published`` says what changed, if known."""

    __slots__ = ("device_id", "event", "loop", "published")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.published: tuple[Targeted, int] | None = None

    def desired(self, hardware_class: str) -> DesiredState | None:
        """The published desired state, or None when the change must be read from the database."""
        if self.published is None:
            return None
        targeted, revision = self.published
        return targeted.desired(self.device_id, hardware_class, revision)

    def clear(self) -> None:
        self.event.clear()
        self.published = None


def _wake(waiters: list[tuple[Waiter, tuple[Targeted, int] | None]]) -> None:
    for waiter, published in waiters:
        held = waiter.published
        if published is None or held is None or published[1] >= held[1]:
            waiter.published = published  # never replace a newer revision with an older one
        waiter.event.set()


class ChangeNotifier:
    """Per-device wake-ups, safe to ``notify`` or ``publish`` from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}

    @contextmanager
    def subscribe(self, device_id: str) -> Iterator[Waiter]:
        """A waiter woken on every change of ``device_id`` while the block runs (``clear`` it yourself)."""
        waiter = Waiter(device_id)
        with self._lock:
            self._waiters.setdefault(device_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(device_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[device_id]

    def notify(self, device_ids: Iterable[str]) -> None:
        """Wake the waiters of these devices; they read their new state from the database."""
        self._broadcast({d: None for d in device_ids})

    def notify_all(self) -> None:
        """Wake every waiter to read the database (changes may have been missed, e.g. while the
        listener for other replicas' changes was disconnected)."""
        with self._lock:
            devices = list(self._waiters)
        self.notify(devices)

    def publish(self, targeted: Targeted, revisions: Mapping[str, int]) -> None:
        """Wake the waiters of these devices with their new state: ``targeted`` at ``revisions``."""
        self._broadcast({d: (targeted, r) for d, r in revisions.items()})

    def _broadcast(self, changes: Mapping[str, tuple[Targeted, int] | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, tuple[Targeted, int] | None]]]
        by_loop = defaultdict(list)
        with self._lock:
            for device_id, published in changes.items():
                for waiter in self._waiters.get(device_id, ()):
                    by_loop[waiter.loop].append((waiter, published))
        for loop, waiters in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiters)

    def waiting(self) -> int:
        """Number of long-polls held now (for tests and metrics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())
