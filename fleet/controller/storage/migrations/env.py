"""Alembic environment of the fleet controller's schema.

``fleet.controller.storage.db.migrate`` builds the Config in code and hands over an open connection in
``config.attributes["connection"]``; there is no alembic.ini to keep in sync with the settings.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from fleet.controller.storage.db import Base, normalise_url

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url given to the fleet migrations")
    engine = create_engine(normalise_url(url))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
