"""The history cache: a page read again while its session is unchanged costs no query, and no
change, from this process or another, is ever missed by a reader who asks after it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from parley_client import NotFoundError, ParleyClient, new_message, state_delta
from parley_server import app
from parley_server.api import convert
from parley_server.config import Settings
from parley_server.domain import MessageFilter, NewMessage, Role
from parley_server.errors import AlreadyExists, NotFound
from parley_server.identity import ANONYMOUS
from parley_server.store import Database, Store
from parley_server.store import changes as changes_module
from parley_server.store.changes import ChangeHub, PostgresListener, user_state_key
from parley_server.store.database import create_engine
from parley_server.store.history_cache import ENTRY_OVERHEAD_BYTES, Computed, HistoryCache
from parley_server.store.messages import MessageStore
from tests.conftest import property_settings
from tests.factories import a_session, a_user, as_the_api_sends, some_messages
from tests.probes import count_calls, until_caught_up


def newest(client: ParleyClient, session_id: str) -> Awaitable[Any]:
    return client.list_messages(session_id, page_size=50, newest_first=True)


async def test_a_page_read_again_costs_no_query(
    client: ParleyClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, session = await a_session(client)
    await some_messages(client, session.id, 3)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    queries = count_calls(store, monkeypatch, "fetch")
    first = await newest(client, session.id)
    assert queries[0] == 1
    assert await newest(client, session.id) == first
    assert queries[0] == 1
    # Another question about the same session is answered by the database.
    await client.list_messages(session.id, page_size=2)
    assert queries[0] == 2


async def test_a_session_whose_append_failed_is_kept_again(
    client: ParleyClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write lane tells the cache that a statement is on its way to a session, and reads of
    that session bypass the cache until it returns; one that failed must say so too, or the
    session's reads would never be kept again."""
    _, session = await a_session(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    scope = ANONYMOUS.scope
    taken = _turn("first")
    [appended] = await store.messages.append(scope, session.id, [taken])
    with pytest.raises(AlreadyExists):  # the same id with other content: the statement fails
        await store.messages.append(
            scope, session.id, [dataclasses.replace(_turn("other"), id=appended.id)]
        )
    queries = count_calls(store, monkeypatch, "fetch")
    first = await newest(client, session.id)
    assert await newest(client, session.id) == first
    assert queries[0] == 1


async def test_a_stream_is_never_kept(
    client: ParleyClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream reads a whole history, once: kept, it would push out the tails that readers
    come back to, and grow the server by the history's size."""
    _, session = await a_session(client)
    await some_messages(client, session.id, 3)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    queries = count_calls(store, monkeypatch, "fetch")
    for streams in (1, 2):
        assert len([m async for m in client.stream_messages(session.id)]) == 3
        assert queries[0] == streams


async def _append(client: ParleyClient, session_id: str) -> None:
    await client.append_message(session_id, role="assistant", content="new")


async def _append_batch(client: ParleyClient, session_id: str) -> None:
    await client.batch_append_messages(
        session_id, [new_message(role="user", content=text) for text in "ab"]
    )


async def _delete_oldest(client: ParleyClient, session_id: str) -> None:
    oldest = (await client.list_messages(session_id, page_size=1)).messages[0]
    await client.delete_message(oldest.id)


async def _pop(client: ParleyClient, session_id: str) -> None:
    await client.pop_message(session_id)


async def _clear(client: ParleyClient, session_id: str) -> None:
    await client.clear_messages(session_id)


async def _delete_the_author(client: ParleyClient, session_id: str) -> None:
    """A user who wrote in this (another user's) session is deleted: the messages stay, without
    an author (no write touches the session itself)."""
    for message in (await client.list_messages(session_id)).messages:
        if message.user_id:
            await client.delete_user(message.user_id, force=True)
            return
    raise AssertionError("no message has an author")


async def _update_title(client: ParleyClient, session_id: str) -> None:
    await client.update_session(session_id, title="renamed")


@pytest.mark.parametrize(
    "change",
    [_append, _append_batch, _delete_oldest, _pop, _clear, _delete_the_author, _update_title],
)
async def test_every_change_of_a_session_reaches_its_next_reader(
    client: ParleyClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[ParleyClient, str], Awaitable[None]],
) -> None:
    _, session = await a_session(client)
    author = await a_user(client, display_name="guest")
    await some_messages(client, session.id, 3)
    await client.append_message(session.id, role="user", content="by the guest", user_id=author.id)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    queries = count_calls(store, monkeypatch, "fetch")
    for _ in range(2):
        await newest(client, session.id)
    for _ in range(2):
        await client.list_messages(session.id, page_size=50)
    assert queries[0] == 2  # each kept, and answered once from what was kept
    await change(client, session.id)
    after = await newest(client, session.id)
    # What the database says now: a question never asked before, so never kept.
    fresh = await client.list_messages(session.id, page_size=49, newest_first=True)
    assert list(after.messages) == list(fresh.messages)
    assert after.total_size == fresh.total_size


async def test_a_deleted_session_is_not_found_after_it_was_read(
    client: ParleyClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, session = await a_session(client)
    await some_messages(client, session.id, 2)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    queries = count_calls(store, monkeypatch, "fetch")
    for _ in range(2):
        await newest(client, session.id)
    assert queries[0] == 1
    await client.delete_session(session.id)
    with pytest.raises(NotFoundError):
        await newest(client, session.id)


@dataclass
class _Shared:
    """A session of an app and a user, and another session of both, which shares their state."""

    session: str
    sibling: str
    context: str


async def _shared(client: ParleyClient) -> _Shared:
    user = await a_user(client)
    session, sibling = [
        (await client.create_session(user_id=user.id, app="helpdesk")).id for _ in range(2)
    ]
    await some_messages(client, session, 3)
    context = await client.create_context(session, type="system", content="be brief")
    return _Shared(session, sibling, context.id)


async def _state_through_the_sibling(client: ParleyClient, shared: _Shared) -> None:
    await client.update_session_state(shared.sibling, state_delta(user={"tier": "gold"}))


async def _app_state_through_the_sibling(client: ParleyClient, shared: _Shared) -> None:
    await client.update_session_state(shared.sibling, state_delta(app={"banner": "new"}))


async def _app_state_through_another_user(client: ParleyClient, shared: _Shared) -> None:
    other = await client.create_session(user_id=(await a_user(client)).id, app="helpdesk")
    await client.append_message(
        other.id, role="user", content="hi", state_delta=state_delta(app={"open": False})
    )


async def _own_state(client: ParleyClient, shared: _Shared) -> None:
    await client.update_session_state(shared.session, state_delta({"step": 2}))


async def _new_context(client: ParleyClient, shared: _Shared) -> None:
    await client.create_context(shared.session, type="file", content="notes")


async def _context_deleted(client: ParleyClient, shared: _Shared) -> None:
    await client.delete_context(shared.context)


async def _window_append(client: ParleyClient, shared: _Shared) -> None:
    await client.append_message(shared.session, role="assistant", content="new")


# What a session shows changes with these; a context window's, with these and its contexts.
SESSION_CHANGES = [
    _state_through_the_sibling,
    _app_state_through_the_sibling,
    _app_state_through_another_user,
    _own_state,
    _window_append,
]


@pytest.mark.parametrize("change", [*SESSION_CHANGES, _new_context, _context_deleted])
async def test_every_change_a_context_window_shows_reaches_its_next_reader(
    client: ParleyClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[ParleyClient, _Shared], Awaitable[None]],
) -> None:
    """A window shows its session's messages and contexts, and the state its user and its app
    share with other sessions: a change of any of them, however made, is seen next."""
    shared = await _shared(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    windows = count_calls(store, monkeypatch, "snapshot")
    before = [await client.get_context_window(shared.session, max_messages=10) for _ in range(2)]
    assert before[0] == before[1]
    assert windows[0] == 1  # the second was kept
    await change(client, shared)
    after = await client.get_context_window(shared.session, max_messages=10)
    fresh = await client.get_context_window(shared.session, max_messages=9)  # never kept
    assert after.session == fresh.session
    assert list(after.contexts) == list(fresh.contexts)
    assert list(after.messages) == list(fresh.messages)
    assert after != before[0]


@pytest.mark.parametrize("change", SESSION_CHANGES)
async def test_every_change_a_session_shows_reaches_its_next_reader(
    client: ParleyClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[ParleyClient, _Shared], Awaitable[None]],
) -> None:
    """GetSession, alone: what it keeps shows the state the session shares, too."""
    shared = await _shared(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    queries = count_calls(store, monkeypatch, "fetch")
    before = [await client.get_session(shared.session) for _ in range(2)]
    assert queries[0] == 1
    await change(client, shared)
    after = await client.get_session(shared.session)
    fresh = await client.get_context_window(shared.session, max_messages=9)  # never kept
    assert after == fresh.session != before[0]


# --- brought forward by this process's appends ----------------------------------------------------


def _turn(text: str, *, user_id: str = "", event_time: datetime | None = None) -> NewMessage:
    return as_the_api_sends(
        NewMessage(id=None, role=Role.USER, content=text, user_id=user_id, event_time=event_time)
    )


async def test_an_agents_window_after_its_own_append_costs_no_query(
    client: ParleyClient, store: Store, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent appends a turn, then reads its window (or its newest messages) again: they, and
    the session that a user principal's ownership check reads, were forgotten at every append,
    so every turn cost a query; the append brings them forward now, as the database would
    answer."""
    shared = await _shared(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    uncached = app.open_store(Settings(history_cache_bytes=0), database)
    windows = count_calls(store, monkeypatch, "snapshot")
    reads = count_calls(store, monkeypatch, "fetch")
    scope = ANONYMOUS.scope
    newest = functools.partial(
        MessageStore.list,
        session_id=shared.session,
        where=MessageFilter(),
        position=0,
        limit=4,
        max_bytes=1500,
        newest_first=True,
    )
    await store.messages.context_window(scope, shared.session, 4, max_bytes=1500)
    await store.sessions.get(scope, shared.session)
    await newest(store.messages, scope)
    for turn in range(8):
        await store.messages.append(scope, shared.session, [_turn("said " * 40 * (turn % 3))])
        counted = (windows[0], reads[0])
        window = await store.messages.context_window(scope, shared.session, 4, max_bytes=1500)
        session = await store.sessions.get(scope, shared.session)
        page = await newest(store.messages, scope)
        assert (windows[0], reads[0]) == counted  # (those without the cache count too)
        assert window == await uncached.messages.context_window(
            scope, shared.session, 4, max_bytes=1500
        )
        assert session == await uncached.sessions.get(scope, shared.session) == window.session
        assert page == await newest(uncached.messages, scope)


async def test_a_window_from_an_event_time_after_an_append_costs_no_query(
    client: ParleyClient, store: Store, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADK's get_session with after_timestamp reads a window of the messages from an event time
    on: every append forgot it, so every turn cost a query. The append brings it forward now,
    with those of its messages that the window shows (from that time on; one without an event
    time is left out), as the database would answer."""
    shared = await _shared(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    uncached = app.open_store(Settings(history_cache_bytes=0), database)
    windows = count_calls(store, monkeypatch, "snapshot")
    scope = ANONYMOUS.scope
    since = datetime(2026, 1, 1, 12, tzinfo=UTC)
    hour = timedelta(hours=1)
    window_since = functools.partial(
        MessageStore.context_window,
        scope=scope,
        session_id=shared.session,
        max_messages=3,
        max_bytes=1500,
        min_event_time=since,
    )
    await window_since(store.messages)
    times = [since + hour, since - hour, None, since, since + 2 * hour, None, since + hour]
    for turn, event_time in enumerate(times):
        said = _turn("said " * 40 * (turn % 3), event_time=event_time)
        await store.messages.append(scope, shared.session, [said])
        counted = windows[0]
        window = await window_since(store.messages)
        assert windows[0] == counted, turn  # (those without the cache count too)
        assert window == await window_since(uncached.messages), turn


async def test_a_whole_history_read_page_by_page_after_an_append_costs_no_query(
    client: ParleyClient, store: Store, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent framework that loads a long history page by page, oldest first, on every turn
    read every page but the first from the database again after each append: the pages before
    the end are unchanged by it, and the last one takes the new messages. So is a page of older
    messages, newest first, asked again from where it starts."""
    _, session = await a_session(client)
    await some_messages(client, session.id, 12)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    uncached = app.open_store(Settings(history_cache_bytes=0), database)
    reads = count_calls(store, monkeypatch, "fetch")
    scope = ANONYMOUS.scope

    async def pages(reader: Store) -> list[Any]:
        read, position = [], 0
        while True:
            page = await reader.messages.list(
                scope, session.id, MessageFilter(), position=position, limit=5, max_bytes=1 << 20
            )
            read.append(page)
            if not page.has_more:
                break
            position = page.items[-1].seq
        older = await reader.messages.list(
            scope,
            session.id,
            MessageFilter(),
            position=8,
            limit=5,
            max_bytes=1 << 20,
            newest_first=True,
        )
        return [*read, older]

    await pages(store)
    for turn in range(3):
        await store.messages.append(scope, session.id, [_turn(f"turn {turn}" * 50 * turn)])
        counted = reads[0]
        kept = await pages(store)
        assert reads[0] == counted, turn
        assert kept == await pages(uncached)


async def test_a_threads_newest_messages_after_an_append_cost_no_query(
    client: ParleyClient, store: Store, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents that share a session, each on a thread of its own, read their thread's newest
    messages (a filtered page, with its total) every turn: filtered pages were forgotten at
    every append, so each turn cost three queries (the page, the session's counters and the
    count); the append brings them forward now, also when it was another thread's."""
    _, session = await a_session(client)
    await until_caught_up(store.db.changes)  # the setup's changes heard of
    uncached = app.open_store(Settings(history_cache_bytes=0), database)
    reads = count_calls(store, monkeypatch, "fetch")
    scope = ANONYMOUS.scope
    threads = (
        MessageFilter(thread_id="planner"),
        MessageFilter(thread_id="coder", role=Role.ASSISTANT),
        MessageFilter(min_event_time=datetime(2026, 1, 1, 12, tzinfo=UTC)),
    )

    async def newest(reader: Store) -> list[Any]:
        return [
            await reader.messages.list(
                scope, session.id, where, position=0, limit=3, max_bytes=1 << 20, newest_first=True
            )
            for where in threads
        ]

    await newest(store)
    for turn in range(6):
        message = NewMessage(
            id=None,
            role=Role.ASSISTANT if turn % 3 else Role.USER,
            content=f"turn {turn}",
            thread_id=("planner", "coder")[turn % 2],
            event_time=datetime(2026, 1, 1, 10 + turn, tzinfo=UTC),
        )
        await store.messages.append(scope, session.id, [as_the_api_sends(message)])
        counted = reads[0]
        kept = await newest(store)
        assert reads[0] == counted, turn
        assert kept == await newest(uncached), turn


@pytest.mark.parametrize("seed", range(6))
async def test_answers_brought_forward_are_the_databases_own(
    client: ParleyClient, store: Store, database: Database, seed: int
) -> None:
    """Appends of every size (alone, or coalesced with others into one statement), deletions,
    and windows (of every message, or from an event time) and pages (newest or oldest first,
    from the start or later, of the whole history or filtered) of every length and budget, in a
    random order: each, and each session, is what a server without the cache reads."""
    rng = random.Random(seed)
    scope = ANONYMOUS.scope
    author = await a_user(client, display_name="author")
    session_ids = [(await a_session(client))[1].id for _ in range(2)]
    await until_caught_up(store.db.changes)
    uncached = app.open_store(Settings(history_cache_bytes=0), database)
    questions = [(rng.randint(1, 6), rng.choice([300, 700, 1500, 1 << 20])) for _ in range(4)]
    positions = (0, *rng.sample(range(1, 25), 2))  # pages from the start, and later ones
    since = datetime(2026, 1, 1, 12, tzinfo=UTC)
    filters = [
        MessageFilter(),
        MessageFilter(thread_id="t1"),
        MessageFilter(role=Role.ASSISTANT, chapter="c"),
        MessageFilter(invocation_id="i", after_seq=rng.randint(1, 20)),
        MessageFilter(min_event_time=since),
    ]
    for step in range(60):
        session_id = rng.choice(session_ids)
        action = rng.random()
        if action < 0.5:
            turns = [
                [
                    as_the_api_sends(
                        NewMessage(
                            id=None,
                            role=rng.choice([Role.USER, Role.ASSISTANT]),
                            content="x" * rng.choice([0, 10, 200, 600]),
                            user_id=rng.choice(["", author.id]),
                            event_time=rng.choice(
                                [None, datetime(2026, 1, 1, step % 24, tzinfo=UTC)]
                            ),
                            thread_id=rng.choice(["", "t1"]),
                            chapter=rng.choice(["", "c"]),
                            invocation_id=rng.choice(["", "i"]),
                        )
                    )
                    for _ in range(rng.randint(1, 3))
                ]
                for _ in range(rng.randint(1, 4))
            ]
            await asyncio.gather(
                *(store.messages.append(scope, rng.choice(session_ids), turn) for turn in turns)
            )
        elif action < 0.6:
            listed = await uncached.messages.list(
                scope, session_id, MessageFilter(), position=0, limit=1000, max_bytes=1 << 30
            )
            if listed.items:
                seq = rng.choice(listed.items).seq
                stored = next(m for m in listed.items if m.seq == seq)
                message_id = convert.message_pb(stored).id
                await store.messages.delete(scope, message_id, allow_missing=False)
        for size, max_bytes in rng.sample(questions, 2):
            for window_since in (None, since):
                kept, fresh = [
                    await reader.messages.context_window(
                        scope, session_id, size, max_bytes=max_bytes, min_event_time=window_since
                    )
                    for reader in (store, uncached)
                ]
                assert kept == fresh, (step, size, max_bytes, window_since)
            for newest_first, position, where in itertools.product(
                (True, False), positions, rng.sample(filters, 2)
            ):
                pages = [
                    await reader.messages.list(
                        scope,
                        session_id,
                        where,
                        position=position,
                        limit=size,
                        max_bytes=max_bytes,
                        newest_first=newest_first,
                    )
                    for reader in (store, uncached)
                ]
                assert pages[0] == pages[1], (step, size, max_bytes, newest_first, position, where)
        assert await store.sessions.get(scope, session_id) == await uncached.sessions.get(
            scope, session_id
        )


# --- another server process over the same PostgreSQL database ------------------------------------


class _Relay:
    """A TCP relay to PostgreSQL whose replies can be held back: a listener connection behind
    it hears of changes late (or, held long enough, not at all until released)."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self.replies = asyncio.Event()
        self.replies.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        for pipe in (
            self._pipe(reader, up_writer, None),
            self._pipe(up_reader, writer, self.replies),
        ):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    async def close(self) -> None:
        self.replies.set()
        for task in list(self._pipes):
            task.cancel()
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def another_server(
    database_url: str, listener_dsn: str | None = None
) -> AsyncIterator[tuple[ParleyClient, Store]]:
    """A second parley server over the same database, as another process would be (its own
    engine, hub and listener; the listener through listener_dsn when given)."""
    database = Database(create_engine(database_url))
    store = app.open_store(Settings(), database)
    with pytest.MonkeyPatch.context() as patch:
        if listener_dsn is not None:
            patch.setattr(
                app, "_history_listener", lambda db: PostgresListener(db.changes, listener_dsn)
            )
        running = await app.start(store, address="127.0.0.1:0")
    try:
        async with ParleyClient(f"127.0.0.1:{running.port}", default_timeout=20) as client:
            await until_caught_up(database.changes)
            yield client, store
    finally:
        await running.stop(None, quiet=0)
        await database.dispose()


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite is written by one process
async def test_an_append_through_another_server_is_seen_by_the_next_read(
    client: ParleyClient, database_url: str
) -> None:
    _, session = await a_session(client)
    async with another_server(database_url) as (other, _):
        for count in range(1, 31):
            # Through one server, then the other: what each kept goes when the other appends.
            writer, reader = (client, other) if count % 2 else (other, client)
            await writer.append_message(session.id, role="user", content=f"turn {count}")
            for _ in range(2):
                page = await newest(reader, session.id)
                assert [m.seq for m in page.messages][:1] == [count]
                window = await reader.get_context_window(session.id, max_messages=3)
                assert [m.seq for m in window.messages][-1:] == [count]
                assert window.session.last_seq == count


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite is written by one process
async def test_a_kept_page_waits_for_the_listener_to_confirm_it_is_caught_up(
    client: ParleyClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other server hears of changes only late: a page it kept must not be given while it
    cannot confirm that it has heard of every change committed before the read."""
    url = make_url(database_url)
    relay = _Relay(url.host or "127.0.0.1", url.port or 5432)
    port = await relay.start()
    monkeypatch.setattr(changes_module, "CATCH_UP_TIMEOUT_SECONDS", 0.2)
    listener_dsn = url.set(drivername="postgresql", host="127.0.0.1", port=port)
    _, session = await a_session(client)
    await some_messages(client, session.id, 2)
    try:
        async with another_server(
            database_url, listener_dsn.render_as_string(hide_password=False)
        ) as (other, other_store):
            for _ in range(2):
                assert len((await newest(other, session.id)).messages) == 2
            queries = count_calls(other_store, monkeypatch, "fetch")
            relay.replies.clear()  # its listener hears nothing more for now
            await client.append_message(session.id, role="user", content="acknowledged")
            page = await newest(other, session.id)
            assert page.messages[0].content == "acknowledged"
            assert queries[0] == 1  # asked the database, since the listener did not answer
            relay.replies.set()
            await until_caught_up(other_store.db.changes)
            for _ in range(2):
                assert len((await newest(other, session.id)).messages) == 3
            assert queries[0] == 2
    finally:
        await relay.close()


# --- the cache alone ------------------------------------------------------------------------------


async def test_the_cache_keeps_within_its_capacity_and_nothing_of_failed_reads() -> None:
    hub = ChangeHub(in_process=True)
    cache = HistoryCache(hub, capacity_bytes=10 * (ENTRY_OVERHEAD_BYTES + 1000))

    async def page(n: int) -> Computed[str]:
        return Computed(f"page {n}", 1000)

    async def missing() -> Computed[str]:
        raise NotFound.resource("session", "x")

    for n in range(100):
        assert await cache.read(("t", f"s{n}"), "q", functools.partial(page, n)) == f"page {n}"
        assert cache.size_bytes <= 10 * (ENTRY_OVERHEAD_BYTES + 1000)
    for n in range(1000):
        with pytest.raises(NotFound):
            await cache.read(("t", f"missing {n}"), "q", missing)
    assert cache.size_bytes <= 10 * (ENTRY_OVERHEAD_BYTES + 1000)
    # The most recent ones are still kept; a change forgets its session's.
    assert await cache.read(("t", "s99"), "q", lambda: page(-1)) == "page 99"
    hub.publish([("t", "s99")])
    assert await cache.read(("t", "s99"), "q", lambda: page(-1)) == "page -1"


async def test_a_tenant_reading_a_lot_does_not_push_out_another_tenants_pages() -> None:
    """Once the cache is full, the tenant holding the most of it gives way first: another
    tenant's few pages stay however many sessions one tenant reads, and one tenant alone has all
    of it."""
    hub = ChangeHub(in_process=True)
    page_bytes = ENTRY_OVERHEAD_BYTES + 1000
    cache = HistoryCache(hub, capacity_bytes=10 * page_bytes)

    async def page(label: str) -> Computed[str]:
        return Computed(label, 1000)

    for n in range(3):
        await cache.read(("quiet", f"s{n}"), "q", functools.partial(page, f"quiet {n}"))
    for n in range(100):
        await cache.read(("busy", f"s{n}"), "q", functools.partial(page, f"busy {n}"))
        assert cache.size_bytes <= 10 * page_bytes
    for n in range(3):
        kept = await cache.read(("quiet", f"s{n}"), "q", functools.partial(page, "read again"))
        assert kept == f"quiet {n}"
    # The busy tenant's most recent pages fill the rest.
    assert await cache.read(("busy", "s99"), "q", functools.partial(page, "again")) == "busy 99"
    assert await cache.read(("busy", "s93"), "q", functools.partial(page, "again")) == "busy 93"
    assert await cache.read(("busy", "s92"), "q", functools.partial(page, "again")) == "again"


@dataclass(frozen=True)
class _Resized:
    """A question whose answer a write of this process brings forward to a new size."""

    name: str

    def brought_forward(self, answer: Any, change: Any) -> Computed[str]:
        return Computed(answer, change)


# Reads (tenant, session, question, answer size), changes (tenant, session) and writes of this
# process (tenant, session, the size they bring answers forward to) in any order.
_CACHE_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("read"),
            st.sampled_from("abc"),
            st.integers(0, 9),
            st.sampled_from(["q", _Resized("r"), _Resized("s")]),
            st.integers(0, 8000),
        ),
        st.tuples(st.just("change"), st.sampled_from("abc"), st.integers(0, 9)),
        st.tuples(
            st.just("write"), st.sampled_from("abc"), st.integers(0, 9), st.integers(0, 8000)
        ),
    ),
    max_size=60,
)


@property_settings(200)
@given(_CACHE_STEPS)
@example(  # answers brought forward past the capacity: the first makes room by going itself
    [
        ("read", "a", 0, _Resized("r"), 10),
        ("read", "a", 0, _Resized("s"), 10),
        ("write", "a", 0, 8000),
    ]
)
def test_the_cache_accounts_for_every_byte_it_keeps(steps: list[tuple[Any, ...]]) -> None:
    """Within capacity after every step, and back to nothing once every session changed."""

    async def run() -> None:
        hub = ChangeHub(in_process=True)
        capacity = 4 * (ENTRY_OVERHEAD_BYTES + 1000)
        cache = HistoryCache(hub, capacity_bytes=capacity)
        for kind, tenant, number, *rest in steps:
            if kind == "read":
                question, size = rest
                read = functools.partial(_sized, size)
                await cache.read((tenant, f"s{number}"), question, read)
            elif kind == "write":
                cache.writing((tenant, f"s{number}"))
                cache.written((tenant, f"s{number}"), *rest)
            else:
                hub.publish([(tenant, f"s{number}")])
            assert 0 <= cache.size_bytes <= capacity
        hub.publish([(tenant, f"s{number}") for tenant in "abc" for number in range(10)])
        assert cache.size_bytes == 0

    asyncio.run(run())


async def _sized(size: int) -> Computed[str]:
    return Computed("answer", size)


@dataclass(frozen=True)
class _Counting:
    """A question whose answer (a number) a change (another number) brings forward."""

    def brought_forward(self, answer: Any, change: Any) -> Computed[int]:
        return Computed(answer + change, 10)


async def test_a_write_of_this_process_brings_kept_answers_forward() -> None:
    hub = ChangeHub(in_process=False)
    hub.feed = _AlwaysCaughtUp()
    cache = HistoryCache(hub, capacity_bytes=1 << 20)
    session = ("t", "s")

    async def computed(value: int) -> Computed[int]:
        return Computed(value, 10)

    assert await cache.read(session, _Counting(), functools.partial(computed, 1)) == 1
    assert await cache.read(session, "other", functools.partial(computed, 5)) == 5
    cache.writing(session)
    # While the statement is on its way, what was kept may be out of date, and what is read
    # may show the statement or not: neither is given nor kept.
    assert await cache.read(session, _Counting(), functools.partial(computed, 2)) == 2
    assert await cache.read(session, _Counting(), functools.partial(computed, 3)) == 3
    hub.publish([session], told=cache)  # the statement's echo
    cache.written(session, 10)
    assert await cache.read(session, _Counting(), functools.partial(computed, -1)) == 11
    # A question that cannot be brought forward goes.
    assert await cache.read(session, "other", functools.partial(computed, 6)) == 6
    hub.publish([session], told=cache)  # a late echo
    assert await cache.read(session, _Counting(), functools.partial(computed, -1)) == 11
    hub.publish([session])  # another writer's change
    assert await cache.read(session, _Counting(), functools.partial(computed, 7)) == 7
    cache.writing(session)
    cache.abandoned(session)  # it may have committed, or not
    assert await cache.read(session, _Counting(), functools.partial(computed, 8)) == 8


async def test_a_read_begun_before_a_write_of_this_process_is_not_kept() -> None:
    hub = ChangeHub(in_process=False)
    hub.feed = _AlwaysCaughtUp()
    cache = HistoryCache(hub, capacity_bytes=1 << 20)
    session = ("t", "s")
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow() -> Computed[int]:
        reading.set()
        await release.wait()
        return Computed(1, 10)  # from before the write, or after it: which, no one can tell

    async def computed(value: int) -> Computed[int]:
        return Computed(value, 10)

    read = asyncio.create_task(cache.read(session, _Counting(), slow))
    await reading.wait()
    cache.writing(session)
    cache.written(session, 10)
    release.set()
    assert await read == 1
    assert await cache.read(session, _Counting(), functools.partial(computed, 2)) == 2


class _AlwaysCaughtUp:
    async def caught_up(self) -> bool:
        return True


async def test_a_read_computed_while_its_session_changed_is_not_kept() -> None:
    hub = ChangeHub(in_process=True)
    cache = HistoryCache(hub, capacity_bytes=1 << 20)
    reading = asyncio.Event()
    release = asyncio.Event()

    async def slow_old_page() -> Computed[str]:
        reading.set()
        await release.wait()
        return Computed("old", 10)

    async def new_page() -> Computed[str]:
        return Computed("new", 10)

    session = ("t", "s")
    old_read = asyncio.create_task(cache.read(session, "q", slow_old_page))
    await reading.wait()
    hub.publish([session])  # committed after the slow read's snapshot
    release.set()
    assert await old_read == "old"
    assert await cache.read(session, "q", new_page) == "new"


async def test_an_answer_computed_while_shared_state_changed_is_not_kept() -> None:
    """Which shared state an answer shows is known only once it is computed: a change of any
    shared state meanwhile keeps it from being kept."""
    hub = ChangeHub(in_process=True)
    cache = HistoryCache(hub, capacity_bytes=1 << 20)
    reading = asyncio.Event()
    release = asyncio.Event()
    state = user_state_key("t", "app", "u")

    async def slow_old_window() -> Computed[str]:
        reading.set()
        await release.wait()
        return Computed("old", 10, shows=(state,))

    async def new_window() -> Computed[str]:
        return Computed("new", 10, shows=(state,))

    session = ("t", "s")
    old_read = asyncio.create_task(cache.read(session, "q", slow_old_window))
    await reading.wait()
    hub.publish([state])
    release.set()
    assert await old_read == "old"
    assert await cache.read(session, "q", new_window) == "new"
    # Kept now; a change of the state it shows forgets it.
    assert await cache.read(session, "q", slow_old_window) == "new"
    hub.publish([state])
    release.set()
    assert await cache.read(session, "q", slow_old_window) == "old"
