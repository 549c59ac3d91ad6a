"""Tables of fleet observability: device events, input statistics, aggregated series, alerts,
playbook runs, rejected reports and quarantined devices.

Registered on the controller's ``Base.metadata`` (``db`` imports this module), so migration 0003 and
these models are compared by the same schema test as the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet.controller.storage.db import ID, Base, UTCDateTime


def row_dict(row: Base, *, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The row's columns in table order as a JSON-ready dict (times in ISO 8601)."""
    out: dict[str, Any] = {}
    for column in row.__table__.columns:
        if column.key not in leave_out:
            value = getattr(row, column.key)
            out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


class DeviceEventRow(Base):
    """A detector's event as a device reported it, with the version that raised it."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_received", "received_at"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    feature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    window_s: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InputStatsRow(Base):
    """Per-feature input statistics (count, mean, std) of a telemetry report that carried events."""

    __tablename__ = "input_stats"
    __table_args__ = (Index("ix_input_stats_received", "received_at"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), index=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    rows: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SeriesPointRow(Base):
    """One window of one metric of one scope (model, version, class, label; ``*`` for all)."""

    __tablename__ = "series_points"
    __table_args__ = (
        UniqueConstraint(
            "model",
            "version",
            "hardware_class",
            "label",
            "metric",
            "window_end",
            name="uq_series_point",
        ),
        Index("ix_series_lookup", "model", "version", "hardware_class", "metric", "window_end"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    hardware_class: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(256))
    metric: Mapped[str] = mapped_column(String(64))
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    value: Mapped[float] = mapped_column(Float)
    devices: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)


class AlertRow(Base):
    """An alert; at most one is open per ``(kind, scope_key)``, repeats count as ``occurrences``."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_open", "kind", "scope_key", "status"),)
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    scope_key: Mapped[str] = mapped_column(String(512))
    scope: Mapped[dict[str, str]] = mapped_column(JSON)
    value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    occurrences: Mapped[int] = mapped_column(Integer)
    suppressed: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PlaybookRunRow(Base):
    """One action of one playbook for one alert; the unique key makes it run once per alert.
    ``status``: pending, running, succeeded, skipped (nothing to act on), failed, or limited (held
    back by the playbook's rate limit per model; ``result`` says why)."""

    __tablename__ = "playbook_runs"
    __table_args__ = (
        UniqueConstraint("playbook", "alert_id", "action", name="uq_playbook_run"),
        Index("ix_playbook_runs_due", "status", "next_attempt_at"),
        Index("ix_playbook_runs_rate", "playbook", "model", "created_at"),
    )
    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    playbook: Mapped[str] = mapped_column(String(128))
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128), default="", server_default="")
    """The alert's model: what a playbook's rate limit counts per (migration 0011)."""
    cause: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RejectedReportsRow(Base):
    """Telemetry batches a device sent with garbage statistics: how many, and the last reason."""

    __tablename__ = "rejected_reports"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    last_reason: Mapped[str] = mapped_column(Text)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class QuarantineRow(Base):
    """A device a playbook quarantined: it runs ``version`` and takes no new rollout targets."""

    __tablename__ = "quarantined_devices"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
