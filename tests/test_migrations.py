"""Alembic is the only source of the schema: the migrations build exactly what the models declare,
and undo it, on every backend."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from parley_server.store import migrate
from parley_server.store.database import create_engine
from parley_server.store.schema import Base

TABLES = {"users", "sessions", "messages", "contexts", "ratings"}


def _schema_drift(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_matches_models_and_downgrade_undoes_it(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        assert await migrate.pending_revision(engine) == ""
        await migrate.upgrade(engine)
        assert await migrate.pending_revision(engine) is None
        async with engine.connect() as connection:
            assert await connection.run_sync(_schema_drift) == []
            assert await connection.run_sync(_tables) >= TABLES

        await migrate.downgrade(engine, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == {"alembic_version"}

        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_schema_drift) == []
    finally:
        await engine.dispose()
