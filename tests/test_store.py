"""The store beneath the API: properties no RPC can observe directly."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from parley_client import ParleyClient
from parley_server import app
from parley_server.config import Settings
from parley_server.domain import MessageFilter, NewMessage, NewSession, NewUser, Role
from parley_server.identity import ANONYMOUS
from parley_server.store import Store
from parley_server.store.database import Database, create_engine
from parley_server.store.schema import UTCDateTime
from tests.conftest import _admin
from tests.factories import a_session, as_the_api_sends, some_messages

SCOPE = ANONYMOUS.scope  # the one tenant of a server without keys


async def test_commits_are_durable_even_where_the_database_says_otherwise(
    database_url: str,
) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(database_url)
        async with engine.connect() as connection:
            # FULL: the WAL is synced on every commit, so power loss keeps acknowledged writes.
            assert (await connection.scalar(text("PRAGMA synchronous"))) == 2
            assert (await connection.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await connection.scalar(text("PRAGMA foreign_keys"))) == 1
        await engine.dispose()
        return
    await _admin(f'ALTER DATABASE "{url.database}" SET synchronous_commit = off')
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        assert (await connection.scalar(text("SHOW synchronous_commit"))) == "on"
    await engine.dispose()


async def test_sqlite_writers_queue_instead_of_failing(tmp_path: Path) -> None:
    database = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path}/q.db"))
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


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no server to close connections
async def test_connections_the_database_closed_are_replaced(
    client: ParleyClient, database_url: str
) -> None:
    """Without a pre-ping round trip: a pooled connection that the database closed (a restart, an
    admin's pg_terminate_backend) is noticed at checkout and replaced, so no RPC fails for it."""
    url = make_url(database_url)
    _, session = await a_session(client)
    await some_messages(client, session.id, 3)  # the pool now holds open connections
    await _admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{url.database}' AND pid <> pg_backend_pid()"
    )
    await asyncio.sleep(0.2)  # the event loop sees the connections' EOF
    for _ in range(5):  # reads, writes and the group-commit writer all get fresh connections
        await client.append_message(session.id, role="user", content="after")
        assert len((await client.list_messages(session.id)).messages) >= 4
        await client.get_session(session.id)


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has one writer: nothing to deadlock
async def test_server_processes_appending_to_the_same_sessions_never_deadlock(
    database_url: str,
) -> None:
    """Two stores (as two server processes would) coalesce appends to overlapping sessions into
    statements of their own. Each statement must lock its sessions in one global order, or two
    statements can wait on each other in a cycle (PostgreSQL then aborts one: a failed batch).
    Before the statement locked in order, this test hit that deadlock in about a third of runs."""
    stores = [app.open_store(Settings(), Database(create_engine(database_url))) for _ in range(2)]
    user = await stores[0].users.create(SCOPE, NewUser(id=None))
    sessions = [
        (await stores[0].sessions.create(SCOPE, NewSession(id=None, user_id=user.id))).id
        for _ in range(300)
    ]
    message = NewMessage(id=None, role=Role.USER, content="x")
    shuffle = random.Random(7)
    appended = Counter[str]()

    async def writer(store: Store) -> None:
        for _ in range(120):
            chosen = shuffle.sample(sessions, 40)
            appended.update(chosen)
            await asyncio.gather(*(store.messages.append(SCOPE, s, [message]) for s in chosen))

    await asyncio.gather(writer(stores[0]), writer(stores[1]))
    for session_id in shuffle.sample(sessions, 20):
        assert (await stores[0].sessions.get(SCOPE, session_id)).last_seq == appended[session_id]
    for store in stores:
        await store.db.dispose()


async def test_history_reads_are_planned_once_per_connection(store: Store, backend: str) -> None:
    """A page read's statement finds its rows through the same index whatever the session, so
    the database plans it once per connection (a generic plan). Left to choose, PostgreSQL planned
    it anew at every execution once its sessions held more than ten times the messages a read
    asks for: its generic plan, which cannot know the LIMIT given as a parameter (and takes it
    for a tenth of the rows), looked costlier than a plan made for the values at hand."""
    if backend != "postgres":
        pytest.skip("plan_cache_mode is PostgreSQL's")
    session = await store.sessions.create(SCOPE, NewSession(id=None))
    # Far more than ten times the rows a read asks for: a plan for the LIMIT at hand looks cheaper.
    said = [
        as_the_api_sends(NewMessage(id=None, role=Role.USER, content=f"{n}")) for n in range(1000)
    ]
    await store.messages.append(SCOPE, session.id, said)
    async with store.db.driver() as connection:  # statistics, as autovacuum keeps them
        await connection.execute("ANALYZE")
    for _ in range(12):
        await store.messages.list(
            SCOPE,
            session.id,
            MessageFilter(),
            position=0,
            limit=5,
            max_bytes=1 << 20,
            newest_first=True,
            cached=False,
        )
    pool = store.db.engine.pool
    async with contextlib.AsyncExitStack() as held:
        connections = [
            await held.enter_async_context(store.db.driver())
            for _ in range(pool.checkedin())  # type: ignore[attr-defined]
        ]
        plans = [
            (row["generic_plans"], row["custom_plans"])
            for connection in connections
            for row in await connection.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'SELECT messages.seq%'"
            )
        ]
    executions = sum(generic + custom for generic, custom in plans)
    assert executions >= 12
    assert sum(custom for _, custom in plans) == 0, f"planned per execution: {plans}"


