"""The first fleet schema: tokens, devices, telemetry, desired state, artifacts, rollouts, outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.controller.storage.db import ID, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolment_tokens",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("hardware_class", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(128), primary_key=True),
        sa.Column("hardware_class", sa.String(128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("enrolled_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_devices_hardware_class", "devices", ["hardware_class"])
    op.create_table(
        "telemetry_reports",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(128), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("buffer_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("variant", sa.String(128), nullable=False),
        sa.Column("running", sa.Boolean(), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("feedback_correct", sa.Integer(), nullable=False),
        sa.Column("feedback_total", sa.Integer(), nullable=False),
        sa.Column("dropped_total", sa.BigInteger(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("device_id", "buffer_id", "seq", name="uq_telemetry_device_buffer_seq"),
    )
    op.create_index("ix_telemetry_reports_device_id", "telemetry_reports", ["device_id"])
    op.create_index("ix_telemetry_received", "telemetry_reports", ["received_at"])
    op.create_table(
        "desired_states",
        sa.Column(
            "device_id", sa.String(128), sa.ForeignKey("devices.device_id"), primary_key=True
        ),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("rollout_id", sa.String(128), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("hardware_class", sa.String(128), primary_key=True),
        sa.Column("variant", sa.String(128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("model", "version", "variant", name="uq_artifact_variant"),
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_rollouts_model", "rollouts", ["model"])
    op.create_index("ix_rollouts_phase", "rollouts", ["phase"])
    op.create_table(
        "rollout_actions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column(
            "rollout_id", sa.String(128), sa.ForeignKey("rollouts.rollout_id"), nullable=False
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("transition", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint(
            "rollout_id", "attempt", "transition", "position", name="uq_rollout_action"
        ),
    )
    op.create_index("ix_rollout_actions_pending", "rollout_actions", ["rollout_id", "done"])


def downgrade() -> None:
    for table in (
        "rollout_actions",
        "rollouts",
        "artifacts",
        "desired_states",
        "telemetry_reports",
        "devices",
        "enrolment_tokens",
    ):
        op.drop_table(table)
