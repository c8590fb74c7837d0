"""Alembic is the only source of the schema: the migrations build exactly what the models declare,
and undo it, on every backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from parley_client._gen.parley.v1 import message_pb2, parley_service_pb2
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


async def test_stored_uuids_keep_their_identity_as_free_string_ids(
    empty_database_url: str,
) -> None:
    """Migration 0007 turns the id columns of users and sessions into strings; a UUID stored
    before it (32 hex digits on SQLite) reads back in its canonical form, still joined up."""
    user_id, session_id, message_id = (str(uuid.uuid4()) for _ in range(3))
    now = datetime.now(UTC)
    engine = create_engine(empty_database_url)
    try:
        await migrate.upgrade(engine, "0006")
        uuid_type = sa.Uuid(as_uuid=False)
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO users (tenant_id, id, display_name, role, picture_url,"
                    " status_message, bio, location, website, social_links, preferences,"
                    " create_time, update_time) VALUES ('default', :id, 'u', '', '', '', '', '',"
                    " '', '{}', '{}', :now, :now)"
                ).bindparams(sa.bindparam("id", type_=uuid_type), sa.bindparam("now", now)),
                {"id": user_id, "now": now},
            )
            await connection.execute(
                sa.text(
                    "INSERT INTO sessions (tenant_id, id, user_id, title, metadata, ip_address,"
                    " user_agent, device, create_time, update_time, message_count, last_seq)"
                    " VALUES ('default', :id, :user_id, 't', '{}', '', '', '', :now, :now, 1, 1)"
                ).bindparams(
                    sa.bindparam("id", type_=uuid_type), sa.bindparam("user_id", type_=uuid_type)
                ),
                {"id": session_id, "user_id": user_id, "now": now},
            )
            await connection.execute(
                sa.text(
                    "INSERT INTO messages (tenant_id, id, session_id, seq, role, content, name,"
                    " tool_call_id, invocation_id, thread_id, chapter, user_id, create_time)"
                    " VALUES ('default', :id, :session_id, 1, 'user', 'hi', '', '', '', '', '',"
                    " :user_id, :now)"
                ).bindparams(
                    sa.bindparam("id", type_=uuid_type),
                    sa.bindparam("session_id", type_=uuid_type),
                    sa.bindparam("user_id", type_=uuid_type),
                ),
                {"id": message_id, "session_id": session_id, "user_id": user_id, "now": now},
            )
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.text(
                        "SELECT users.id AS user_id, sessions.id AS session_id, messages.user_id"
                        " AS author FROM messages JOIN sessions ON sessions.tenant_id ="
                        " messages.tenant_id AND sessions.id = messages.session_id JOIN users ON"
                        " users.tenant_id = sessions.tenant_id AND users.id = sessions.user_id"
                    )
                )
            ).one()
        assert tuple(row) == (user_id, session_id, user_id)
    finally:
        await engine.dispose()


async def test_sessions_learn_their_largest_message_from_the_messages_stored(
    empty_database_url: str,
) -> None:
    """Migration 0010: reads rely on largest_message_bytes to skip summing sizes within the
    byte budget, so sessions stored before it get it from their messages (0 without any)."""
    now = datetime.now(UTC)
    engine = create_engine(empty_database_url)
    try:
        await migrate.upgrade(engine, "0009")
        async with engine.begin() as connection:
            await _insert_sessions(connection, now, "s1", "s2")
            for seq, size in enumerate((10, 7000, 300), start=1):
                await connection.execute(
                    sa.text(
                        "INSERT INTO messages (tenant_id, id, session_id, seq, role, content,"
                        " name, tool_call_id, invocation_id, thread_id, chapter, size_bytes,"
                        " create_time) VALUES ('default', :id, 's1', :seq, 'user', '', '', '',"
                        " '', '', '', :size, :now)"
                    ).bindparams(sa.bindparam("id", type_=sa.Uuid(as_uuid=False))),
                    {"id": str(uuid.uuid4()), "seq": seq, "size": size, "now": now},
                )
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT id, largest_message_bytes FROM sessions")
            )
            largest = {session_id: size for session_id, size in rows}
        assert largest == {"s1": 7000, "s2": 0}
    finally:
        await engine.dispose()


async def test_messages_encoded_before_keep_their_encoding_as_an_entry(
    empty_database_url: str,
) -> None:
    """Migration 0011: a message stored with its encoding (every field but seq and user_id, the
    assigned ones first) gets the entry that holds all of it; one whose encoding lacks the
    assigned fields (a server from before them), or that has none, gets none and is read from
    its columns."""
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    unassigned = message_pb2.Message(role=message_pb2.ROLE_USER, content="old").SerializeToString()
    engine = create_engine(empty_database_url)
    try:
        await migrate.upgrade(engine, "0010")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO users (tenant_id, id, display_name, role, picture_url,"
                    " status_message, bio, location, website, social_links, preferences,"
                    " create_time, update_time) VALUES ('default', 'u1', 'u', '', '', '', '', '',"
                    " '', '{}', '{}', :now, :now)"
                ),
                {"now": now},
            )
            await _insert_sessions(connection, now, "s1")
            for seq, (message_id, user_id, encoded) in enumerate(
                [
                    (ids[0], "u1", _encoded_before_0011(ids[0], now, "hello")),
                    (ids[1], None, _encoded_before_0011(ids[1], now, "x" * 300)),
                    (ids[2], "u1", unassigned),
                    (ids[3], None, None),
                ],
                start=200,
            ):
                await connection.execute(
                    sa.text(
                        "INSERT INTO messages (tenant_id, id, session_id, seq, role, content,"
                        " name, tool_call_id, invocation_id, thread_id, chapter, user_id,"
                        " create_time, encoded) VALUES ('default', :id, 's1', :seq, 'user', '',"
                        " '', '', '', '', '', :user_id, :now, :encoded)"
                    ).bindparams(sa.bindparam("id", type_=sa.Uuid(as_uuid=False))),
                    {
                        "id": message_id,
                        "seq": seq,
                        "user_id": user_id,
                        "now": now,
                        "encoded": encoded,
                    },
                )
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT id, entry FROM messages").columns(
                    sa.column("id", sa.Uuid(as_uuid=False)), sa.column("entry", sa.LargeBinary)
                )
            )
            entries = {message_id: entry for message_id, entry in rows}
        response = parley_service_pb2.ListMessagesResponse.FromString(entries[ids[0]])
        (first,) = response.messages
        assert (first.id, first.session_id, first.seq, first.user_id, first.content) == (
            ids[0], "s1", 200, "u1", "hello",
        )  # fmt: skip
        assert first.create_time.ToDatetime(UTC) == now
        (second,) = parley_service_pb2.ListMessagesResponse.FromString(entries[ids[1]]).messages
        assert (second.seq, second.user_id, second.content) == (201, "", "x" * 300)
        assert entries[ids[2]] is None
        assert entries[ids[3]] is None
    finally:
        await engine.dispose()


def _encoded_before_0011(message_id: str, create_time: datetime, content: str) -> bytes:
    """A message's encoding as servers from before migration 0011 stored it."""
    assigned = message_pb2.Message(id=message_id, session_id="s1")
    assigned.create_time.FromDatetime(create_time)
    body = message_pb2.Message(role=message_pb2.ROLE_USER, content=content)
    return assigned.SerializeToString() + body.SerializeToString()


async def _insert_sessions(connection: AsyncConnection, now: datetime, *ids: str) -> None:
    """Sessions of the default tenant, as a schema from 0009 on holds them."""
    for session_id in ids:
        await connection.execute(
            sa.text(
                "INSERT INTO sessions (tenant_id, id, title, metadata, ip_address, user_agent,"
                " device, create_time, update_time) VALUES ('default', :id, '', '{}', '', '', '',"
                " :now, :now)"
            ),
            {"id": session_id, "now": now},
        )
