"""Messages are stored with their encoding, as a response's entry (migrations 0008 and 0011), and
reads hand it out as it is.

Property: a random message of any shape (every field, unicode, tool calls, attachments,
citations, nested metadata, event times, payloads) reads back through every read path (Get,
List, Stream, ContextWindow, Watch) exactly as the append answered it, and the append's answer is
built from the columns, field by field. The same holds for rows without an entry (appended
before 0008, or by a user since deleted): their entries are cleared, and every read path reads
them field by field.
"""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, func, select, update

from parley_client import Message, ParleyClient, SyncParleyClient, new_message
from parley_client._gen.parley.v1 import message_pb2
from parley_server import cli
from parley_server.api.convert import stored_entry
from parley_server.domain import NewMessage, Role, Scope
from parley_server.store import Store
from parley_server.store.database import Database
from parley_server.store.rows import to_message
from parley_server.store.tables import messages, sessions
from tests.conftest import property_settings
from tests.factories import a_session

EXAMPLES = int(os.environ.get("PARLEY_ENCODING_EXAMPLES", "60"))

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=80)
_LABEL = st.text(string.ascii_letters + string.digits + " ._-:/", max_size=30)
_IDS = st.uuids().map(str)
_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    # + 0.0: no negative zero, which PostgreSQL's jsonb (numeric) turns into 0 in the columns that
    # rows without an encoding are read from.
    st.floats(allow_nan=False, allow_infinity=False).map(lambda number: number + 0.0),
    _TEXT,
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_LABEL, inner, max_size=3)
    ),
    max_leaves=8,
)
_METADATA = st.dictionaries(_LABEL, _JSON, max_size=4)
_TIMES = st.datetimes(
    min_value=datetime(1, 1, 1),  # hypothesis draws naive times; made UTC below
    max_value=datetime(9999, 12, 31),
).map(lambda moment: moment.replace(tzinfo=UTC))


def _struct(values: dict[str, Any]) -> Any:
    holder = message_pb2.Message()
    holder.metadata.update(values)
    return holder.metadata


@st.composite
def _messages(draw: st.DrawFn, author: str) -> Message:
    role = draw(st.sampled_from(["user", "assistant", "system", "tool"]))
    calls = []
    if role == "assistant":
        for index in range(draw(st.integers(0, 3))):
            calls.append(
                message_pb2.ToolCall(
                    id=f"call-{index}-{draw(_LABEL)}",
                    name=draw(_LABEL.filter(bool)),
                    arguments=draw(_TEXT),
                )
            )
    payload = draw(st.binary(max_size=64))
    return new_message(
        role=role,
        content=draw(_TEXT),
        name=draw(_LABEL),
        tool_calls=calls,
        tool_call_id=draw(_LABEL.filter(bool)) if role == "tool" else "",
        invocation_id=draw(_LABEL),
        thread_id=draw(_LABEL),
        reply_to=draw(st.one_of(st.just(""), _IDS)),
        chapter=draw(_LABEL),
        attachments=[
            message_pb2.Attachment(
                name=draw(_LABEL),
                mime_type=draw(_LABEL),
                uri=draw(_TEXT),
                size_bytes=draw(st.integers(0, 2**62)),
                metadata=_struct(draw(_METADATA)),
            )
            for _ in range(draw(st.integers(0, 2)))
        ],
        citations=[
            message_pb2.Citation(
                uri=draw(_TEXT),
                title=draw(_TEXT),
                snippet=draw(_TEXT),
                start_index=start,
                end_index=start + draw(st.integers(0, 1000)),
                metadata=_struct(draw(_METADATA)),
            )
            for start in draw(st.lists(st.integers(0, 10**6), max_size=2))
        ],
        metadata=draw(_METADATA),
        user_id=draw(st.sampled_from(["", author])),
        event_time=draw(st.one_of(st.none(), _TIMES)),
        payload=payload,
        payload_type=draw(_LABEL.filter(bool)) if payload else "",
    )


