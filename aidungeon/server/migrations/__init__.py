"""Alembic migrations of the server database (run by aidungeon.server.db.open_database)."""
