"""The ceilings of make bench that fit reads and single appends: what Python gRPC and asyncpg
alone can do on this machine, with none of parley's work between them.

A minimal gRPC server (a generic handler: no interceptors, no validation, no conversion) answers
parley's own method names, so the benchmark's clients call it exactly as they call parley and
parse the same replies. Each method runs the database work that the parley workload it stands
for cannot avoid, on parley's own tables and rows, and answers with bytes encoded beforehand:
replies that parley itself gave to the same requests, so they are of the same size.

  ListMessages      the keyset query for the newest 50 messages (their stored encodings, seq and
                    user_id: the least a reply built from stored bytes needs)
  GetContextWindow  the session, its contexts and that keyset query, in one read-only snapshot
  StreamMessages    per batch parley sent, the keyset query for that batch's rows, then the batch
                    (with a stream_budget: parley's query, under that byte budget, and a batch
                    built from the rows it read, framed by parley's own convert.with_messages)
  AppendMessage     one INSERT of a message row, autocommit (no coalescing); with
                    parley_appends, the append through parley's own write path instead (its
                    group commit, write lane and statement: the session's seq, counters and
                    NOTIFY beside the INSERT), with none of its RPC layer around it

Run by bench/run.py: python bench/ceiling_server.py SETTINGS.json (see CeilingSettings).
"""

from __future__ import annotations

import base64
import itertools
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import uvloop

from parley_client._gen.parley.v1 import message_pb2, parley_service_pb2
from parley_server.api.convert import MESSAGE_ENCODING, new_message, with_messages
from parley_server.api.validate import Violations
from parley_server.domain import EncodedMessage, Scope
from parley_server.store.appenders.postgresql import PostgresAppender
from parley_server.store.database import Database, create_engine
from parley_server.store.messages import append_rows

SERVICE = "parley.v1.ParleyService"
_HISTORY = "SELECT seq, entry FROM messages"
_NEWEST = f"{_HISTORY} WHERE tenant_id = $1 AND session_id = $2 ORDER BY seq DESC LIMIT $3"
_AFTER = f"{_HISTORY} WHERE tenant_id = $1 AND session_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
# Parley's own queries for a stream's batch: its rows, unsummed while even that many of the
# session's largest message fit the byte budget (else none), or up to the budget (and at least two).
_UNSUMMED = (
    f"{_HISTORY} WHERE tenant_id = $1 AND session_id = $2 AND seq > $3 AND (SELECT"
    " largest_message_bytes FROM sessions WHERE tenant_id = $1 AND id = $2) * $4 <= $5"
    " ORDER BY seq LIMIT $4"
)
_WITHIN_BUDGET = (
    "SELECT seq, entry FROM (SELECT *, sum(size_bytes::int) OVER (ORDER BY seq) AS"
    " running, row_number() OVER (ORDER BY seq) AS position FROM (SELECT seq,"
    " size_bytes, entry FROM messages WHERE tenant_id = $1 AND session_id = $2 AND seq > $3"
    " ORDER BY seq LIMIT $4) AS page) AS sized WHERE running - size_bytes <= $5 OR position <= 2"
    " ORDER BY seq"
)
_SESSION = "SELECT * FROM sessions WHERE tenant_id = $1 AND id = $2"
_CONTEXTS = (
    "SELECT * FROM contexts WHERE tenant_id = $1 AND session_id = $2"
    " ORDER BY create_time, id LIMIT 1000"
)
_INSERT = (
    "INSERT INTO messages (tenant_id, id, session_id, seq, role, content, create_time, name,"
    " tool_call_id, invocation_id, thread_id, chapter, payload_type, size_bytes, entry)"
    " VALUES ($1, $2, $3, $4, 'user', $5, $6, '', '', '', '', '', '', $7, $8)"
)


@dataclass
class CeilingSettings:
    """What the ceiling server reads and writes, and the replies it gives (base64)."""

    dsn: str
    address: str
    tenant: str
    list_session: str
    window_session: str
    stream_session: str
    append_sessions: list[str]
    content: str
    list_reply: str
    window_reply: str
    stream_replies: list[str]  # parley's batches, in order
    stream_batch_sizes: list[int]  # messages in each
    append_reply: str
    append_entry: str  # what parley stores for the appended message (its entry)
    append_encoded: str  # the appended message without the fields parley assigns (encoded)
    database_url: str  # parley's (SQLAlchemy's) URL of the same database
    # Above 0: streams build their batches from the rows they read, under this byte budget
    # (parley's), instead of sending parley's.
    stream_budget: int = 0
    # Appends go through parley's own write path (PostgresAppender) instead of one INSERT each.
    parley_appends: bool = False

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def _bytes(text: str) -> bytes:
    return base64.b64decode(text)


