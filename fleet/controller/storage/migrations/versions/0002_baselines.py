"""Baselines: the version each model's devices run outside any rollout; one variant may serve
several hardware classes (host-cpu and edge-small often take the same file).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.controller.storage.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_constraint("uq_artifact_variant", type_="unique")
    op.create_table(
        "baselines",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("baselines")
    with op.batch_alter_table("artifacts") as batch:
        batch.create_unique_constraint("uq_artifact_variant", ["model", "version", "variant"])
