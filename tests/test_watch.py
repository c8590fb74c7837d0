"""WatchSession through the real server: a resumable tail of a session, on both backends."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from parley_client import InvalidArgumentError, NotFoundError, ParleyClient, ToolCall, new_message
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.parley_service_pb2_grpc import ParleyServiceStub
from parley_server import app
from parley_server.config import Settings
from parley_server.domain import MessageFilter, Scope
from parley_server.identity import DEFAULT_TENANT
from parley_server.services.watch import SharedReads
from parley_server.store import Store
from tests.factories import a_session
from tests.serving import PARLEY


async def _collect(
    events: AsyncIterator[pb.WatchSessionResponse],
    until: Any,
    into: list[tuple[float, pb.WatchSessionResponse]],
) -> None:
    """Append (arrival time, event) to `into` until `until(into)` holds."""
    async for event in events:
        into.append((time.time(), event))
        if until(into):
            return


def _messages(events: list[tuple[float, pb.WatchSessionResponse]]) -> list[Any]:
    return [
        (arrival, message)
        for arrival, event in events
        if event.WhichOneof("event") == "messages"
        for message in event.messages.messages
    ]


async def test_a_watcher_gets_every_append_once_in_order_within_a_second(
    client: ParleyClient,
) -> None:
    _, session = await a_session(client)
    received: list[tuple[float, pb.WatchSessionResponse]] = []
    watcher = asyncio.create_task(
        _collect(
            client.watch_session(session.id),
            lambda events: len(_messages(events)) >= 1000,
            received,
        )
    )

    async def writer(number: int) -> None:
        for n in range(100):
            await client.append_message(session.id, role="user", content=f"w{number} m{n}")

    await asyncio.gather(*(writer(w) for w in range(10)))
    await asyncio.wait_for(watcher, 60)
    delivered = _messages(received)
    assert [m.seq for _, m in delivered] == list(range(1, 1001))
    assert len({m.id for _, m in delivered}) == 1000
    # create_time is taken inside the committing statement, so this over-states the lag.
    lags = [arrival - m.create_time.ToDatetime().timestamp() for arrival, m in delivered]
    assert max(lags) < 1.0, sorted(lags)[-5:]
    assert received[0][1].WhichOneof("event") == "session"


async def test_many_watchers_of_one_session_each_get_every_append_once(
    client: ParleyClient,
) -> None:
    """Watchers woken by one change share one read (SharedReads): none may lose or repeat a
    message for it, whenever it joined."""
    _, session = await a_session(client)
    received: list[list[tuple[float, pb.WatchSessionResponse]]] = [[] for _ in range(8)]
    watchers = [
        asyncio.create_task(
            _collect(
                client.watch_session(session.id),
                lambda events: len(_messages(events)) >= 400,
                into,
            )
        )
        for into in received
    ]

    async def writer(number: int) -> None:
        for n in range(40):
            await client.append_message(session.id, role="user", content=f"w{number} m{n}")

    await asyncio.gather(*(writer(w) for w in range(10)))
    await asyncio.wait_for(asyncio.gather(*watchers), 60)
    for events in received:
        assert [m.seq for _, m in _messages(events)] == list(range(1, 401))


async def test_deletes_updates_closes_and_the_deletion_reach_the_watcher(
    client: ParleyClient,
) -> None:
    _, session = await a_session(client)
    stored = await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(3)]
    )
    events: list[tuple[float, pb.WatchSessionResponse]] = []

    def kinds() -> list[str | None]:
        return [event.WhichOneof("event") for _, event in events]

    watcher = asyncio.create_task(
        _collect(client.watch_session(session.id), lambda _: False, events)
    )
    await _until(lambda: "messages" in kinds())
    await client.delete_message(stored[1].id)
    await _until(lambda: "deleted_message" in kinds())
    await client.update_session(session.id, title="renamed")
    await _until(lambda: kinds().count("session") == 2)
    await client.close_session(session.id)
    await _until(lambda: kinds().count("session") == 3)
    await client.delete_session(session.id)
    await asyncio.wait_for(watcher, 10)  # the deletion is the last event
    assert kinds() == [
        "session", "messages", "deleted_message", "session", "session", "deleted_session"
    ]  # fmt: skip
    deleted = events[2][1]
    assert (deleted.deleted_message.message_id, deleted.deleted_message.seq) == (stored[1].id, 2)
    assert deleted.last_deletion == 1
    assert events[3][1].session.title == "renamed"
    assert events[4][1].session.HasField("end_time")
    assert events[5][1].deleted_session.session_id == session.id


async def test_a_resumed_watch_learns_of_the_deletes_it_missed(client: ParleyClient) -> None:
    _, session = await a_session(client)
    stored = await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(4)]
    )
    first = [e async for e in _first(client.watch_session(session.id), 2)]
    position = first[-1]
    assert position.last_seq == 4
    await client.delete_message(stored[0].id)
    await client.delete_message(stored[3].id)
    await client.append_message(session.id, role="user", content="later")
    resumed = [
        e
        async for e in _first(
            client.watch_session(
                session.id, after_seq=position.last_seq, after_deletion=position.last_deletion
            ),
            4,
        )
    ]
    assert [e.WhichOneof("event") for e in resumed] == [
        "session", "deleted_message", "deleted_message", "messages"
    ]  # fmt: skip
    assert [e.deleted_message.seq for e in resumed[1:3]] == [1, 4]
    assert [m.seq for m in resumed[3].messages.messages] == [5]


async def test_a_watch_of_a_missing_session_is_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        async for _ in client.watch_session("123e4567-e89b-12d3-a456-426614174000"):
            pass


async def test_a_watch_from_past_the_last_seq_is_invalid(client: ParleyClient) -> None:
    """It would silently skip the next appends until their seqs passed after_seq."""
    _, session = await a_session(client)
    await client.append_message(session.id, role="user", content="one")
    with pytest.raises(InvalidArgumentError, match="past the session's last seq 1"):
        async for _ in client.watch_session(session.id, after_seq=2):
            pass


async def test_watches_resume_across_lifetimes_and_heartbeat_when_quiet(store: Store) -> None:
    settings = Settings(watch_heartbeat_seconds=0.05, watch_max_lifetime_seconds=0.3)
    running = await app.start(store, settings, address="127.0.0.1:0")
    try:
        async with ParleyClient(f"127.0.0.1:{running.port}") as client:
            _, session = await a_session(client)
            events: list[tuple[float, pb.WatchSessionResponse]] = []
            watcher = asyncio.create_task(
                _collect(
                    client.watch_session(session.id, heartbeats=True),
                    lambda got: len(_messages(got)) >= 20,
                    events,
                )
            )
            for n in range(20):
                await client.append_message(session.id, role="user", content=f"m{n}")
                await asyncio.sleep(0.05)  # spread over several lifetimes of 0.3 s
            await asyncio.wait_for(watcher, 20)
            assert [m.seq for _, m in _messages(events)] == list(range(1, 21))
            kinds = [event.WhichOneof("event") for _, event in events]
            assert kinds.count("session") == 1  # a resumed stream's repeat is not passed on
            assert "heartbeat" in kinds
    finally:
        await running.stop(None, quiet=0)


async def test_shutdown_ends_a_watch_with_unavailable(store: Store) -> None:
    running = await app.start(store, address="127.0.0.1:0")
    target = f"127.0.0.1:{running.port}"
    async with ParleyClient(target) as client:
        _, session = await a_session(client)
    channel = grpc.aio.insecure_channel(target)
    try:
        call = ParleyServiceStub(channel).WatchSession(
            pb.WatchSessionRequest(session_id=session.id)
        )
        first = await call.read()
        assert isinstance(first, pb.WatchSessionResponse)
        assert first.WhichOneof("event") == "session"
        await running.stop(5, quiet=0)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close(None)


async def test_writes_after_failed_ones_are_still_announced(
    client: ParleyClient, store: Store
) -> None:
    """On SQLite each connection announces its writes through triggers of its own, made by its
    first write transaction: one that failed took them along when it rolled back."""
    for _ in range(10):  # more than the pool has connections
        with pytest.raises(NotFoundError):
            await client.pop_message("no-such-session")
    _, session = await a_session(client)
    with store.db.changes.subscribe(DEFAULT_TENANT, session.id) as changed:
        for turn in range(10):
            changed.clear()
            await client.append_message(session.id, role="user", content=f"turn {turn}")
            await asyncio.wait_for(changed.wait(), 5)


async def _first(
    events: AsyncIterator[pb.WatchSessionResponse], count: int
) -> AsyncIterator[pb.WatchSessionResponse]:
    n = 0
    async for event in events:
        yield event
        n += 1
        if n == count:
            return


async def _until(condition: Any) -> None:
    """Wait (up to 10 s) until condition() holds: the watcher task appends as events arrive."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110  # polls a list another task fills
            await asyncio.sleep(0.01)


