"""The engine (one per process) and the transactions every store operation runs in."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
from sqlalchemy import ARRAY, Select, Text, bindparam, event, exc, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection
from sqlalchemy.util import await_only, greenlet_spawn

from parley_server.errors import Aborted, Unavailable
from parley_server.logs import describe, throttled
from parley_server.store.changes import CHANNEL, ChangeHub, ChangeKey, notification

log = logging.getLogger(__name__)

# How long an SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL SQLSTATEs meaning "a concurrent transaction won; run yours again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# Connection exceptions (08), insufficient resources (53, e.g. too many connections), and the
# server shutting down (57P01 admin, 57P02 crash) or starting up (57P03 cannot connect now).
_OUTAGE_SQLSTATE_CLASSES = {"08", "53"}
_OUTAGE_SQLSTATES = {"57P01", "57P02", "57P03"}
_WRITE_OPTION = "parley_write"


def create_engine(
    url: str, *, pool_size: int = 16, max_overflow: int = 0, pool_timeout: float = 10.0
) -> AsyncEngine:
    """Create the process's engine for a SQLAlchemy async URL; the pool settings apply to
    PostgreSQL (SQLite opens a connection per use)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, hide_parameters=True)
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        hide_parameters=True,  # errors would otherwise carry users' data into the log
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: Any) -> None:
        # A connection the database closed (a restart, an idle timeout) is already known closed to
        # asyncpg, which saw the EOF while it sat in the pool: replace it before use. This costs no
        # round trip, unlike pool_pre_ping, which costs one per checkout.
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("connection closed by the database")

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # parley acknowledges a write only once it is durable; with synchronous_commit=off (set for
        # the server or the database) a commit could be lost in a crash after the answer was sent.
        # Stronger settings (remote_write, remote_apply) are kept. On the asyncpg connection
        # itself, which autocommits: through the adapter's cursor, a transaction would begin and
        # stay open into the connection's first use (and a rollback would undo the SET).
        driver: asyncpg.Connection = dbapi_connection.driver_connection
        if await_only(driver.fetchval("SHOW synchronous_commit")) == "off":
            log.warning("synchronous_commit is off in the database; parley sets it on")
            await_only(driver.execute("SET synchronous_commit = on"))
        # parley's statements find their rows through indexes that match their equality
        # conditions and their order, whatever the values, so one generic plan per connection
        # serves each. Left to choose, PostgreSQL planned a statement anew at every execution
        # whenever a plan for the values at hand looked cheaper: for a LIMIT given as a parameter
        # once sessions hold ten times the rows asked for, for a short append batch's arrays.
        # The planning cost more than the run.
        await_only(driver.execute("SET plan_cache_mode = force_generic_plan"))


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Let the "begin" hook below emit BEGIN itself (the driver's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before parley acknowledges it, even across power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
        # The sessions a write transaction changed, collected by this connection's triggers (see
        # on_begin) and published by Database.write once it has committed.
        changed: list[ChangeKey] = []
        record.info[_SQLITE_CHANGED] = changed
        dbapi_connection.create_function(
            "parley_history_changed",
            2,
            lambda tenant, session_id: changed.append((tenant, session_id)),
        )

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A writer takes the lock up front; a deferred transaction that reads first and writes later
        # can fail at once with SQLITE_BUSY instead of waiting for busy_timeout.
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        if not immediate:
            return
        connection.info[_SQLITE_CHANGED].clear()
        # TEMP triggers live with the connection, not in the file: made once per connection, as
        # soon as the schema has a sessions table.
        if (
            not connection.info.get(_SQLITE_TRIGGERS)
            and connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'"
            ).first()
        ):
            for operation, row in (("UPDATE", "NEW"), ("DELETE", "OLD")):
                connection.exec_driver_sql(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS parley_history_{operation.lower()}"
                    f" AFTER {operation} ON main.sessions BEGIN"
                    f" SELECT parley_history_changed({row}.tenant_id, {row}.id); END"
                )
            connection.info[_SQLITE_TRIGGERS] = True

    @event.listens_for(engine.sync_engine, "rollback")
    def on_rollback(connection: Connection) -> None:
        # The triggers, made inside a transaction, went with it: the next writer makes them.
        connection.info.pop(_SQLITE_TRIGGERS, None)