def _every_read(parley: SyncParleyClient, session_id: str, count: int) -> Iterator[list[Message]]:
    """The session's messages through each read path, in seq order."""
    yield [parley.get_message(m.id) for m in parley.list_messages(session_id).messages]
    yield list(parley.list_messages(session_id, page_size=count).messages)
    yield list(reversed(parley.list_messages(session_id, newest_first=True).messages))
    yield list(parley.stream_messages(session_id))
    yield list(parley.get_context_window(session_id, max_messages=count).messages)
    watched: list[Message] = []
    events = parley.watch_session(session_id, retry=False)
    try:
        for event in events:
            watched += event.messages.messages
            if len(watched) >= count:
                break
    finally:
        events.close()
    yield watched


def _differences(read: list[Message], stored: list[Message]) -> str:
    """Which fields of which messages differ, for a failure's message."""
    found = [f"{len(read)} messages read, {len(stored)} stored"]
    for index, (got, want) in enumerate(zip(read, stored, strict=False)):
        for descriptor in Message.DESCRIPTOR.fields:
            mine, theirs = getattr(got, descriptor.name), getattr(want, descriptor.name)
            if mine != theirs:
                found.append(f"[{index}].{descriptor.name}: read {mine!r}, stored {theirs!r}")
    return "\n".join(found)


def _as_sent(sent: Message, stored: Message) -> Message:
    """`sent` with the fields the server assigns taken from `stored` (and an empty metadata Struct
    unset: parley keeps no difference between the two)."""
    expected = Message()
    expected.CopyFrom(sent)
    holders: list[Any] = [expected, *expected.attachments, *expected.citations]
    for holder in holders:
        if not holder.metadata.fields:
            holder.ClearField("metadata")
    expected.session_id, expected.seq = stored.session_id, stored.seq
    expected.create_time.CopyFrom(stored.create_time)
    return expected


@pytest.mark.timeout(300)
async def test_every_read_path_returns_messages_as_appended(
    client: ParleyClient, target: str, database: Database
) -> None:
    author, _ = await a_session(client)
    appended: dict[str, list[Message]] = {}  # by session

    def run() -> None:
        with SyncParleyClient(target, default_timeout=20) as parley:

            @property_settings(EXAMPLES)
            @given(st.lists(_messages(author.id), min_size=1, max_size=4))
            def reads_return_what_was_appended(batch: list[Message]) -> None:
                session = parley.create_session(user_id=author.id)
                stored = parley.batch_append_messages(session.id, batch)
                for sent, answer in zip(batch, stored, strict=True):
                    assert answer == _as_sent(sent, answer)
                for read in _every_read(parley, session.id, len(batch)):
                    assert read == stored, _differences(read, stored)
                appended[session.id] = stored

            reads_return_what_was_appended()

    await asyncio.to_thread(run)
    assert len(appended) >= min(EXAMPLES, 10)

    def read_back() -> None:
        with SyncParleyClient(target, default_timeout=20) as parley:
            for session_id, stored in appended.items():
                for read in _every_read(parley, session_id, len(stored)):
                    assert read == stored, _differences(read, stored)
                # A filter leaves out rows between those it reads, encoded or not.
                role = stored[-1].role
                wanted = [m for m in stored if m.role == role]
                assert list(parley.list_messages(session_id, role=role).messages) == wanted

    # Appends store each message as an entry. Rows without one are read between them: every
    # other as rows from before migration 0008 are (read field by field), then all of them so.
    in_sessions = messages.c.session_id.in_(list(appended))
    for rows in (in_sessions & (messages.c.seq % 2 == 0), in_sessions):
        async with database.write() as session:
            await session.execute(update(messages).where(rows).values(entry=None))
        await asyncio.to_thread(read_back)
    async with database.read() as session:
        unencoded = await session.scalar(
            select(func.count())
            .select_from(messages)
            .where(in_sessions, messages.c.entry.is_(None))
        )
    assert unencoded == sum(len(stored) for stored in appended.values())


