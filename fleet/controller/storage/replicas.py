"""Several controller processes on one database: who runs the background passes, and wake-ups.

Any number of replicas may serve devices and operators from one PostgreSQL database; a device may
ask any of them. Three things need more than shared rows, and live here because they are SQL (the
rest of the controller imports no database driver):

- **One leader for the background passes** (reconcile, observe). Each replica asks
  :meth:`Leadership.leading` before a pass; on PostgreSQL the answer is a session-level
  ``pg_try_advisory_lock`` held on a connection of its own for as long as the process leads. When
  the leader dies, even by SIGKILL, its connection closes, the server ends its session, the lock
  frees, and the next replica to ask takes over (within a pass period). A leader whose connection
  breaks stops leading at its next pass. Correctness never rests on the lock alone: a rollout is
  saved under an optimistic lock and outbox actions are claimed (``store``), so two passes racing
  for a moment (a partitioned leader, say) still make each transition once.
- **Wake-ups across replicas.** ``store.retarget`` sends ``NOTIFY`` with the devices whose desired
  state changed, in the transaction that changes it (delivered on commit, never for a rollback).
  :class:`ChangeListener` ``LISTEN`` s on a connection of its own, in a thread, and wakes the
  long-polls this replica holds for those devices. Long-polls still re-read the database every
  ``long_poll_recheck_s``: a lost connection costs latency, never a change.
- **SQLite is one process.** A second controller process on the same file would run a second
  reconcile loop and could not hear the first one's changes; :func:`hold_sqlite` refuses it at
  start with a clear message. The lock is an ``flock`` on a file beside the database, which the
  kernel releases whatever way the process ends, so a killed controller never leaves it stale.

The lock and ``LISTEN`` live in a server session, so the replicas need session-level connections to
PostgreSQL: a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``) in between would
hand the session to others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, make_url

from fleet.controller.errors import ControllerError

log = logging.getLogger(__name__)

CHANNEL = "edgeloop_desired_state"
"""The ``NOTIFY`` channel of desired-state changes."""
NOTIFY_MAX_BYTES = 7000
"""A payload stays under PostgreSQL's 8000 bytes: a large change is several notifications."""
LEADER_LOCK = int.from_bytes(
    hashlib.sha256(b"edgeloop fleet controller: background passes").digest()[:8], signed=True
)
"""The advisory lock key of the leader (one 64-bit key; no other user of the database takes it)."""
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
"""Server-side keepalives of the leader's session: a leader whose host vanishes without closing
its socket (power loss, a network cut) loses the lock in about 11 s, not the kernel's 2 hours."""


class AnotherController(ControllerError):
    """A second controller process on a SQLite file another one serves."""


class Leadership(Protocol):
    """Whether this process runs the background passes now; asked before each pass."""

    def leading(self) -> bool: ...

    @property
    def held(self) -> bool:
        """The answer of the last :meth:`leading`, without asking again (health, metrics)."""
        ...

    def close(self) -> None: ...


class Alone:
    """The one process on a SQLite database (:func:`hold_sqlite`): always the leader."""

    def leading(self) -> bool:
        return True

    @property
    def held(self) -> bool:
        return True

    def close(self) -> None:
        pass


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _dedicated(engine: Engine) -> Any:
    """A psycopg connection of its own, out of the engine's pool (so nothing else ever runs on it
    and its session, with its lock or its LISTEN, ends when it is closed), in autocommit."""
    pooled = engine.raw_connection()
    connection = pooled.driver_connection  # read before detaching: the pool's record holds it
    pooled.detach()
    assert connection is not None
    connection.rollback()  # whatever the checkout ran (a ping, the dialect's first queries)
    connection.autocommit = True
    return connection


class AdvisoryLeader:
    """The leader among the replicas on one PostgreSQL database: ``pg_try_advisory_lock``.

    Safe to ask from several threads (the reconcile and observe passes run in worker threads)."""

    def __init__(self, engine: Engine, key: int = LEADER_LOCK) -> None:
        self._engine = engine
        self._key = key
        self._lock = threading.Lock()
        self._connection: Any = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def leading(self) -> bool:
        with self._lock:
            try:
                if self._connection is None or self._connection.closed:
                    if self._held:
                        log.warning("this replica lost its leader's connection")
                    self._held = False
                    self._connection = _dedicated(self._engine)
                    for name, value in KEEPALIVE.items():
                        self._connection.execute(f"SET {name} = {int(value)}")
                if self._held:
                    self._connection.execute("SELECT 1")  # the session, and so the lock, lives
                    return True
                row = self._connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self._key,)
                ).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.warning("this replica now leads the background passes")
                return self._held
            except Exception:  # the database is away: not leading; the next pass asks again
                if self._held:
                    log.warning("this replica lost its leader's connection", exc_info=True)
                self._drop()
                return False

    def _drop(self) -> None:
        self._held = False
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()  # the session ends: the lock, if held, frees

    def close(self) -> None:
        with self._lock:
            self._drop()