_SQLITE_CHANGED = "parley_history_changed"
_SQLITE_TRIGGERS = "parley_history_triggers"


Rows = Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Preferred:
    """A read in up to two statements: `statement`, cheaper, which answers no rows when it
    cannot answer in full, and then `fallback`, which always can. Both read the same snapshot
    when read in one (Database.snapshot)."""

    statement: Select[Any]
    fallback: Select[Any]


Read = Select[Any] | Preferred
# Runs a read with named bind parameters (Database.snapshot).
Reader = Callable[[Read, Mapping[str, Any]], Awaitable[Rows]]


@dataclass(frozen=True, slots=True)
class _DriverQuery:
    sql: str
    names: tuple[str, ...]  # the bind parameter behind each $n
    bound: Mapping[str, Any]  # values the statement carries itself (literal limits, say)

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] if name in values else self.bound[name] for name in self.names]


async def _read(read: Read, run: Callable[[Select[Any]], Awaitable[Rows]]) -> Rows:
    """The rows of `read`, each of its statements run by `run`."""
    if isinstance(read, Preferred):
        return await run(read.statement) or await run(read.fallback)
    return await run(read)


async def _session_rows(session: AsyncSession, read: Read, values: Mapping[str, Any]) -> Rows:
    async def run(statement: Select[Any]) -> Rows:
        return cast(Rows, (await session.execute(statement, values)).mappings().all())

    return await _read(read, run)


def _discard(pooled: PoolProxiedConnection) -> None:
    """Close it, and give its place in the pool back (for a new one, when needed)."""
    pooled.invalidate()
    pooled.close()


