"""Release counters and refusals: the number a variant's signature binds beside model, version and
sha256, and the artifacts a device refused to serve, reported with its telemetry.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("release", sa.BigInteger(), nullable=False, server_default="1"))
    with op.batch_alter_table("telemetry_reports") as batch:
        batch.add_column(sa.Column("refusals", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_reports") as batch:
        batch.drop_column("refusals")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("release")