async def test_a_dropped_listen_connection_loses_nothing(
    client: ParleyClient, backend: str, database_url: str
) -> None:
    if backend != "postgres":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    admin = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        _, session = await a_session(client)
        events: list[tuple[float, pb.WatchSessionResponse]] = []
        watcher = asyncio.create_task(
            _collect(
                client.watch_session(session.id),
                lambda got: len(_messages(got)) >= 40,
                events,
            )
        )
        await client.batch_append_messages(
            session.id, [new_message(role="user", content=f"before {n}") for n in range(20)]
        )
        await _until(lambda: len(_messages(events)) == 20)
        listener = await _listener_pid(admin)
        database = make_url(database_url).database
        gate = await asyncpg.connect(_asyncpg_dsn(database_url, database="postgres"))
        # The pool's connections stay; the listener cannot come back until this is undone.
        await gate.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener)
            # Written while no one listens: these notifications are lost for good.
            await client.batch_append_messages(
                session.id, [new_message(role="user", content=f"after {n}") for n in range(20)]
            )
        finally:
            await gate.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await gate.close()
        await asyncio.wait_for(watcher, 30)
        assert [m.seq for _, m in _messages(events)] == list(range(1, 41))
        assert await _listener_pid(admin) != listener  # it reconnected
    finally:
        await admin.close()