class Database:
    """One short transaction per store operation, with outages translated into domain errors."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # Wakes watchers of a session's history (fed by PostgresListener on PostgreSQL).
        self.changes = ChangeHub(in_process=self.dialect == "sqlite")
        self._reader = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite takes one writer at a time. Writers of this process queue here, in order, instead
        # of in SQLite's busy handler, which sleeps with growing back-off and made tail latency
        # soar; busy_timeout still covers writers of other processes.
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # Statements (built once per shape, with named bind parameters) compiled for asyncpg.
        self._driver_queries: dict[Select[Any], _DriverQuery] = {}
        self._writer = async_sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        self._dedicated: list[DedicatedConnection] = []
        self._unpooled: AsyncEngine | None = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with translated_errors(), self._reader() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self, *, tells: object | None = None) -> AsyncIterator[AsyncSession]:
        """A transaction that commits when the block ends; the caller answers only after that.
        tells: the ChangeHub observer that the caller tells of what it changes itself."""
        async with (
            self._write_lock or nullcontext(),
            translated_errors(),
            self._writer() as session,
        ):
            changed: list[ChangeKey] = []
            try:
                async with session.begin():
                    yield session
                    changed = await self._changed(session)
                    # Readers see the commit before it is published: meanwhile they must not
                    # be answered from what was kept of what it changed.
                    self.changes.changing(changed, told=tells)
            finally:
                self.changes.publish(changed, told=tells)

    async def _changed(self, session: AsyncSession) -> list[ChangeKey]:
        """SQLite: what this transaction changed, as its triggers and announce() collected it
        (on PostgreSQL, NOTIFY announces it)."""
        if self.dialect != "sqlite":
            return []
        changed: list[ChangeKey] = (await session.connection()).info[_SQLITE_CHANGED]
        taken = list(changed)
        changed.clear()
        return taken

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """PostgreSQL only: an asyncpg connection of the pool itself, for hot-path statements
        that are atomic on their own (asyncpg autocommits) or that begin their own transaction.
        Checked out of the pool directly: SQLAlchemy's Connection around it, and its
        per-statement work, would cost several times what the statements themselves do here."""
        async with translated_errors():
            # raw_connection: the pool's checkout, with errors wrapped as SQLAlchemy wraps them.
            pooled = await greenlet_spawn(self.engine.sync_engine.raw_connection)
            driver_connection = cast(asyncpg.Connection, pooled.driver_connection)
            reusable = False
            try:
                yield driver_connection
                reusable = not driver_connection.is_in_transaction()
            except Exception as error:
                reusable = not is_outage(error) and not driver_connection.is_in_transaction()
                raise
            finally:
                # Cancelled mid-statement, broken, or left inside a transaction (which the pool's
                # reset knows nothing of, as it was begun on the driver connection): discard it,
                # never hand it out again.
                if reusable:
                    await greenlet_spawn(pooled.close)
                else:
                    await asyncio.shield(greenlet_spawn(_discard, pooled))

    def dedicated(self, *, tells: object | None = None) -> DedicatedConnection:
        """PostgreSQL only: a driver connection of its own, outside the pool (see
        DedicatedConnection); closed when the database is disposed of. tells: the ChangeHub
        observer that its user tells of what it changes itself, so that the NOTIFYs of its
        commits do not reach that observer (ChangeHub.own_writers)."""
        if self._unpooled is None:
            # Made as the pool makes its connections (URL, hooks), but never waiting for a free
            # place in it, also when readers hold every pooled connection.
            self._unpooled = create_async_engine(
                self.engine.url, poolclass=NullPool, hide_parameters=True
            )
            _configure_postgresql(self._unpooled)
        connection = DedicatedConnection(
            self._unpooled, announce=None if tells is None else (self.changes.own_writers, tells)
        )
        self._dedicated.append(connection)
        return connection

    async def fetch(self, statement: Read, values: Mapping[str, Any]) -> Rows:
        """Rows of a read-only statement with named bind parameters. On PostgreSQL it runs
        compiled once, on the driver connection, at a fraction of SQLAlchemy's per-row cost."""
        if self.dialect == "postgresql":
            async with self.driver() as connection:
                return await self._driver_rows(connection, statement, values)
        async with self.read() as session:
            return await _session_rows(session, statement, values)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Reader]:
        """A reader of read-only statements that all see the database at one moment, so that
        what one read answers can decide which statement comes next."""
        if self.dialect == "postgresql":
            async with (
                self.driver() as connection,
                connection.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield functools.partial(self._driver_rows, connection)
            return
        async with self.read() as session:  # an SQLite WAL read transaction is one snapshot
            yield functools.partial(_session_rows, session)

    async def _driver_rows(
        self, connection: asyncpg.Connection, read: Read, values: Mapping[str, Any]
    ) -> Rows:
        async def run(statement: Select[Any]) -> Rows:
            query = self._compiled(statement)
            # asyncpg Records are mappings by column name
            return cast(Rows, await connection.fetch(query.sql, *query.arguments(values)))

        return await _read(read, run)

    def _compiled(self, statement: Select[Any]) -> _DriverQuery:
        query = self._driver_queries.get(statement)
        if query is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            query = _DriverQuery(
                str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)
            )
            self._driver_queries[statement] = query
        return query

    async def dispose(self) -> None:
        for connection in self._dedicated:
            await connection.close()
        if self._unpooled is not None:
            await self._unpooled.dispose()
        await self.engine.dispose()


class DedicatedConnection:
    """A driver connection for one steady user (a write lane), outside the pool: its user checks
    nothing out of the pool for a run of statements, never waits for readers to give a connection
    back. A connection that broke, was cut off mid-statement or was left inside a transaction is
    closed, and another made at the next use. `announce`, when given, is a register and an
    entry: the register holds the entry under the server process id of the connection while it
    is open."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        announce: tuple[dict[int, object], object] | None = None,
    ) -> None:
        self._engine = engine
        self._announce = announce
        self._connection: asyncpg.Connection | None = None

    @asynccontextmanager
    async def use(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection, for one user at a time."""
        async with translated_errors():
            connection = await self._open()
            try:
                yield connection
            except BaseException as error:
                if (
                    not isinstance(error, Exception)  # cut off mid-statement
                    or is_outage(error)
                    or connection.is_in_transaction()
                ):
                    self._discard()
                raise
            if connection.is_in_transaction():  # begun, and left for no one to end
                self._discard()

    async def _open(self) -> asyncpg.Connection:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        # A connection the database closed (a restart) is known closed once asyncpg saw its EOF.
        self._discard()
        pooled = await greenlet_spawn(self._engine.sync_engine.raw_connection)
        connection = cast(asyncpg.Connection, pooled.driver_connection)
        pooled.detach()
        self._connection = connection
        if self._announce is not None:
            register, entry = self._announce
            pid = connection.get_server_pid()
            register[pid] = entry
            # Also when the database ends it while it is idle: its pid may be another's later.
            connection.add_termination_listener(lambda _: self._unannounce(pid))
        return connection

    def _discard(self) -> None:
        if self._connection is not None:
            self._unannounce(self._connection.get_server_pid())
            self._connection.terminate()
            self._connection = None

    def _unannounce(self, pid: int) -> None:
        if self._announce is not None:
            register, entry = self._announce
            if register.get(pid) is entry:
                del register[pid]

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._unannounce(connection.get_server_pid())
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):  # a broken connection: close() terminated it
                await connection.close(timeout=5)


