"""Alembic's environment: migrations run on the connection `db.open_database` hands over."""

from __future__ import annotations

from alembic import context

from aidungeon.server.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("aidungeon's migrations run through aidungeon.server.db.open_database")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
