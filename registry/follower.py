"""The registry follower: the controller's rollout outcomes, written to MLflow, each exactly once in effect.

The controller decides how a rollout ended and keeps it in its outcome feed (``GET /v1/outcomes``);
it never talks to MLflow. The rollout flow used to be the only writer of outcomes to the registry,
so a flow run killed mid-rollout (a worker restarted, a deadline) left the registry claiming a
version the fleet had rolled back. The follower reads the feed in order and, for each outcome, sets
the version's ``edgeloop.rollout.status`` and ``.reason`` and moves ``production`` as the outcome
says (:func:`apply_outcome`), then remembers the outcome's feed id (:class:`FollowerStore`).

Exactly once, in effect: the cursor advances only after MLflow accepted every write of an outcome,
so a follower killed in between applies that outcome again when it restarts, and applying one twice
changes nothing (each write is skipped when the registry already holds its value). MLflow or the
controller unreachable: the pass fails, the follower waits (exponential back-off) and tries the same
outcome again; it never moves past an outcome it could not write.

``production`` moves only from where the outcome expects it, so a follower that was down while
people promoted another version never undoes their promotion with an old outcome:

- ``succeeded``: production goes to the version when it is on the stable version or unset (a rollout
  started on the controller directly); on the version already, it stays.
- otherwise: production goes back to the stable version when it is still on the version
  (:func:`registry.outcomes.restore_production`).

Tags are written before the alias: the promotion listener, seeing ``production`` land on a version
whose rollout succeeded, starts nothing (:mod:`registry.promotion_guard`).

The rollout flow may still write the same outcome when it follows its rollout to the end; it writes
the reason the controller recorded, so both writers leave the same values.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from edgeloop.core.errors import RegistryError
from fleet.shared.admin_protocol import OutcomeEntry, OutcomePage
from fleet.shared.backoff import backoff_delay
from registry.outcomes import outcome_tags, production_version, restore_production
from registry.promotion_store import immediate_sqlite_engine
from registry.publish import PRODUCTION

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("edgeloop.follower")

STATE_FILE = "registry-follower.db"
"""The follower's store, under the edgeloop home."""

APPLIED = "applied"
UNCHANGED = "unchanged"
NOT_IN_REGISTRY = "not in the registry"


class FeedBehindCursor(RegistryError):
    """The controller's feed ends below the follower's cursor: it would never hear of the next
    outcomes, so it stops to say so instead of waiting for ids that were given out already."""


class OutcomeFeed(Protocol):
    """What the follower needs of the controller (``fleet.admin.AdminClient`` is one)."""

    def outcomes(self, after: int = 0, limit: int = 100) -> OutcomePage: ...


# --- applying one outcome ------------------------------------------------------------------------


def apply_outcome(client: MlflowClient, outcome: OutcomeEntry) -> tuple[str, list[str]]:
    """Write ``outcome`` to the registry; returns the result and the writes made.

    The result is ``applied`` (something was written), ``unchanged`` (the registry held it all
    already: an outcome applied twice) or ``not in the registry`` (MLflow does not know the
    version: a rollout of a model registered elsewhere; nothing to write). Any other failure
    raises, and the outcome is to be tried again."""
    from mlflow.exceptions import MlflowException

    model, version = outcome.model, outcome.version
    try:
        tags = client.get_model_version(model, version).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return NOT_IN_REGISTRY, []
        raise
    writes: list[str] = []
    for key, value in outcome_tags(outcome.status, outcome.reason).items():
        if tags.get(key) != value:
            client.set_model_version_tag(model, version, key, value)
            writes.append(f"tag {key}")
    production = production_version(client, model)
    if outcome.status == "succeeded":
        if production in (None, outcome.stable_version):
            client.set_registered_model_alias(model, PRODUCTION, version)
            writes.append(f"{PRODUCTION} {production or 'unset'} -> {version}")
    elif production == version:
        restore_production(client, model, outcome.stable_version, replacing=version)
        writes.append(f"{PRODUCTION} {version} -> {outcome.stable_version}")
    return (APPLIED if writes else UNCHANGED), writes


# --- the follower's memory -----------------------------------------------------------------------