async def test_appends_need_no_connection_of_the_pool(store: Store, backend: str) -> None:
    """The appender writes on connections of its own: readers holding every pooled connection (a
    burst of slow reads) do not hold up appends, which would wait for the pool's timeout and
    fail UNAVAILABLE."""
    if backend != "postgres":
        pytest.skip("SQLite opens a connection per use")
    session = await store.sessions.create(SCOPE, NewSession(id=None))
    pool = store.db.engine.pool
    async with contextlib.AsyncExitStack() as held:
        for _ in range(pool.size()):  # type: ignore[attr-defined]
            await held.enter_async_context(store.db.driver())
        async with asyncio.timeout(5):  # the pool would make it wait 10 s
            (message,) = await store.messages.append(
                SCOPE, session.id, [NewMessage(id=None, role=Role.USER)]
            )
    assert message.seq == 1


async def test_disposing_the_database_closes_the_appenders_connections(
    store: Store, backend: str
) -> None:
    """The appender's connections live outside the pool, so disposing of the pool alone would
    leave them open (one per write lane, in every stopped server process)."""
    if backend != "postgres":
        pytest.skip("SQLite opens a connection per use")
    session = await store.sessions.create(SCOPE, NewSession(id=None))
    await store.messages.append(SCOPE, session.id, [NewMessage(id=None, role=Role.USER)])
    database = store.db.engine.url.database
    await store.db.dispose()
    observer = await asyncpg.connect(_asyncpg_dsn(store.db.engine.url.set(database="postgres")))
    try:
        left = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )
    finally:
        await observer.close()
    assert left == 0


async def test_a_dedicated_connection_cut_off_mid_statement_is_replaced(
    database: Database, backend: str
) -> None:
    """A lane's connection whose statement was cancelled (a shutdown, say) is still busy with it:
    the next use gets a new connection, set up as the pool sets up its own, not one that answers
    'another operation is in progress'."""
    if backend != "postgres":
        pytest.skip("SQLite has no driver connections")
    dedicated = database.dedicated()
    async with dedicated.use() as connection:
        first = connection.get_server_pid()
    sent = asyncio.Event()

    async def sleep_on_it() -> None:
        async with dedicated.use() as connection:
            sent.set()
            await connection.execute("SELECT pg_sleep(30)")

    sleeping = asyncio.create_task(sleep_on_it())
    await sent.wait()
    sleeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sleeping
    async with dedicated.use() as connection:
        assert connection.get_server_pid() != first
        assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"


async def test_a_lane_connection_the_database_ended_is_no_longer_known_as_the_lanes(
    database: Database, backend: str
) -> None:
    """The NOTIFYs from a write lane's connection do not reach the cache it tells itself
    (ChangeHub.own_writers). Once the database has ended that connection, its server pid may be
    another connection's, whose changes the cache must hear of: it is forgotten at once, not
    at the lane's next use."""
    if backend != "postgres":
        pytest.skip("SQLite has no driver connections")
    told = object()
    dedicated = database.dedicated(tells=told)
    async with dedicated.use() as connection:
        pid = connection.get_server_pid()
    assert database.changes.own_writers == {pid: told}
    observer = await asyncpg.connect(_asyncpg_dsn(database.engine.url))
    try:
        await observer.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await observer.close()
    async with asyncio.timeout(5):
        while pid in database.changes.own_writers:  # noqa: ASYNC110  # asyncpg sees the EOF
            await asyncio.sleep(0.01)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def test_an_append_that_raced_the_sessions_creation_lands(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clients making a session on first use: one append's write finds no session, which
    the other creates before the append asks why. That session is open: the append lands, where
    it was once told the session was closed."""
    session = await store.sessions.create(SCOPE, NewSession(id=None))
    appender = store.messages._appender
    write = appender.append
    calls: list[str] = []

    async def missing_at_first(session_id: str, rows: list[dict[str, object]]) -> object:
        calls.append(session_id)
        if len(calls) == 1:
            return None  # what the write finds when the session is not committed yet
        return await write(session_id, rows)

    monkeypatch.setattr(appender, "append", missing_at_first)
    (message,) = await store.messages.append(
        SCOPE, session.id, [NewMessage(id=None, role=Role.USER)]
    )
    assert (message.seq, len(calls)) == (1, 2)