async def keep_session(_connection: Any) -> None:
    """A pool's reset that sends nothing. By default asyncpg resets every connection it takes
    back with a query (RESET ALL, UNLISTEN *, ...): a round trip per call that parley's pool does
    not make, and these connections change no session state."""


async def serve(settings: CeilingSettings) -> None:
    # Idle connections close soon: two ceiling servers, parley and the database ceiling's 64
    # connections must fit the database's limit (100 by default) side by side.
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=0,
        max_size=16,
        max_inactive_connection_lifetime=2.0,
        reset=keep_session,
    )
    tenant = settings.tenant
    list_reply, window_reply = _bytes(settings.list_reply), _bytes(settings.window_reply)
    stream_replies = [_bytes(reply) for reply in settings.stream_replies]
    append_reply, append_entry = _bytes(settings.append_reply), _bytes(settings.append_entry)
    budget = settings.stream_budget
    # Far above what parley, ceiling 1 and the write-path server (from each session's own
    # counter) assign these sessions.
    next_seq = itertools.count(10_000_000_000)
    sessions = itertools.cycle(settings.append_sessions)

    async def list_messages(_request: bytes, _context: Any) -> bytes:
        await pool.fetch(_NEWEST, tenant, settings.list_session, 51)
        return list_reply

    async def get_context_window(_request: bytes, _context: Any) -> bytes:
        async with (
            pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            await connection.fetch(_SESSION, tenant, settings.window_session)
            await connection.fetch(_CONTEXTS, tenant, settings.window_session)
            await connection.fetch(_NEWEST, tenant, settings.window_session, 51)
        return window_reply

    async def stream_messages(_request: bytes, _context: Any) -> AsyncIterator[bytes]:
        position = 0
        for reply, size in zip(stream_replies, settings.stream_batch_sizes, strict=True):
            if budget:
                arguments = (tenant, settings.stream_session, position, size + 1, budget)
                rows = await pool.fetch(_UNSUMMED, *arguments) or await pool.fetch(
                    _WITHIN_BUDGET, *arguments
                )
                yield _batch(rows[:size])
            else:
                await pool.fetch(_AFTER, tenant, settings.stream_session, position, size + 1)
                yield reply
            position += size

    # The appended message as parley's API hands it to the store, and its row as the store hands
    # it to the appender.
    new = new_message(
        message_pb2.Message.FromString(_bytes(settings.append_encoded)),
        "message",
        settings.append_sessions[0],
        Violations(),
    )
    (appended_row,) = append_rows(Scope(tenant), settings.append_sessions[0], [new])
    appender = (
        PostgresAppender(
            Database(create_engine(settings.database_url)), lanes=1, encoding=MESSAGE_ENCODING
        )
        if settings.parley_appends
        else None
    )

    async def append_as_parley(_request: bytes, _context: Any) -> bytes:
        assert appender is not None
        session = next(sessions)
        row = {**appended_row, "id": str(uuid.uuid4()), "session_id": session}
        if await appender.append(session, [row]) is None:
            raise RuntimeError(f"session {session} is closed or missing")
        return append_reply

    async def append_message(_request: bytes, _context: Any) -> bytes:
        await pool.execute(
            _INSERT,
            tenant,
            uuid.uuid4(),
            next(sessions),
            next(next_seq),
            settings.content,
            datetime.now(UTC),
            len(append_entry) + 128,
            append_entry,
        )
        return append_reply

    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ListMessages": grpc.unary_unary_rpc_method_handler(list_messages),
            "GetContextWindow": grpc.unary_unary_rpc_method_handler(get_context_window),
            "StreamMessages": grpc.unary_stream_rpc_method_handler(stream_messages),
            "AppendMessage": grpc.unary_unary_rpc_method_handler(
                append_as_parley if settings.parley_appends else append_message
            ),
        },
    )
    server = grpc.aio.server(handlers=[handlers])
    server.add_insecure_port(settings.address)
    await server.start()
    await server.wait_for_termination()


def _batch(rows: list[asyncpg.Record]) -> bytes:
    """A StreamMessagesResponse of rows, framed as parley frames its own (convert.with_messages):
    their stored entries."""
    messages = [EncodedMessage(row["seq"], row["entry"]) for row in rows]
    return cast(bytes, with_messages(parley_service_pb2.StreamMessagesResponse(), messages))


if __name__ == "__main__":
    uvloop.run(serve(CeilingSettings(**json.loads(Path(sys.argv[1]).read_text()))))
