"""Hostile and unlucky clients: each test reproduces one way a client used to crash, stall or poison
the service, or harm other callers, and checks that it no longer can."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import signal
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from parley_client import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ParleyClient,
    UnavailableError,
    new_message,
)
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.message_pb2 import ROLE_USER, Message
from parley_server import app, errors
from parley_server.api.pagination import PageToken, PageTokens, fingerprint
from parley_server.config import Settings
from parley_server.domain import MessageFilter, NewMessage, NewSession, NewUser, Role
from parley_server.identity import ANONYMOUS
from parley_server.store import Database, Store, migrate
from parley_server.store.database import create_engine, translated_errors
from tests.conftest import RawCall
from tests.factories import a_session, new_id
from tests.serving import idle_in_transaction, parley_serve

SCOPE = ANONYMOUS.scope  # the one tenant of a server without keys

METHOD = "/parley.v1.ParleyService/"


async def _a_long_session(client: ParleyClient, messages: int) -> str:
    _, session = await a_session(client)
    for start in range(0, messages, 1000):
        batch = [new_message(role="user", content="x" * 500) for _ in range(start, start + 1000)]
        await client.batch_append_messages(session.id, batch[: messages - start])
    return session.id


async def test_cancelled_streams_leave_the_server_running(database_url: str) -> None:
    """Streams cut by the client (a break, or a deadline mid-stream) at the default log level used
    to end the process with SIGSEGV: the request log read the peer of a call that had ended."""
    async with parley_serve(database_url) as server:
        async with ParleyClient(server.target) as client:
            session_id = await _a_long_session(client, 3000)
            rng = random.Random(7)

            async def cut_short() -> None:
                try:
                    async for _ in client.stream_messages(
                        session_id, timeout=rng.uniform(0.001, 0.05), retry=False
                    ):
                        if rng.random() < 0.5:
                            break
                except Exception:  # a deadline is the point here
                    pass

            for _ in range(30):
                await asyncio.gather(*(cut_short() for _ in range(20)))
                assert server.alive, server.text()[-3000:]
            assert (await client.get_session(session_id)).message_count == 3000
        assert await server.stop() == 0, server.text()[-3000:]


async def test_an_id_with_a_trailing_newline_is_refused_everywhere(
    client: ParleyClient, raw: RawCall
) -> None:
    """`^...$` accepted "<uuid>\\n": SQLite stored it and the session could never be read again."""
    _, session = await a_session(client)
    newline_id = f"{new_id()}\n"
    for message in (
        Message(id=newline_id, role=ROLE_USER, content="a"),
        Message(role=ROLE_USER, content="b", reply_to=newline_id),
    ):
        request = pb.AppendMessageRequest(session_id=session.id, message=message)
        with pytest.raises(InvalidArgumentError):
            await raw("AppendMessage", request)
    with pytest.raises(InvalidArgumentError):
        await raw("GetSession", pb.GetSessionRequest(id=f"{session.id}\n"))
    await client.append_message(session.id, role="user", content="still readable")
    assert [m.content async for m in client.stream_messages(session.id)] == ["still readable"]
    assert len((await client.get_context_window(session.id)).messages) == 1


async def test_a_bad_append_fails_alone_in_group_commit(store: Store) -> None:
    """Only constraint violations used to be isolated: any other error of one append (here a value
    that cannot be encoded as JSON) failed every append coalesced into the same statement."""
    user_id = new_id()
    await store.users.create(SCOPE, NewUser(id=user_id, display_name="u"))
    session = await store.sessions.create(SCOPE, NewSession(id=None, user_id=user_id))

    async def good() -> bool:
        await store.messages.append(
            SCOPE, session.id, [NewMessage(id=None, role=Role.USER, content="ok")]
        )
        return True

    async def bad() -> bool:
        broken = NewMessage(id=None, role=Role.USER, content="bad", metadata={"x": b"\x00"})
        try:
            await store.messages.append(SCOPE, session.id, [broken])
        except Exception:
            return False
        return True

    calls = [good() if n % 3 else bad() for n in range(300)]
    results = await asyncio.gather(*calls)
    assert results == [bool(n % 3) for n in range(300)]
    stored = await store.messages.list(
        SCOPE, session.id, MessageFilter(), position=0, limit=1000, max_bytes=2**30
    )
    assert [m.seq for m in stored.items] == list(range(1, 201))


@pytest.mark.parametrize("backend", ["postgres"])  # a matter of PostgreSQL's pool
async def test_cancelled_context_windows_leave_no_connection_in_a_transaction(
    client: ParleyClient, database_url: str
) -> None:
    """Deadlines of a few ms cancelled GetContextWindow inside its snapshot transaction, and the
    connection went back to the pool `idle in transaction`: later calls on it failed for good."""
    session_id = await _a_long_session(client, 200)
    rng = random.Random(3)

    async def cut_short() -> None:
        with contextlib.suppress(Exception):
            await client.get_context_window(
                session_id, max_messages=200, timeout=rng.uniform(0.001, 0.06), retry=False
            )

    await asyncio.gather(*(cut_short() for _ in range(200)))
    results = await asyncio.gather(
        *(client.append_message(session_id, role="user", content="after") for _ in range(60)),
        *(client.get_session(session_id) for _ in range(60)),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await idle_in_transaction(database_url) == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff\xff", id="corrupt-bytes"),
        pytest.param(b"\x0a\x03\xff\xfe\xfd", id="invalid-utf8"),
    ],
)
async def test_undecodable_requests_are_invalid_argument(target: str, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = _raw_bytes_call(channel, "GetSession")(payload, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in (caught.value.details() or "")


async def test_metadata_nested_beyond_the_limit_is_invalid_argument(
    target: str, client: ParleyClient
) -> None:
    _, session = await a_session(client)
    nested = b""
    for _ in range(120):  # Struct{fields: {"k": Value{struct_value: ...}}}, 120 levels deep
        nested = _field(1, _field(1, b"k") + _field(2, _field(5, nested)))
    request = pb.AppendMessageRequest(
        session_id=session.id, message=Message(role=ROLE_USER)
    ).SerializeToString() + _field(2, _field(15, nested))  # message.metadata, merged in
    async with grpc.aio.insecure_channel(target) as channel:
        call = _raw_bytes_call(channel, "AppendMessage")(request, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _raw_bytes_call(
    channel: grpc.aio.Channel, method: str
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """Call `method` with request bytes as they are, unchecked by any protobuf library."""
    return channel.unary_unary(f"{METHOD}{method}", lambda data: data, lambda data: data)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def test_sigterm_under_load_exits_cleanly(database_url: str) -> None:
    """After SIGTERM, callers see OK or UNAVAILABLE (which they retry), never CANCELLED; the
    process exits 0."""
    async with parley_serve(database_url) as server, ParleyClient(server.target) as client:
        _, session = await a_session(client)
        codes: list[str] = []
        stop, under_load = asyncio.Event(), asyncio.Event()

        async def keep_appending() -> None:
            while not stop.is_set():
                try:
                    await client.append_message(session.id, role="user", content="x")
                    codes.append("OK")
                    if len(codes) >= 200:
                        under_load.set()
                except Exception as error:
                    codes.append(getattr(error, "code", grpc.StatusCode.UNKNOWN).name)
                    if codes[-1] == "UNAVAILABLE":
                        return

        appenders = [asyncio.create_task(keep_appending()) for _ in range(32)]
        await asyncio.wait_for(under_load.wait(), 30)
        assert await server.stop(signal.SIGTERM) == 0, server.text()[-3000:]
        stop.set()
        await asyncio.gather(*appenders)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, sorted(set(codes))


@pytest.mark.parametrize(
    "token",
    [
        PageToken("ListUsers", fingerprint(), last_time_micros=2**62, last_id=str(uuid.uuid4())),
        PageToken("ListUsers", fingerprint(), last_time_micros=-(2**62), last_id=str(uuid.uuid4())),
        PageToken("ListUsers", fingerprint(), last_time_micros=1, last_id="not a uuid"),
    ],
    ids=["far-future", "far-past", "bad-id"],
)
async def test_forged_page_tokens_are_invalid_argument(
    client: ParleyClient, token: PageToken
) -> None:
    """Tokens were an unkeyed fingerprint: a forged one reached the database and came back
    INTERNAL. Only a token parley signed for this query is honoured."""
    forged = PageTokens(os.urandom(32)).encode(token)  # well-formed, but not signed by parley
    with pytest.raises(InvalidArgumentError) as caught:
        await client.list_users(page_token=forged)
    assert caught.value.field_violations[0].field == "page_token"


async def test_an_altered_page_token_is_invalid_argument(client: ParleyClient) -> None:
    for _ in range(3):
        await client.create_user(display_name="paged")
    token = (await client.list_users(page_size=1)).next_page_token
    assert (await client.list_users(page_size=1, page_token=token)).users
    raw_token = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw_token[3] ^= 1
    altered = base64.urlsafe_b64encode(bytes(raw_token)).rstrip(b"=").decode()
    with pytest.raises(InvalidArgumentError):
        await client.list_users(page_size=1, page_token=altered)


class _AdaptedError(Exception):
    """Stands for SQLAlchemy's adaptation of an asyncpg error: it carries the SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"error with SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "08006", "08001", "53300"])
