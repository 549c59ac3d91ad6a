"""Wake long-polling devices in this process when their desired state changes.

A long-poll must answer within a round trip of a change (a rollback reaches online devices at once), but
changes are written by sync code in worker threads (routes, the reconcile pass). :class:`ChangeNotifier`
bridges the two: waiters are asyncio events bound to their loop, and ``notify``/``publish`` may be
called from any thread. A change wakes its waiters with one callback per event loop (a broadcast), not
one per device, so re-targeting a thousand devices costs one hop into the loop.

``publish`` also hands each waiter its new desired state, built from one :class:`Targeted` document per
change (model, version, rollout, shadow plan and the signed variant of every hardware class): a woken
long-poll answers without touching the database. ``deliver`` hands waiters desired states read for
them (another replica's change, read in one batch for every device this process holds a long-poll
of). ``notify`` only wakes; the waiter then reads the database.

It only covers this process. On PostgreSQL other replicas' changes arrive by ``LISTEN``
(``storage.replicas.ChangeListener``; the app reads the states of the devices named and calls
``deliver``); and every long-poll still re-reads the database every ``long_poll_recheck_s``, so
correctness never depends on the notifier, only latency does.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from fleet.shared.protocol import Artifact, DesiredState, ShadowPlan


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
    shadow: ShadowPlan | None = None
    """What a device given ``version`` compares in shadow (``store._shadow_plan``)."""

    def desired(self, device_id: str, hardware_class: str, revision: int) -> DesiredState:
        artifact = self.artifacts.get(hardware_class)
        return DesiredState(
            device_id=device_id,
            revision=revision,
            artifact=artifact,
            rollout_id=self.rollout_id,
            shadow=self.shadow if artifact is not None else None,
            rollback=self.rollback and artifact is not None,
        )


Published = tuple[Targeted, int] | DesiredState
"""A change handed to a waiter: a shared document at the device's revision, or its whole state."""


def _revision(published: Published) -> int:
    return published.revision if isinstance(published, DesiredState) else published[1]


class Waiter:
    """One held long-poll: ``event`` is set on a change; ``published`` says what changed, if known."""

    __slots__ = ("device_id", "event", "loop", "published")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.published: Published | None = None

    def desired(self, hardware_class: str) -> DesiredState | None:
        """The published desired state, or None when the change must be read from the database."""
        if self.published is None or isinstance(self.published, DesiredState):
            return self.published
        targeted, revision = self.published
        return targeted.desired(self.device_id, hardware_class, revision)

    def clear(self) -> None:
        self.event.clear()
        self.published = None


def _wake(waiters: list[tuple[Waiter, Published | None]]) -> None:
    for waiter, published in waiters:
        held = waiter.published
        if published is None or held is None or _revision(published) >= _revision(held):
            waiter.published = published  # never replace a newer revision with an older one
        waiter.event.set()


class ChangeNotifier:
    """Per-device wake-ups, safe to ``notify`` or ``publish`` from any thread.

    It also remembers, per device, the revision this process last knew to be current (from an
    answer read from the database, or a change published or delivered here), so that a long-poll
    that presents that revision parks without reading (:meth:`current`): a change committed
    since wakes it like any other. Only the revision is kept, and nothing is ever answered from it:
    every answer is still read, published or delivered. Every change known here forgets or
    replaces the device's entry; a read that began before a change of its device is not
    remembered (:meth:`token`, :meth:`remember`), so an entry is never older than a change this
    process was told of. Other replicas' changes are told by ``LISTEN``: while that is down
    (``trusted`` says so) nothing is taken as current, and when it comes back (``notify_all``) every
    entry is forgotten."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._current: dict[str, int] = {}
        self._changed: dict[str, int] = {}  # device → sequence number of its last change here
        self._all_changed = 0
        self._sequence = 0
        self.trusted: Callable[[], bool] = lambda: True
        """Whether every change of the database reaches this notifier (set by the app: on
        PostgreSQL, while the listener for other replicas' changes is connected)."""

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

    def token(self) -> int:
        """Taken before a read of the database; :meth:`remember` it with what the read found."""
        with self._lock:
            return self._sequence

    def remember(self, state: DesiredState, token: int) -> None:
        """``state`` was read after ``token``: remember its revision as current, unless a change of
        the device became known here since the token (the read may predate it)."""
        device_id = state.device_id
        with self._lock:
            if max(self._changed.get(device_id, 0), self._all_changed) <= token:
                self._current[device_id] = state.revision

    def current(self, device_id: str, revision: int | None) -> bool:
        """Whether ``revision`` is the device's current revision as far as this process knows: a
        long-poll that presents it may park without reading (call after ``subscribe``, so a change
        from now on wakes it)."""
        if revision is None or not self.trusted():
            return False
        with self._lock:
            return self._current.get(device_id) == revision

    def notify(self, device_ids: Iterable[str]) -> None:
        """Wake the waiters of these devices; they read their new state from the database."""
        self._broadcast({d: None for d in device_ids})

    def notify_all(self) -> None:
        """Wake every waiter to read the database and forget every current revision (changes may
        have been missed, e.g. while the listener for other replicas' changes was disconnected)."""
        with self._lock:
            self._sequence += 1
            self._all_changed = self._sequence
            self._current.clear()
            self._changed.clear()
            devices = list(self._waiters)
        self.notify(devices)

    def publish(self, targeted: Targeted, revisions: Mapping[str, int]) -> None:
        """Wake the waiters of these devices with their new state: ``targeted`` at ``revisions``."""
        self._broadcast({d: (targeted, r) for d, r in revisions.items()})

    def deliver(self, states: Iterable[DesiredState]) -> None:
        """Wake the waiters of these devices with these states, read after the change committed."""
        self._broadcast({s.device_id: s for s in states})

    def held(self, device_ids: Iterable[str]) -> list[str]:
        """Those of ``device_ids`` whose long-poll this process holds now."""
        with self._lock:
            return [d for d in device_ids if d in self._waiters]

    def _broadcast(self, changes: Mapping[str, Published | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Waiter, Published | None]]]
        by_loop = defaultdict(list)
        with self._lock:
            self._sequence += 1
            for device_id, published in changes.items():
                self._changed[device_id] = self._sequence
                held = self._current.get(device_id)
                if published is None:
                    self._current.pop(device_id, None)
                elif held is None or _revision(published) > held:
                    self._current[device_id] = _revision(published)
                for waiter in self._waiters.get(device_id, ()):
                    by_loop[waiter.loop].append((waiter, published))
        for loop, waiters in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiters)

    def waiting(self) -> int:
        """Number of long-polls held now (for tests and metrics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())
