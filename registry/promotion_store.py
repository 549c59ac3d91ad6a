"""What the promotion listener and the alias poller remember, in one small SQLite file.

- ``deliveries``: webhook delivery ids already accepted, so a replayed delivery is refused even after a
  restart. Ids older than the timestamp tolerance are pruned: such a delivery is refused as stale anyway.
- ``production_seen``: per model, the ``production`` version last handled by either path, so one alias
  change starts one rollout, whichever of the webhook and the poller sees it first.
- ``triggers``: every rollout started, with its source and flow run id (an audit trail).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)

metadata = MetaData()
deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(200), primary_key=True),
    Column("received_at", Float, nullable=False, index=True),
)
production_seen = Table(
    "production_seen",
    metadata,
    Column("model", String(500), primary_key=True),
    Column("version", String(50), nullable=True),
    Column("at", Float, nullable=False),
)
triggers = Table(
    "triggers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(500), nullable=False),
    Column("version", String(50), nullable=False),
    Column("stable_version", String(50), nullable=True),
    Column("run_id", String(200), nullable=False),
    Column("source", String(20), nullable=False),
    Column("at", Float, nullable=False),
)


class Unseen(Enum):
    """``seen()`` of a model neither path has looked at yet (distinct from ``None``: no alias)."""

    UNSEEN = "unseen"


UNSEEN = Unseen.UNSEEN
Seen = str | None | Literal[Unseen.UNSEEN]
"""The last handled ``production`` version of a model: a version, None (no alias) or UNSEEN."""


@dataclass(frozen=True)
class Trigger:
    """A rollout a promotion started, by the webhook or the poller (``source``), at ``at`` (epoch s)."""

    id: int
    model: str
    version: str
    stable_version: str | None
    run_id: str
    source: str
    at: float


def immediate_sqlite_engine(path: Path) -> Engine:
    """A SQLite engine whose transactions take the write lock at BEGIN (``BEGIN IMMEDIATE``), so a
    read-then-write across threads or processes loses no update; the file's folder is made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _write_lock_up_front(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class PromotionStore:
    """The listener's and the poller's shared memory; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.engine = immediate_sqlite_engine(path)
        metadata.create_all(self.engine)

    def remember_delivery(self, delivery_id: str, now: float, keep_s: float) -> bool:
        """Record ``delivery_id``; False when it was seen before (a replay)."""
        with self.engine.begin() as conn:
            conn.execute(delete(deliveries).where(deliveries.c.received_at < now - keep_s))
            seen = conn.execute(
                select(deliveries.c.delivery_id).where(deliveries.c.delivery_id == delivery_id)
            ).first()
            if seen is not None:
                return False
            conn.execute(insert(deliveries).values(delivery_id=delivery_id, received_at=now))
            return True

    def forget_delivery(self, delivery_id: str) -> None:
        """Let a delivery that could not be acted on be retried with the same id."""
        with self.engine.begin() as conn:
            conn.execute(delete(deliveries).where(deliveries.c.delivery_id == delivery_id))

    def seen(self, model: str) -> Seen:
        """The last handled ``production`` version of ``model``, None for none, or UNSEEN."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(production_seen.c.version).where(production_seen.c.model == model)
            ).first()
        return UNSEEN if row is None else row.version

    def set_seen(self, model: str, version: str | None, now: float) -> None:
        with self.engine.begin() as conn:
            self._write_seen(conn, model, version, now)

    def claim(self, model: str, version: str, now: float) -> tuple[bool, Seen]:
        """Mark ``version`` as handled; ``(False, version)`` if it already was, else
        ``(True, previous)`` where previous may be UNSEEN."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(production_seen.c.version).where(production_seen.c.model == model)
            ).first()
            previous = UNSEEN if row is None else row.version
            if previous == version:
                return False, previous
            self._write_seen(conn, model, version, now)
            return True, previous

    def release(self, model: str, previous: Seen, now: float) -> None:
        """Undo a claim that was not acted on."""
        with self.engine.begin() as conn:
            if previous is UNSEEN:
                conn.execute(delete(production_seen).where(production_seen.c.model == model))
            else:
                self._write_seen(conn, model, previous, now)

    def record_trigger(
        self,
        *,
        model: str,
        version: str,
        stable_version: str | None,
        run_id: str,
        source: str,
        now: float,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(triggers).values(
                    model=model,
                    version=version,
                    stable_version=stable_version,
                    run_id=run_id,
                    source=source,
                    at=now,
                )
            )

    def triggered(self) -> list[Trigger]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(triggers).order_by(triggers.c.id)).mappings().all()
        return [Trigger(**r) for r in rows]

    @staticmethod
    def _write_seen(conn: Any, model: str, version: str | None, now: float) -> None:
        changed = conn.execute(
            update(production_seen)
            .where(production_seen.c.model == model)
            .values(version=version, at=now)
        ).rowcount
        if not changed:
            conn.execute(insert(production_seen).values(model=model, version=version, at=now))
