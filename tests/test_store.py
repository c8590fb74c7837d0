"""The store beneath the API: properties no RPC can observe directly."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from parley_server.config import Settings
from parley_server.store.database import Database, create_engine
from parley_server.store.schema import UTCDateTime
from tests.conftest import _admin


async def test_commits_are_durable_even_where_the_database_says_otherwise(
    database_url: str,
) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(Settings(database_url=database_url))
        async with engine.connect() as connection:
            # FULL: the WAL is synced on every commit, so power loss keeps acknowledged writes.
            assert (await connection.scalar(text("PRAGMA synchronous"))) == 2
            assert (await connection.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await connection.scalar(text("PRAGMA foreign_keys"))) == 1
        await engine.dispose()
        return
    await _admin(f'ALTER DATABASE "{url.database}" SET synchronous_commit = off')
    engine = create_engine(Settings(database_url=database_url))
    async with engine.connect() as connection:
        assert (await connection.scalar(text("SHOW synchronous_commit"))) == "on"
    await engine.dispose()


async def test_sqlite_writers_queue_instead_of_failing(tmp_path: Path) -> None:
    database = Database(
        create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/q.db"))
    )
    async with database.write() as session:
        await session.execute(text("CREATE TABLE t (n INTEGER)"))

    async def read_then_write(n: int) -> None:
        # Reading first, then writing, is what fails with "database is locked" under SQLite's
        # default deferred BEGIN when another writer commits in between; writers must queue.
        async with database.write() as session:
            await session.execute(text("SELECT count(*) FROM t"))
            await asyncio.sleep(0.02)
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})

    await asyncio.gather(*(read_then_write(n) for n in range(10)))
    async with database.read() as session:
        assert (await session.scalar(text("SELECT count(*) FROM t"))) == 10
    await database.dispose()


def test_naive_datetimes_are_refused() -> None:
    column = UTCDateTime()
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2026, 1, 1), dialect=None)  # type: ignore[arg-type]
