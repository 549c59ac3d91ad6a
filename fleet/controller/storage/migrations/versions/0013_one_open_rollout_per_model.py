"""At most one open rollout per model, enforced by the database: a partial unique index.

The API refuses a second rollout of a model while one is open, but it reads then inserts: two
replicas (or two requests in one process) creating rollouts of the same model at the same moment
could both pass the check. The index makes the database the judge, on PostgreSQL and SQLite alike.
It covers the phases in which a rollout moves devices forward (pending, progressing, paused); a
rollout rolling back is leaving, which is what ``supersede`` relies on (the API still refuses a
new rollout while one rolls back, unless it supersedes).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEX = "uq_rollouts_one_open_per_model"
WHERE = "phase IN ('pending', 'progressing', 'paused')"


def upgrade() -> None:
    doubled = op.get_bind().execute(
        sa.text(f"SELECT model FROM rollouts WHERE {WHERE} GROUP BY model HAVING COUNT(*) > 1")
    )
    models = sorted(m for (m,) in doubled)
    if models:
        raise RuntimeError(
            f"more than one open rollout of {', '.join(models)}: with the previous controller "
            "release, abort all but one of each (edgeloop rollout abort), then upgrade again"
        )
    op.create_index(
        INDEX,
        "rollouts",
        ["model"],
        unique=True,
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="rollouts")