async def test_encode_history_stores_the_encodings_older_rows_lack(
    client: ParleyClient, target: str, store: Store, database: Database, database_url: str
) -> None:
    """`parley encode-history` gives rows appended before migration 0008 (or from below the API)
    their encoding; every read answers as before, and a second run finds nothing to do."""
    _, session = await a_session(client)
    appended = await client.batch_append_messages(
        session.id,
        [
            new_message(role="user", content="hello", metadata={"n": 1.5}),
            new_message(
                role="assistant",
                tool_calls=[message_pb2.ToolCall(id="c1", name="look", arguments="{}")],
                payload=b"\x00raw",
                payload_type="application/octet-stream",
            ),
        ],
    )
    await store.messages.append(
        Scope(tenant="default"), session.id, [NewMessage(id=None, role=Role.USER, content="old")]
    )
    async with database.write() as transaction:
        await transaction.execute(
            update(messages).where(messages.c.session_id == session.id).values(entry=None)
        )
    before = list((await client.list_messages(session.id)).messages)
    assert before[:2] == appended

    async def unencoded() -> int:
        async with database.read() as transaction:
            return int(
                await transaction.scalar(
                    select(func.count())
                    .select_from(messages)
                    .where(messages.c.session_id == session.id, messages.c.entry.is_(None))
                )
                or 0
            )

    assert await unencoded() == 3
    command = ["--database-url", database_url, "encode-history", "--batch", "2"]
    assert await asyncio.to_thread(cli.main, command) == 0
    assert await unencoded() == 0
    with SyncParleyClient(target, default_timeout=20) as parley:
        for read in await asyncio.to_thread(lambda: list(_every_read(parley, session.id, 3))):
            assert read == before, _differences(read, before)
    assert await asyncio.to_thread(cli.main, command) == 0


async def test_a_row_encoded_between_a_page_and_its_second_read_is_kept(
    client: ParleyClient, store: Store, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's rows without an encoding are read again with every column; if encode-history
    stored their encoding in between, they are still in the page."""
    _, session = await a_session(client)
    appended = await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(4)]
    )
    this_session = messages.c.session_id == session.id
    async with database.write() as transaction:
        encodings = (
            await transaction.execute(select(messages.c.id, messages.c.entry).where(this_session))
        ).all()
        await transaction.execute(update(messages).where(this_session).values(entry=None))
    fetch = store.db.fetch

    async def encoded_right_after_the_page(*args: Any, **kwargs: Any) -> Any:
        page = await fetch(*args, **kwargs)
        monkeypatch.setattr(store.db, "fetch", fetch)
        assert all(row["entry"] is None for row in page)
        async with database.write() as transaction:  # as encode-history would, meanwhile
            await transaction.execute(
                update(messages)
                .where(messages.c.id == bindparam("message_id"))
                .values(entry=bindparam("entry")),
                [{"message_id": row.id, "entry": row.entry} for row in encodings],
            )
        return page

    monkeypatch.setattr(store.db, "fetch", encoded_right_after_the_page)
    listed = await client.list_messages(session.id, page_size=10)
    assert store.db.fetch == fetch  # the page was read, and encoded meanwhile
    assert [m.seq for m in listed.messages] == [m.seq for m in appended]


async def test_appends_store_entries_framed_as_the_api_frames_them(
    client: ParleyClient, database: Database
) -> None:
    """Each way an append is written (one row, several rows in one statement, a transaction of
    its own; on PostgreSQL the first two frame the entry in SQL) stores the entry that the API
    makes of the message from its columns, at seqs and lengths of each varint size."""
    author, _ = await a_session(client)
    contents = ["", "x" * 200, "y" * 20_000]  # entry lengths of one, two and three varint bytes
    written: list[str] = []
    for last_seq in (0, 126, 16_382, 2**21 - 2, 2**35 - 1):
        session = await client.create_session(user_id=author.id)
        async with database.write() as transaction:
            await transaction.execute(
                update(sessions).where(sessions.c.id == session.id).values(last_seq=last_seq)
            )
        for content in contents:
            single = await client.append_message(session.id, role="user", content=content)
            batch = await client.batch_append_messages(
                session.id,
                [new_message(role="assistant", content=content, user_id=author.id) for _ in "ab"],
            )
            alone = await client.append_message(
                session.id, role="user", content=content, expected_last_seq=batch[-1].seq
            )
            written += [single.id, *(message.id for message in batch), alone.id]
    async with database.read() as transaction:
        rows = (await transaction.execute(select(messages).where(messages.c.id.in_(written)))).all()
    assert len(rows) == len(written)
    for row in rows:
        assert row.entry == stored_entry(to_message(row._mapping)), row.seq