_NOTIFY_EACH = text("SELECT pg_notify(:channel, payload) FROM unnest(:payloads) AS payload")


async def announce(session: AsyncSession, changed: Sequence[ChangeKey]) -> None:
    """Announce, when this write transaction commits, changes that the sessions trigger does not
    see (shared state, a session's contexts, messages that lost their author) to the ChangeHub
    of every process."""
    if not changed:
        return
    connection = await session.connection()
    if connection.dialect.name == "sqlite":
        connection.info[_SQLITE_CHANGED].extend(changed)
        return
    await session.execute(
        _NOTIFY_EACH.bindparams(
            bindparam("payloads", type_=ARRAY(Text)),
            channel=CHANNEL,
            payloads=[notification(key) for key in changed],
        )
    )


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Database failures as domain errors: outages as Unavailable, lost races as Aborted."""
    try:
        yield
    except exc.TimeoutError as error:  # the pool had no free connection in time
        raise _pool_exhausted() from error
    except (
        exc.DBAPIError,
        exc.EmulatedDBAPIException,  # the driver's adapted errors, raised outside a Connection
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        OSError,
    ) as error:
        if _sqlstate(error) in _RETRYABLE_SQLSTATES:
            raise Aborted.concurrent_conflict() from error
        if is_outage(error):
            raise _outage(error) from error
        raise


def _sqlstate(error: BaseException) -> str:
    """The SQLSTATE of a PostgreSQL error, raw (asyncpg) or wrapped (SQLAlchemy); "" if none."""
    for candidate in (error, getattr(error, "orig", None)):
        sqlstate = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(sqlstate, str):
            return sqlstate
    return ""


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached or used right now (not that a
    statement was wrong): the connection-exception class 08, insufficient resources (53), the
    server shutting down or starting (57P01..57P03), a broken connection, or SQLite's
    operational errors (a locked or unreadable file)."""
    sqlstate = _sqlstate(error)
    if sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES or sqlstate in _OUTAGE_SQLSTATES:
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, exc.InterfaceError):
            return True
        if isinstance(error, exc.OperationalError) and not sqlstate:
            return True  # SQLite: database is locked, disk I/O error, unable to open
        # The driver's own exception, under SQLAlchemy's adaptation of it.
        orig = getattr(error.orig, "__cause__", None) or error.orig
        return isinstance(orig, BaseException) and orig is not error and is_outage(orig)
    if isinstance(error, asyncpg.InterfaceError):
        # DataError is a value the driver could not encode: the statement was never sent.
        return not isinstance(error, asyncpg.exceptions.DataError)
    # InternalClientError: the driver lost its connection in the middle of a protocol step.
    return isinstance(
        error,
        OSError | asyncpg.PostgresConnectionError | asyncpg.exceptions.InternalClientError,
    )


def _outage(error: BaseException) -> Unavailable:
    throttled(log, logging.WARNING, f"database unavailable: {describe(error)}")
    return Unavailable("the database is unavailable; retry with backoff")


def _pool_exhausted() -> Unavailable:
    throttled(
        log,
        logging.WARNING,
        "every database connection stayed busy for PARLEY_DB_POOL_TIMEOUT_SECONDS; raise"
        " PARLEY_DB_POOL_SIZE or find what holds them",
    )
    return Unavailable(
        "the server's database connections are all busy; retry with backoff",
        reason="DATABASE_CONNECTIONS_BUSY",
    )