async def _listener_pid(admin: asyncpg.Connection) -> int:
    """The server's LISTEN connection to this database (waiting until there is one)."""
    async with asyncio.timeout(10):
        while True:
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.05)  # another process's state: poll it


def _asyncpg_dsn(url: str, *, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@pytest.mark.parametrize("as_json", [False, True], ids=["lines", "json"])
async def test_parley_tail_prints_the_history_then_follows_it(
    client: ParleyClient, target: str, as_json: bool
) -> None:
    _, session = await a_session(client, title="support")
    await client.append_message(session.id, role="user", content="what is the weather in Paris?")
    await client.append_message(
        session.id,
        role="assistant",
        tool_calls=[ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')],
    )
    process = await asyncio.create_subprocess_exec(
        PARLEY, "tail", session.id, "--target", target, *(["--json"] if as_json else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        # JSON: one line per event (the stored two messages are one); else one per message.
        lines = [await _line(process.stdout) for _ in range(2 if as_json else 3)]
        await client.append_message(session.id, role="tool", tool_call_id="call-1", content="18C")
        lines.append(await _line(process.stdout))
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        _, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130
    assert b"Traceback" not in errors, errors.decode()
    if as_json:
        events = [json.loads(line) for line in lines]
        assert events[0]["session"]["title"] == "support"
        assert [m["seq"] for m in events[1]["messages"]["messages"]] == ["1", "2"]
        assert events[2]["messages"]["messages"][0]["tool_call_id"] == "call-1"
        return
    assert lines[0].startswith(f"-- session {session.id} 'support', open")
    assert re.fullmatch(r"#1 \S+ \S+ user +what is the weather in Paris\?", lines[1]), lines[1]
    assert lines[2].endswith('assistant calls get_weather({"city": "Paris"}) [call-1]'), lines[2]
    assert lines[3].endswith("tool      result of [call-1]: 18C"), lines[3]


async def _line(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), 20)).decode().rstrip("\n")


async def test_a_shared_read_is_joined_only_before_it_begins() -> None:
    """A watcher that asks after a read has begun may have been woken by a change that read's
    snapshot misses: it gets a read of its own. Watchers that ask before it begins share it."""
    begun: list[int] = []
    release = asyncio.Event()

    async def read(*_: Any, **__: Any) -> Any:
        number = len(begun) + 1
        begun.append(number)
        await release.wait()
        return number  # stands for the HistoryStep of read `number`

    reads = SharedReads(read)
    key: dict[str, Any] = {"position": 5, "after_deletion": 0}
    where = MessageFilter()
    scope = Scope("t")
    early = [asyncio.create_task(reads.read(scope, "s", where, **key)) for _ in range(3)]
    await _until(lambda: len(begun) == 1)  # one read for the three
    late = asyncio.create_task(reads.read(scope, "s", where, **key))
    await _until(lambda: len(begun) == 2)  # the late one did not join the running read
    release.set()
    shared: list[Any] = await asyncio.gather(*early)
    own: Any = await late
    assert shared == [1, 1, 1]
    assert own == 2
