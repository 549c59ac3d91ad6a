"""Enrolment tokens bound to a device id or an id prefix: a device no longer picks any id it likes.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrolment_tokens") as batch:
        batch.add_column(sa.Column("device_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("device_prefix", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrolment_tokens") as batch:
        batch.drop_column("device_prefix")
        batch.drop_column("device_id")
