"""Failed downloads: the controller's last failure to serve a device an artifact (its store was
unreachable), so a stage that ends without a verdict names the cause, not only the silence.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleet.controller.storage.db import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("download_error", sa.String(500), nullable=True))
        batch.add_column(sa.Column("download_error_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("download_error_at")
        batch.drop_column("download_error")
