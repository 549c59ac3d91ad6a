"""Device-scoped telemetry: the version a device ran before its desired version changed, the one
other version whose reports it may still send (late labels for the model it replaced).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("desired_states") as batch:
        batch.add_column(sa.Column("previous_version", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("desired_states") as batch:
        batch.drop_column("previous_version")