metadata = MetaData()
state_table = Table(
    "state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("cursor", Integer, nullable=False),
    Column("caught_up_at", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_at", Float, nullable=True),
)
applied_table = Table(
    "applied",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("rollout_id", String(256), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("model", String(500), nullable=False),
    Column("version", String(50), nullable=False),
    Column("status", String(32), nullable=False),
    Column("result", String(64), nullable=False),
    Column("at", Float, nullable=False),
)


@dataclass(frozen=True)
class FollowerState:
    """Where the follower stands: the last feed id applied, when it last reached the end of the
    feed, and the error of its last failed pass (cleared by the next pass that gets through)."""

    cursor: int
    caught_up_at: float | None
    error: str | None
    error_at: float | None


@dataclass(frozen=True)
class AppliedOutcome:
    """One outcome the follower wrote (or found written, or found no version for)."""

    id: int
    rollout_id: str
    attempt: int
    model: str
    version: str
    status: str
    result: str
    at: float


class FollowerStore:
    """The cursor, the log of outcomes applied and the follower's health, in one SQLite file.

    The cursor and the log entry of an outcome are written in one transaction, so the log holds
    each feed id at most once, and the cursor only ever moves forward."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = immediate_sqlite_engine(path)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            if conn.execute(select(state_table.c.id)).first() is None:
                conn.execute(insert(state_table).values(id=1, cursor=0))

    def close(self) -> None:
        self.engine.dispose()

    def state(self) -> FollowerState:
        with self.engine.begin() as conn:
            row = conn.execute(select(state_table).where(state_table.c.id == 1)).one()
        return FollowerState(row.cursor, row.caught_up_at, row.error, row.error_at)

    def cursor(self) -> int:
        """The feed id of the last outcome applied (0: none yet)."""
        return self.state().cursor

    def advance(self, outcome: OutcomeEntry, result: str, now: float) -> bool:
        """Record ``outcome`` as applied and move the cursor to it; False (and nothing written)
        when the cursor is there already (another follower on the same file got there first)."""
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(state_table)
                .where(state_table.c.id == 1, state_table.c.cursor < outcome.id)
                .values(cursor=outcome.id)
            ).rowcount
            if not moved:
                return False
            conn.execute(
                insert(applied_table).values(
                    id=outcome.id, rollout_id=outcome.rollout_id, attempt=outcome.attempt,
                    model=outcome.model, version=outcome.version, status=outcome.status,
                    result=result, at=now,
                )
            )  # fmt: skip
        return True

    def caught_up(self, now: float) -> None:
        """A pass read the feed to its end and wrote everything in it."""
        with self.engine.begin() as conn:
            conn.execute(
                update(state_table)
                .where(state_table.c.id == 1)
                .values(caught_up_at=now, error=None, error_at=None)
            )

    def failed(self, error: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(state_table)
                .where(state_table.c.id == 1)
                .values(error=error[:2000], error_at=now)
            )

    def applied(self) -> list[AppliedOutcome]:
        with self.engine.begin() as conn:
            rows = conn.execute(select(applied_table).order_by(applied_table.c.id)).mappings().all()
        return [AppliedOutcome(**r) for r in rows]


def store_path(home: Path) -> Path:
    return home / STATE_FILE


def healthy(path: Path, within_s: float, now: float | None = None) -> bool:
    """Whether the follower whose store is ``path`` reached the end of the feed within
    ``within_s`` seconds, with no failed pass since (`edgeloop serve`'s health check). Reads the
    file without writing to it."""
    if not path.is_file():
        return False
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT caught_up_at, error_at FROM state WHERE id = 1").fetchone()
    if row is None or row[0] is None:
        return False
    caught_up_at, error_at = row
    now = time.time() if now is None else now
    return now - caught_up_at <= within_s and (error_at is None or error_at < caught_up_at)


# --- the loop ------------------------------------------------------------------------------------


def follow_once(
    feed: OutcomeFeed,
    client: MlflowClient,
    store: FollowerStore,
    *,
    page: int = 100,
    clock: Callable[[], float] = time.time,
    report: Callable[[OutcomeEntry, str, list[str]], None] = lambda *_: None,
) -> int:
    """Apply every outcome after the cursor, in feed order; returns how many were applied.

    Raises on the first outcome that could not be read or written: the cursor stays before it."""
    count = 0
    while True:
        cursor = store.cursor()
        found = feed.outcomes(after=cursor, limit=page)
        if found.head < cursor:
            raise FeedBehindCursor(
                f"the controller's outcome feed ends at {found.head}, but this follower applied "
                f"outcomes up to {cursor}: it is another controller database, or one started "
                "anew",
                hint=f"to follow this controller from its first outcome, delete {store.path}",
            )
        for outcome in found.outcomes:
            result, writes = apply_outcome(client, outcome)
            if store.advance(outcome, result, clock()):
                count += 1
                report(outcome, result, writes)
        if len(found.outcomes) < page:
            store.caught_up(clock())
            return count


def run_follower(
    feed: OutcomeFeed,
    client: MlflowClient,
    store: FollowerStore,
    *,
    interval_s: float,
    max_backoff_s: float = 30.0,
    stop: threading.Event | None = None,
    check: Callable[[], None] = lambda: None,
    report: Callable[[OutcomeEntry, str, list[str]], None] = lambda *_: None,
    on_error: Callable[[str, float], None] = lambda *_: None,
) -> int:
    """Follow the feed every ``interval_s`` until ``stop`` is set; returns the outcomes applied.

    ``check`` runs before each pass (a fast reachability check of MLflow). A failed pass is recorded in the store and retried after a back-off of
    ``interval_s`` doubling up to ``max_backoff_s``; it never skips the outcome it failed on."""
    stop = stop or threading.Event()
    total, failures = 0, 0
    while not stop.is_set():
        try:
            check()
            total += follow_once(feed, client, store, report=report)
        except Exception as exc:
            failures += 1
            text = str(exc).strip()
            message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
            store.failed(message, time.time())
            delay = backoff_delay(
                failures, initial_s=interval_s, max_s=max(max_backoff_s, interval_s), jitter=0.2
            )
            log.warning("follower pass failed (%s); again in %.1f s", message, delay)
            on_error(message, delay)
            stop.wait(delay)
            continue
        failures = 0
        stop.wait(interval_s)
    return total
