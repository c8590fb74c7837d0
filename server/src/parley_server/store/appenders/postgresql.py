"""Appends on PostgreSQL: the rows of several appends (to several sessions) in one statement on
a write lane's own driver connection, through group commit."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from parley_server.domain import MessageEncoding
from parley_server.store.appenders import WriteObserver, stored_encoding, tell_written, writing
from parley_server.store.database import Database, is_outage
from parley_server.store.group_commit import GroupCommit
from parley_server.store.tables import utcnow

# The PostgreSQL append, for the rows of several appends at once. `batch` numbers the rows in
# order. `locked` locks the open sessions among them in id order: the UPDATE only reaches a session
# through it, so every statement (of every server process) takes its locks in one global order and
# two never wait on each other in a cycle (a test caught that deadlock without it). A closed or
# missing session is not locked, so its rows are not inserted. `reserved` takes each session's
# seqs; each row gets the next seq of its session, in order (`numbered`), and its entry, framed
# by parley_entry (migration 0011) as convert.message_entry frames it: tag 1, the length, the
# stored encoding, then seq (field 3). Called on columns, PostgreSQL inlines it.
_UNNESTED = (
    "tenant_id", "session_id", "id", "role", "content", "name", "tool_calls", "tool_call_id",
    "invocation_id", "thread_id", "reply_to", "chapter", "attachments", "citations", "metadata",
    "user_id", "size_bytes", "event_time", "payload", "payload_type", "encoded",
)  # fmt: skip
_JSON_INDEXES = tuple(
    _UNNESTED.index(name) for name in ("tool_calls", "attachments", "citations", "metadata")
)
_ENCODED_INDEX = _UNNESTED.index("encoded")
_APPEND_POSTGRESQL = """
WITH batch AS (
    SELECT * FROM unnest(
        $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::jsonb[],
        $9::text[], $10::text[], $11::text[], $12::uuid[], $13::text[], $14::jsonb[],
        $15::jsonb[], $16::jsonb[], $17::text[], $18::bigint[], $19::timestamptz[],
        $20::bytea[], $21::text[], $22::bytea[]
    ) WITH ORDINALITY AS m(
        tenant_id, session_id, id, role, content, name, tool_calls, tool_call_id, invocation_id,
        thread_id, reply_to, chapter, attachments, citations, metadata, user_id, size_bytes,
        event_time, payload, payload_type, encoded, position
    )
), wanted AS (
    SELECT tenant_id, session_id, count(*) AS n, max(size_bytes) AS largest,
        (array_agg(event_time ORDER BY position DESC)
            FILTER (WHERE event_time IS NOT NULL))[1] AS event_time
    FROM batch GROUP BY tenant_id, session_id
), locked AS (
    SELECT sessions.tenant_id, sessions.id, wanted.n, wanted.largest, wanted.event_time
    FROM sessions
    JOIN wanted ON wanted.tenant_id = sessions.tenant_id AND wanted.session_id = sessions.id
    WHERE sessions.end_time IS NULL
    ORDER BY sessions.tenant_id, sessions.id
    FOR NO KEY UPDATE OF sessions
), reserved AS (
    UPDATE sessions
    SET last_seq = last_seq + locked.n, message_count = message_count + locked.n,
        last_message_time = $1, update_time = $1,
        last_event_time = coalesce(locked.event_time, sessions.last_event_time),
        largest_message_bytes = greatest(largest_message_bytes, locked.largest)
    FROM locked
    WHERE sessions.tenant_id = locked.tenant_id AND sessions.id = locked.id
    RETURNING sessions.tenant_id, sessions.id, sessions.last_seq, locked.n
), numbered AS (
    SELECT b.*, reserved.last_seq - reserved.n
        + row_number() OVER (PARTITION BY b.tenant_id, b.session_id ORDER BY b.position) AS seq
    FROM batch b JOIN reserved ON reserved.tenant_id = b.tenant_id AND reserved.id = b.session_id
)
INSERT INTO messages (
    tenant_id, id, session_id, seq, role, content, name, tool_calls, tool_call_id, invocation_id,
    thread_id, reply_to, chapter, attachments, citations, metadata, user_id, size_bytes,
    event_time, payload, payload_type, entry, create_time
)
SELECT
    tenant_id, id, session_id, seq, role, content, name, tool_calls, tool_call_id,
    invocation_id, thread_id, reply_to, chapter, attachments, citations, metadata, user_id,
    size_bytes, event_time, payload, payload_type, parley_entry(encoded, seq), $1
