"""The engine (one per process) and the transactions every store operation runs in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from parley_server.config import Settings
from parley_server.errors import Aborted, Unavailable

log = logging.getLogger(__name__)

# How long an SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL SQLSTATEs meaning "a concurrent transaction won; run yours again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_WRITE_OPTION = "parley_write"


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the process's engine for settings.database_url."""
    if settings.is_sqlite:
        path = settings.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(settings.database_url)
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # A connection broken by a database restart is noticed and replaced before use.
        pool_pre_ping=True,
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # parley acknowledges a write only once it is durable; with synchronous_commit=off (set for
        # the server or the database) a commit could be lost in a crash after the answer was sent.
        # Stronger settings (remote_write, remote_apply) are kept.
        cursor = dbapi_connection.cursor()
        cursor.execute("SHOW synchronous_commit")
        (setting,) = cursor.fetchone()
        if setting == "off":
            log.warning("synchronous_commit is off in the database; parley sets it on")
            cursor.execute("SET synchronous_commit = on")
        cursor.close()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let the "begin" hook below emit BEGIN itself (the driver's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before parley acknowledges it, even across power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A writer takes the lock up front; a deferred transaction that reads first and writes later
        # can fail at once with SQLITE_BUSY instead of waiting for busy_timeout.
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One short transaction per store operation, with outages translated into domain errors."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        # Several reads that must agree: one snapshot (SQLite's WAL read transactions already are).
        self._snapshot = (
            async_sessionmaker(
                engine.execution_options(isolation_level="REPEATABLE READ"),
                expire_on_commit=False,
            )
            if self.dialect == "postgresql"
            else self._reader
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with _translated_errors(), self._reader() as session, session.begin():
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction whose statements all see the database at one moment."""
        async with _translated_errors(), self._snapshot() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits when the block ends; the caller answers only after that."""
        async with _translated_errors(), self._writer() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    try:
        yield
    except exc.DBAPIError as error:
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            raise Aborted(
                "the operation conflicted with a concurrent one; retry it",
                reason="CONCURRENT_CONFLICT",
            ) from error
        if error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        ):
            log.warning("database unavailable: %s", error)
            raise Unavailable("the database is unavailable; retry with backoff") from error
        raise
    except (exc.TimeoutError, OSError) as error:
        # Pool exhausted, or the database refused the connection.
        log.warning("database unavailable: %s", error)
        raise Unavailable("the database is unavailable; retry with backoff") from error