def leadership(engine: Engine) -> Leadership:
    """The leadership of this process: an advisory lock on PostgreSQL; alone on SQLite."""
    return AdvisoryLeader(engine) if is_postgresql(engine) else Alone()


# --- wake-ups --------------------------------------------------------------------------------


def notify_payloads(replica: str, device_ids: list[str]) -> Iterator[str]:
    """``{"replica": ..., "devices": [...]}`` documents under :data:`NOTIFY_MAX_BYTES` each."""
    chunk: list[str] = []
    size = len(replica) + 40
    for device_id in device_ids:
        cost = len(json.dumps(device_id)) + 2
        if chunk and size + cost > NOTIFY_MAX_BYTES:
            yield json.dumps({"replica": replica, "devices": chunk})
            chunk, size = [], len(replica) + 40
        chunk.append(device_id)
        size += cost
    if chunk:
        yield json.dumps({"replica": replica, "devices": chunk})


def new_replica_id() -> str:
    """Names one app's notifications, so its listener skips its own (they were published in-process)."""
    return uuid.uuid4().hex


class ChangeListener:
    """``LISTEN`` for desired-state changes made by other replicas, in a thread; ``wake`` is called
    with the device ids of each change, ``wake_all`` after each (re)connection (a change may have
    been missed while disconnected)."""

    def __init__(
        self,
        engine: Engine,
        replica: str,
        wake: Callable[[list[str]], None],
        wake_all: Callable[[], None],
        *,
        retry_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._replica = replica
        self._wake = wake
        self._wake_all = wake_all
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="desired-state-listener", daemon=True
        )
        self.listening = threading.Event()
        """Set while the LISTEN connection is up (for tests and logs)."""

    def start(self) -> ChangeListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception:
                log.warning("desired-state listener lost its connection; retrying", exc_info=True)
            self.listening.clear()
            self._stop.wait(self._retry_s)

    def _listen(self) -> None:
        connection = _dedicated(self._engine)
        try:
            connection.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            self._wake_all()
            while not self._stop.is_set():
                for note in connection.notifies(timeout=0.5):
                    self._deliver(note.payload)
                    if self._stop.is_set():
                        break
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def _deliver(self, payload: str) -> None:
        try:
            document = json.loads(payload)
            replica, devices = document["replica"], document["devices"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a notification on %s: %r", CHANNEL, payload[:200])
            return
        if replica != self._replica and isinstance(devices, list):
            self._wake([str(d) for d in devices])


def listener(
    engine: Engine,
    replica: str,
    wake: Callable[[list[str]], None],
    wake_all: Callable[[], None],
) -> ChangeListener | None:
    """A started :class:`ChangeListener` on PostgreSQL; None on SQLite (one process hears itself)."""
    if not is_postgresql(engine):
        return None
    return ChangeListener(engine, replica, wake, wake_all).start()


# --- SQLite: one process ---------------------------------------------------------------------

_held_files: dict[str, tuple[int, int]] = {}
"""Lock files this process holds: path → (descriptor, apps using it). Several apps of one process
(tests) share the database and its lock; another process is refused."""
_held_lock = threading.Lock()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def hold_sqlite(url: str) -> Callable[[], None]:
    """Take the one-process lock of a SQLite database (nothing for PostgreSQL or memory); returns
    the release. Raises :class:`AnotherController` when another process holds it."""
    database = _sqlite_file(url)
    if database is None:
        return lambda: None
    import fcntl

    path = str(database) + ".controller-lock"
    with _held_lock:
        if path in _held_files:
            fd, users = _held_files[path]
            _held_files[path] = (fd, users + 1)
        else:
            database.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise AnotherController(
                    f"another controller process (pid {holder}) serves the SQLite database "
                    f"{database}: SQLite serves one controller process",
                    hint="stop the other one, or run replicas on PostgreSQL "
                    "(EDGELOOP_FLEET_DB_URL=postgresql://...)",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            _held_files[path] = (fd, 1)

    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()
        with _held_lock:
            fd, users = _held_files.get(path, (-1, 0))
            if users > 1:
                _held_files[path] = (fd, users - 1)
            elif users == 1:
                del _held_files[path]
                os.close(fd)  # closing the descriptor releases the flock

    return release
