"""The rollout outcome feed (``rollout_outcomes``) the registry follower reads by id.

Outcomes recorded before this revision are not copied in: the rollout flow wrote those to the
registry itself, and a follower started on an upgraded controller begins with the next outcome.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.controller.storage.db import ID, UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_outcomes",
        sa.Column("id", ID, primary_key=True, autoincrement=False),
        sa.Column(
            "rollout_id", sa.String(128), sa.ForeignKey("rollouts.rollout_id"), nullable=False
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("transition", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("stable_version", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("rollout_id", "attempt", "transition", name="uq_rollout_outcome"),
    )


def downgrade() -> None:
    op.drop_table("rollout_outcomes")
