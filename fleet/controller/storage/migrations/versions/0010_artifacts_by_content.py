"""Artifacts by content: the row names its bytes by sha256 in the artifact store, not by a path on
the controller's host, so the ``path`` column goes.

A row registered before this migration points at bytes the store does not hold yet: its device
download answers 404 until the variant is registered again (the rollout flow registers the stable
and the canary version's variants on every run). The downgrade cannot know the old paths and leaves
the column empty.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("path")


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("path", sa.Text(), nullable=False, server_default=""))
