"""A playbook's rate limit per model: each playbook run keeps the model of its alert, so every
replica counts a playbook's recent runs per model in the database they share.

Runs recorded before take the model from their alert's scope, so the limit counts them too.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("playbook_runs") as batch:
        batch.add_column(sa.Column("model", sa.String(128), nullable=False, server_default=""))
        batch.create_index("ix_playbook_runs_rate", ["playbook", "model", "created_at"])
    bind = op.get_bind()
    alerts = sa.table("alerts", sa.column("id", sa.Integer), sa.column("scope", sa.JSON))
    runs = sa.table("playbook_runs", sa.column("alert_id", sa.Integer), sa.column("model"))
    models: dict[str, list[int]] = {}
    for alert_id, scope in bind.execute(sa.select(alerts.c.id, alerts.c.scope)):
        found = (json.loads(scope) if isinstance(scope, str) else scope or {}).get("model")
        if found:
            models.setdefault(str(found)[:128], []).append(alert_id)
    for model, ids in models.items():
        bind.execute(runs.update().where(runs.c.alert_id.in_(ids)).values(model=model))


def downgrade() -> None:
    with op.batch_alter_table("playbook_runs") as batch:
        batch.drop_index("ix_playbook_runs_rate")
        batch.drop_column("model")
