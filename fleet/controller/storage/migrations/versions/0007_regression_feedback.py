"""Regression feedback: a report's target values, summed as the MAE gate needs them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_reports") as batch:
        batch.add_column(sa.Column("targets", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("abs_error_sum", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("abs_error_squares", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_reports") as batch:
        batch.drop_column("abs_error_squares")
        batch.drop_column("abs_error_sum")
        batch.drop_column("targets")
