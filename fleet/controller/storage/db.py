"""The controller's tables (SQLAlchemy 2.x) and the engine/session plumbing around them.

The controller is stateless over this database: every replica reads and writes the same rows, so what a
device is told, what it reported and where each rollout stands survive a restart and are shared by
replicas behind a load balancer. The schema is owned by the Alembic migrations in ``migrations/``; these
models must match them (a unit test compares the two).

Times are stored as naive UTC and read back as aware UTC (:class:`UTCDateTime`): SQLite keeps no time
zone, and the decision core refuses naive datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.orm import (
    Session as Session,  # re-exported: code outside storage imports no SQLAlchemy
)
from sqlalchemy.types import TypeDecorator

SessionFactory = sessionmaker
"""What makes sessions (``make_sessionmaker``); callers outside storage name it by this alias."""

ID = BigInteger().with_variant(Integer(), "sqlite")
"""Autoincrement keys: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite."""


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the fleet database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class EnrolmentTokenRow(Base):
    """A one-time enrolment token: only its sha256 is kept."""

    __tablename__ = "enrolment_tokens"
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    uses_left: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    hardware_class: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_prefix: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DeviceRow(Base):
    """An enrolled device; ``credential_hash`` is the sha256 of the credential it was given once."""

    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hardware_class: Mapped[str] = mapped_column(String(128), index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """Set when an operator takes the device out of the fleet: its credential stops working and
    no rollout counts or targets it; its history stays."""
    download_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    """The controller's last failure to serve this device an artifact (its store unreachable)."""
    download_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TelemetryRow(Base):
    """One telemetry report; ``(device_id, buffer_id, seq)`` is unique, which makes ingest idempotent."""

    __tablename__ = "telemetry_reports"
    __table_args__ = (
        UniqueConstraint("device_id", "buffer_id", "seq", name="uq_telemetry_device_buffer_seq"),
        Index("ix_telemetry_received", "received_at"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    buffer_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(128))
    running: Mapped[bool] = mapped_column(Boolean)
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    inferences: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    latency: Mapped[dict[str, Any]] = mapped_column(JSON)
    feedback_correct: Mapped[int] = mapped_column(Integer)
    feedback_total: Mapped[int] = mapped_column(Integer)
    targets: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """A regressor's labelled predictions (target values) in the report, and their absolute errors'
    sum and sum of squares (the MAE gate)."""
    abs_error_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    abs_error_squares: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    dropped_total: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    refusals: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    """Artifacts the device refused (``ArtifactRefusal``), when it reported any."""


class DesiredStateRow(Base):
    """What one device should run; ``revision`` grows on every change (long-polls compare it)."""

    __tablename__ = "desired_states"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The version it was told to run before ``version``: its reports are still accepted."""
    rollout_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BaselineRow(Base):
    """The version a model's devices run outside any rollout (what ``production`` means on devices)."""

    __tablename__ = "baselines"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ArtifactRow(Base):
    """The variant of one version for one hardware class; its bytes are in the artifact store
    (``fleet.controller.artifacts``) under ``sha256``."""

    __tablename__ = "artifacts"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    hardware_class: Mapped[str] = mapped_column(String(128), primary_key=True)
    variant: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(Text, nullable=True)
    release: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    """The release counter the signature binds (``fleet.shared.signature``)."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


OPEN_ROLLOUT = "phase IN ('pending', 'progressing', 'paused')"
"""The phases of :data:`ONE_OPEN_ROLLOUT`: a rollout in one of them moves devices forward."""
ONE_OPEN_ROLLOUT = "uq_rollouts_one_open_per_model"
"""The partial unique index that lets one rollout per model be open (migration 0013)."""


class RolloutRow(Base):
    """A rollout: its persisted ``RolloutStatus`` (JSON) and a version for optimistic locking.

    At most one rollout per model is pending, progressing or paused: the database enforces it
    (:data:`ONE_OPEN_ROLLOUT`), so two replicas creating one at the same moment cannot both win."""

    __tablename__ = "rollouts"
    __table_args__ = (
        Index(
            ONE_OPEN_ROLLOUT,
            "model",
            unique=True,
            postgresql_where=text(OPEN_ROLLOUT),
            sqlite_where=text(OPEN_ROLLOUT),
        ),
    )
    rollout_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    phase: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    row_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012


class RolloutActionRow(Base):
    """The outbox: actions a decision called for, saved with the status before any is performed."""

    __tablename__ = "rollout_actions"
    __table_args__ = (
        UniqueConstraint(
            "rollout_id", "attempt", "transition", "position", name="uq_rollout_action"
        ),
        Index("ix_rollout_actions_pending", "rollout_id", "done"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.rollout_id"))
    attempt: Mapped[int] = mapped_column(Integer)
    transition: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    action: Mapped[dict[str, Any]] = mapped_column(JSON)
    done: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def normalise_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3 is the driver we ship)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for ``url``; a SQLite file gets its folder, WAL and a busy timeout.

    SQLite runs WAL with ``synchronous=FULL`` by default: every commit is on disk before a device's
    report is acknowledged, so an acknowledged report survives a power loss too. ``NORMAL``
    (``EDGELOOP_FLEET_SQLITE_SYNCHRONOUS=NORMAL``) fsyncs at checkpoints only, which takes a commit
    from milliseconds to microseconds; a crash of the controller process still loses nothing, but a
    power loss or OS crash can roll back the last commits (already acknowledged). PostgreSQL is
    unaffected by this setting."""
    if sqlite_synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous must be FULL or NORMAL, got {sqlite_synchronous!r}")
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_sessionmaker(engine: Engine, *, replica: str | None = None) -> sessionmaker:
    """Sessions over ``engine``; ``replica`` names the app in the desired-state notifications its
    sessions send (``replicas``), so its own listener can skip them."""
    return sessionmaker(engine, expire_on_commit=False, info={"replica": replica or ""})


MIGRATION_LOCK = 0x6564_6765_6C6F_6F70
"""Advisory lock key of the migrations on PostgreSQL ("edgeloop"): held to the end of the
migrating transaction, so of several replicas started at once one migrates and the others wait,
then find the schema at head."""


def migrate(url_or_engine: str | Engine) -> None:
    """``alembic upgrade head`` on this database, with a Config built in code (no alembic.ini)."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # replicas starting together migrate in turn
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    if isinstance(url_or_engine, str):
        engine.dispose()


from fleet.controller.storage import observe_tables as _observe_tables  # noqa: E402, F401  (register tables)
from fleet.controller.storage import outcomes as _outcomes  # noqa: E402, F401  (register tables)