async def test_every_connection_class_error_is_unavailable(sqlstate: str) -> None:
    """57P03 ("cannot connect now", a restarting database) came back INTERNAL, so clients, which
    retry only UNAVAILABLE, gave up."""
    wrapped = sa_exc.DBAPIError("SELECT 1", None, _AdaptedError(sqlstate))
    with pytest.raises(errors.Unavailable):
        async with translated_errors():
            raise wrapped
    raw_error = asyncpg.PostgresError.new({"C": sqlstate, "M": "down"})
    with pytest.raises(errors.Unavailable):
        async with translated_errors():
            raise raw_error


async def test_an_internal_error_logs_no_user_data(
    client: ParleyClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log line of an INTERNAL quoted the failed statement's parameters: users' emails,
    names and titles."""
    email = "private.person@example.com"

    async def failing_create(new: NewUser) -> None:
        async with store.db.write() as session:
            await session.execute(
                text("INSERT INTO users (id, email) VALUES (:id, :email)"),
                {"id": new_id(), "email": email},
            )

    monkeypatch.setattr(store.users, "create", failing_create)
    with caplog.at_level(logging.INFO), pytest.raises(InternalError):
        await client.create_user(display_name="x", email=email)
    assert "failed unexpectedly" in caplog.text
    assert email not in caplog.text


async def test_an_outage_logs_one_warning_not_one_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/parley",
        page_token_secret=base64.b64encode(bytes(32)).decode(),
    )
    database = Database(app.open_engine(settings))
    running = await app.start(app.open_store(settings, database), settings, address="127.0.0.1:0")
    try:
        async with ParleyClient(f"127.0.0.1:{running.port}") as client:
            with caplog.at_level(logging.WARNING):
                for _ in range(40):
                    with pytest.raises(UnavailableError):
                        await client.get_user(new_id(), retry=False)
    finally:
        await running.stop(None, quiet=0)
        await database.dispose()
    warnings = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("backend", ["postgres"])  # SQLite has no connection pool to exhaust
async def test_a_busy_pool_is_not_reported_as_a_database_outage(database_url: str) -> None:
    settings = Settings(database_url=database_url, db_pool_size=1, db_pool_timeout_seconds=0.2)
    database = Database(app.open_engine(settings))
    running = await app.start(app.open_store(settings, database), settings, address="127.0.0.1:0")
    try:
        async with (
            ParleyClient(f"127.0.0.1:{running.port}") as client,
            database.engine.connect() as held,
        ):
            await held.exec_driver_sql("SELECT 1")
            with pytest.raises(UnavailableError) as caught:
                await client.get_user(new_id())
        assert caught.value.reason == "DATABASE_CONNECTIONS_BUSY"
        assert "busy" in caught.value.message
    finally:
        await running.stop(None, quiet=0)
        await database.dispose()


MIB = 1024 * 1024


async def test_large_messages_page_and_stream_within_a_default_client(
    client: ParleyClient, target: str
) -> None:
    """A page of 300 messages of 1 MiB was one 300 MB response, and a stream batch of 500
    messages outgrew the 4 MiB a default client accepts."""
    _, session = await a_session(client)
    for n in range(10):
        await client.append_message(session.id, role="user", content=str(n) * MIB)
    async with ParleyClient(target) as default_client:  # grpc's default 4 MiB receive limit
        page = await default_client.list_messages(session.id, page_size=1000)
        assert 1 <= len(page.messages) <= 3
        assert page.next_page_token
        listed = [m.seq async for m in default_client.iter_messages(session.id, page_size=1000)]
        assert listed == list(range(1, 11))
        streamed = [m.seq async for m in default_client.stream_messages(session.id)]
        assert streamed == list(range(1, 11))
        window = await default_client.get_context_window(session.id, max_messages=10)
        assert window.has_earlier_messages
        assert [m.seq for m in window.messages] == list(range(11 - len(window.messages), 11))
        newest = await default_client.list_messages(session.id, newest_first=True, page_size=5)
        assert [m.seq for m in newest.messages] == list(range(10, 10 - len(newest.messages), -1))


async def test_a_message_larger_than_the_budget_still_goes_out_alone(client: ParleyClient) -> None:
    _, session = await a_session(client)
    big = await client.append_message(session.id, role="user", content="b" * (MIB * 7 // 2))
    await client.append_message(session.id, role="user", content="small")
    page = await client.list_messages(session.id)
    assert [m.id for m in page.messages] == [big.id]
    assert page.next_page_token
    rest = await client.list_messages(session.id, page_token=page.next_page_token)
    assert [m.content for m in rest.messages] == ["small"]


async def test_a_stream_whose_client_stops_reading_is_cut(database_url: str) -> None:
    """A client that opened a stream and stopped reading held the server's handler and its
    batches forever; now the server gives up on it after the stall timeout."""
    async with (
        parley_serve(database_url, env={"PARLEY_STREAM_STALL_TIMEOUT_SECONDS": "0.5"}) as server,
        ParleyClient(server.target) as client,
    ):
        _, session = await a_session(client)
        for _ in range(24):
            await client.append_message(session.id, role="user", content="s" * MIB)
        stream = client.stream_messages(session.id, timeout=4, retry=False)
        received = [(await anext(stream)).seq]  # then read nothing for a while
        await server.wait_for_log("stopped reading")
        with pytest.raises(DeadlineExceededError):
            received.extend([message.seq async for message in stream])
        assert len(received) < 24


async def test_ids_stored_with_a_trailing_newline_are_repaired(tmp_path: Path) -> None:
    """SQLite stored "<uuid>\\n" ids that the old check let through; no read of their session
    could succeed again. Migration 0002 repairs them."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    await migrate.upgrade(engine, "0001")
    await engine.dispose()
    user, session, message = (uuid.uuid4().hex for _ in range(3))
    now = "2026-01-01 00:00:00.000000"
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO users VALUES (?, 'u', NULL, '', '', '', '', '', '', '{}', '{}', ?, ?)",
            (f"{user}\n", now, now),
        )
        db.execute(
            "INSERT INTO sessions (id, user_id, title, metadata, ip_address, user_agent, device,"
            " create_time, update_time, message_count, last_seq)"
            " VALUES (?, ?, '', '{}', '', '', '', ?, ?, 1, 1)",
            (session, f"{user}\n", now, now),
        )
        db.execute(
            "INSERT INTO messages (id, session_id, seq, role, content, name, tool_call_id,"
            " invocation_id, thread_id, reply_to, chapter, user_id, create_time)"
            " VALUES (?, ?, 1, 'user', 'hello', '', '', '', '', ?, '', ?, ?)",
            (f"{message}\n", session, "junk\n", f"{user}\n", now),
        )
    settings = Settings(database_url=url)
    database = await app.open_database(settings)  # migrates SQLite to the newest revision
    running = await app.start(app.open_store(settings, database), settings, address="127.0.0.1:0")
    try:
        async with ParleyClient(f"127.0.0.1:{running.port}") as client:
            session_id = str(uuid.UUID(session))
            listed = (await client.list_messages(session_id)).messages
            assert [(m.id, m.reply_to, m.user_id) for m in listed] == [
                (str(uuid.UUID(message)), "", str(uuid.UUID(user)))
            ]
            assert (await client.get_user(str(uuid.UUID(user)))).display_name == "u"
    finally:
        await running.stop(None, quiet=0)
        await database.dispose()
