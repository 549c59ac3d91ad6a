"""Observability: device events, input statistics, aggregated series, alerts, playbook runs, rejected
reports and quarantined devices.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.controller.storage.db import ID, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _device() -> sa.Column:
    return sa.Column(
        "device_id", sa.String(128), sa.ForeignKey("devices.device_id"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "device_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        _device(),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("feature", sa.String(128), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_device_events_device_id", "device_events", ["device_id"])
    op.create_index("ix_device_events_received", "device_events", ["received_at"])
    op.create_table(
        "input_stats",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        _device(),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_input_stats_device_id", "input_stats", ["device_id"])
    op.create_index("ix_input_stats_received", "input_stats", ["received_at"])
    op.create_table(
        "series_points",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("hardware_class", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("window_end", UTCDateTime(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.UniqueConstraint(
            "model",
            "version",
            "hardware_class",
            "label",
            "metric",
            "window_end",
            name="uq_series_point",
        ),
    )
    op.create_index(
        "ix_series_lookup",
        "series_points",
        ["model", "version", "hardware_class", "metric", "window_end"],
    )
    op.create_table(
        "alerts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("scope_key", sa.String(512), nullable=False),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Integer(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_alerts_open", "alerts", ["kind", "scope_key", "status"])
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_table(
        "playbook_runs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("playbook", sa.String(128), nullable=False),
        sa.Column("alert_id", ID, sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("playbook", "alert_id", "action", name="uq_playbook_run"),
    )
    op.create_index("ix_playbook_runs_alert_id", "playbook_runs", ["alert_id"])
    op.create_index("ix_playbook_runs_due", "playbook_runs", ["status", "next_attempt_at"])
    op.create_table(
        "rejected_reports",
        sa.Column(
            "device_id", sa.String(128), sa.ForeignKey("devices.device_id"), primary_key=True
        ),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "quarantined_devices",
        sa.Column(
            "device_id", sa.String(128), sa.ForeignKey("devices.device_id"), primary_key=True
        ),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "quarantined_devices",
        "rejected_reports",
        "playbook_runs",
        "alerts",
        "series_points",
        "input_stats",
        "device_events",
    ):
        op.drop_table(table)