FROM numbered
RETURNING tenant_id, id, seq
"""

# The same for a statement of one row (a lone append, as at one client): scalar parameters, and no
# batch to group, lock in order or number: less work for the database (the README has figures).
_APPEND_ONE_POSTGRESQL = """
WITH reserved AS (
    UPDATE sessions
    SET last_seq = last_seq + 1, message_count = message_count + 1,
        last_message_time = $1, update_time = $1,
        last_event_time = coalesce($19, sessions.last_event_time),
        largest_message_bytes = greatest(largest_message_bytes, $18::bigint)
    WHERE tenant_id = $2 AND id = $3 AND end_time IS NULL
    RETURNING sessions.last_seq
)
INSERT INTO messages (
    tenant_id, session_id, id, role, content, name, tool_calls, tool_call_id, invocation_id,
    thread_id, reply_to, chapter, attachments, citations, metadata, user_id, size_bytes,
    event_time, payload, payload_type, entry, create_time, seq
)
SELECT $2, $3, $4::uuid, $5, $6, $7, $8::jsonb, $9, $10, $11, $12::uuid, $13, $14::jsonb,
    $15::jsonb, $16::jsonb, $17, $18::bigint, $19::timestamptz, $20::bytea, $21,
    parley_entry($22::bytea, reserved.last_seq), $1, reserved.last_seq
FROM reserved
RETURNING tenant_id, id, seq
"""


class PostgresAppender:
    def __init__(
        self,
        db: Database,
        *,
        lanes: int,
        encoding: MessageEncoding,
        observer: WriteObserver | None = None,
    ) -> None:
        self._encoding = encoding
        self._observer = observer
        # Each lane writes on a connection of its own, so a run of statements checks nothing out
        # of the pool (nor waits for readers to give one back). A statement that failed without
        # losing its connection wrote nothing (it is atomic on its own) and can be split. With an
        # observer, the lane tells it of its commits itself (their NOTIFYs do not reach it).
        self._connections = [db.dedicated(tells=observer) for _ in range(lanes)]
        self._group_commit: GroupCommit[asyncpg.Connection] = GroupCommit(
            lambda lane: self._connections[lane].use(),
            self._write_batch,
            lanes=lanes,
            wrote_nothing=lambda error: not is_outage(error),
        )

    async def append(self, session_id: str, rows: list[dict[str, Any]]) -> list[int] | None:
        return await self._group_commit.append(session_id, rows)

    async def _write_batch(
        self, connection: asyncpg.Connection, rows: list[dict[str, Any]]
    ) -> dict[tuple[str, str], int]:
        """One statement for the rows of several appends (to several sessions): one round trip,
        atomic and durable on its own."""
        now = utcnow()
        for row in rows:
            row["create_time"] = now
        columns = [[row[name] for row in rows] for name in _UNNESTED]
        columns[_ENCODED_INDEX] = [stored_encoding(row, now, self._encoding) for row in rows]
        for index in _JSON_INDEXES:
            columns[index] = [None if v is None else json.dumps(v) for v in columns[index]]
        observer = self._observer
        changing = list(dict.fromkeys((row["tenant_id"], row["session_id"]) for row in rows))
        with writing(observer, changing):
            if len(rows) == 1:
                records = await connection.fetch(
                    _APPEND_ONE_POSTGRESQL, now, *(column[0] for column in columns)
                )
            else:
                records = await connection.fetch(_APPEND_POSTGRESQL, now, *columns)
        seqs = {(record["tenant_id"], str(record["id"])): record["seq"] for record in records}
        if observer is not None:
            # The entries as the statement framed them, now that their seqs are known.
            entry = self._encoding.entry
            written = (
                (row, seq, None if encoded is None else entry(encoded, seq))
                for row, encoded in zip(rows, columns[_ENCODED_INDEX], strict=True)
                if (seq := seqs.get((row["tenant_id"], row["id"]))) is not None
            )
            tell_written(observer, changing, written, now)
        return seqs
