from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import (
    Attachment,
    Citation,
    ContextWindow,
    Message,
    MessageFilter,
    NewMessage,
    Page,
    Role,
    ToolCall,
    repeats,
)
from parley_server.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from parley_server.store.contexts import to_context
from parley_server.store.database import Database, is_outage, translated_errors
from parley_server.store.group_commit import GroupCommit
from parley_server.store.sessions import to_session
from parley_server.store.tables import contexts, messages, new_id, sessions, users, utcnow


def _tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]] | None:
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls] or None


def _attachments_json(items: Sequence[Attachment]) -> list[dict[str, Any]] | None:
    return [
        {
            "name": a.name,
            "mime_type": a.mime_type,
            "uri": a.uri,
            "size_bytes": a.size_bytes,
            "metadata": a.metadata,
        }
        for a in items
    ] or None


def _citations_json(items: Sequence[Citation]) -> list[dict[str, Any]] | None:
    return [
        {
            "uri": c.uri,
            "title": c.title,
            "snippet": c.snippet,
            "start_index": c.start_index,
            "end_index": c.end_index,
            "metadata": c.metadata,
        }
        for c in items
    ] or None


_ROLES = {role.value: role for role in Role}


def _to_message(row: Mapping[Any, Any]) -> Message:
    """From a row (SQLAlchemy or asyncpg, whose ids are UUID objects) or an inserted row dict."""
    reply_to, user_id = row["reply_to"], row["user_id"]
    tool_calls, attachments, citations = row["tool_calls"], row["attachments"], row["citations"]
    return Message(
        id=str(row["id"]),
        session_id=str(row["session_id"]),
        seq=row["seq"],
        role=_ROLES[row["role"]],
        content=row["content"],
        name=row["name"],
        tool_calls=tuple(ToolCall(**c) for c in tool_calls) if tool_calls else (),
        tool_call_id=row["tool_call_id"],
        invocation_id=row["invocation_id"],
        thread_id=row["thread_id"],
        reply_to=str(reply_to) if reply_to else "",
        chapter=row["chapter"],
        attachments=tuple(Attachment(**a) for a in attachments) if attachments else (),
        citations=tuple(Citation(**c) for c in citations) if citations else (),
        metadata=row["metadata"] or {},
        user_id=str(user_id) if user_id else "",
        create_time=row["create_time"],
    )


MAX_WINDOW_CONTEXTS = 1000

# The PostgreSQL append, for the rows of several appends at once. `batch` numbers the rows in
# order. `locked` locks the open sessions among them in id order: the UPDATE only reaches a session
# through it, so every statement (of every server process) takes its locks in one global order and
# two never wait on each other in a cycle (a test caught that deadlock without it). A closed or
# missing session is not locked, so its rows are not inserted. `reserved` takes each session's
# seqs; each row gets the next seq of its session, in order.
_UNNESTED = (
    "session_id", "id", "role", "content", "name", "tool_calls", "tool_call_id", "invocation_id",
    "thread_id", "reply_to", "chapter", "attachments", "citations", "metadata", "user_id",
    "size_bytes",
)  # fmt: skip
_JSON_INDEXES = tuple(
    _UNNESTED.index(name) for name in ("tool_calls", "attachments", "citations", "metadata")
)
_APPEND_POSTGRESQL = """
WITH batch AS (
    SELECT * FROM unnest(
        $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::text[],
        $9::text[], $10::text[], $11::uuid[], $12::text[], $13::jsonb[], $14::jsonb[],
        $15::jsonb[], $16::uuid[], $17::bigint[]
    ) WITH ORDINALITY AS m(
        session_id, id, role, content, name, tool_calls, tool_call_id, invocation_id, thread_id,
        reply_to, chapter, attachments, citations, metadata, user_id, size_bytes, position
    )
), wanted AS (
    SELECT session_id, count(*) AS n FROM batch GROUP BY session_id
), locked AS (
    SELECT sessions.id, wanted.n
    FROM sessions JOIN wanted ON wanted.session_id = sessions.id
    WHERE sessions.end_time IS NULL
    ORDER BY sessions.id
    FOR NO KEY UPDATE OF sessions
), reserved AS (
    UPDATE sessions
    SET last_seq = last_seq + locked.n, message_count = message_count + locked.n,
        last_message_time = $1, update_time = $1
    FROM locked
    WHERE sessions.id = locked.id
    RETURNING sessions.id, sessions.last_seq, locked.n
)
INSERT INTO messages (
    id, session_id, seq, role, content, name, tool_calls, tool_call_id, invocation_id, thread_id,
    reply_to, chapter, attachments, citations, metadata, user_id, size_bytes, create_time
)
SELECT
    b.id, b.session_id,
    reserved.last_seq - reserved.n
        + row_number() OVER (PARTITION BY b.session_id ORDER BY b.position),
    b.role, b.content, b.name, b.tool_calls, b.tool_call_id, b.invocation_id, b.thread_id,
    b.reply_to, b.chapter, b.attachments, b.citations, b.metadata, b.user_id, b.size_bytes, $1
FROM batch b JOIN reserved ON reserved.id = b.session_id
RETURNING id, seq
"""


@dataclass(frozen=True, slots=True)
class _Shape:
    """Which conditions a list query has: each shape is built and compiled once."""

    chapter: bool
    thread_id: bool
    invocation_id: bool
    role: bool
    after_seq: bool
    newest_first: bool
    after_position: bool

    @classmethod
    def of(cls, where: MessageFilter, *, newest_first: bool, after_position: bool) -> _Shape:
        return cls(
            chapter=bool(where.chapter),
            thread_id=bool(where.thread_id),
            invocation_id=bool(where.invocation_id),
            role=where.role is not None,
            after_seq=where.after_seq > 0,
            newest_first=newest_first,
            after_position=after_position,
        )

    @property
    def filtered(self) -> bool:
        return self.chapter or self.thread_id or self.invocation_id or self.role or self.after_seq


def _filter(shape: _Shape) -> list[ColumnElement[bool]]:
    """The conditions of `shape`'s filter (not its keyset position), over named parameters."""
    conditions = [messages.c.session_id == bindparam("session_id")]
    for column, present in (
        (messages.c.chapter, shape.chapter),
        (messages.c.thread_id, shape.thread_id),
        (messages.c.invocation_id, shape.invocation_id),
        (messages.c.role, shape.role),
    ):
        if present:
            conditions.append(column == bindparam(column.name))
    if shape.after_seq:
        conditions.append(messages.c.seq > bindparam("after_seq"))
    return conditions


def _within_budget(query: Select[Any], order: Any, *extra: Any) -> Select[Any]:
    """`query`'s rows (a LIMITed select of messages, in `order`) up to the first whose running
    total of size_bytes passes the `budget` parameter, and at least two: the database never
    hands over (nor detoasts) much more than a response can carry, and the row past the budget
    tells the caller that more follow."""
    page = query.subquery("page")
    running = func.sum(page.c.size_bytes).over(order_by=order(page.c.seq)).label("running")
    position = func.row_number().over(order_by=order(page.c.seq)).label("position")
    sized = select(page, running, position).subquery("sized")
    return (
        select(*(sized.c[column.name] for column in messages.c), *extra)
        .where(
            or_(sized.c.running - sized.c.size_bytes < bindparam("budget"), sized.c.position <= 2)
        )
        .order_by(order(sized.c.seq))
    )


def _ascending(column: Any) -> Any:
    return column.asc()


def _descending(column: Any) -> Any:
    return column.desc()


@functools.cache
def _page_query(shape: _Shape, with_total: bool) -> Select[Any]:
    order = _descending if shape.newest_first else _ascending
    query = select(messages).where(*_filter(shape)).order_by(order(messages.c.seq))
    if shape.newest_first:
        if shape.after_position:
            query = query.where(messages.c.seq < bindparam("position"))
    else:
        query = query.where(messages.c.seq > bindparam("position"))
    total = [_MESSAGE_COUNT.scalar_subquery().label("total")] if with_total else []
    return _within_budget(query.limit(bindparam("limit")), order, *total)


def fit(rows: Sequence[Mapping[str, Any]], *, limit: int, max_bytes: int) -> int:
    """How many of `rows` (in order) a response carries: at most `limit`, and no more than
    `max_bytes` of size_bytes, but always the first."""
    total = 0
    for count, row in enumerate(rows[:limit]):
        total += row["size_bytes"]
        if total > max_bytes and count > 0:
            return count
    return min(len(rows), limit)


@functools.cache
def _count_query(shape: _Shape) -> Select[Any]:
    return select(func.count().label("count")).select_from(messages).where(*_filter(shape))


_MESSAGE_COUNT = select(sessions.c.message_count).where(sessions.c.id == bindparam("session_id"))
_WINDOW_SESSION = select(sessions).where(sessions.c.id == bindparam("session_id"))
_WINDOW_CONTEXTS = (
    select(contexts)
    .where(contexts.c.session_id == bindparam("session_id"))
    .order_by(contexts.c.create_time, contexts.c.id)
    .limit(MAX_WINDOW_CONTEXTS)
)
_WINDOW_MESSAGES = _within_budget(
    select(messages)
    .where(messages.c.session_id == bindparam("session_id"))
    .order_by(messages.c.seq.desc())
    .limit(bindparam("limit")),
    _descending,
)


class MessageStore:
    def __init__(self, db: Database, *, write_lanes: int = 1) -> None:
        self._db = db
        # Every append goes through group commit. PostgreSQL: one statement per batch on a driver
        # connection held while the lane is busy. SQLite: one transaction per batch, one lane (it
        # has one writer anyway).
        self._group_commit: GroupCommit[Any] = (
            GroupCommit(
                db.driver,
                self._write_batch_postgresql,
                lanes=write_lanes,
                wrote_nothing=lambda error: not is_outage(error),
            )
            if db.dialect == "postgresql"
            # One transaction per statement, rolled back on any error.
            else GroupCommit(
                nullcontext, self._write_batch_sqlite, lanes=1, wrote_nothing=lambda error: True
            )
        )

    async def append(self, session_id: str, news: Sequence[NewMessage]) -> list[Message]:
        """Append news in order with consecutive seqs, atomically; the batch must not be empty.
        Its create_time is when the statement carrying it runs (see group_commit)."""
        rows: list[dict[str, Any]] = [
            {
                "id": new.id or new_id(),
                "session_id": session_id,
                "role": new.role.value,
                "content": new.content,
                "name": new.name,
                "tool_calls": _tool_calls_json(new.tool_calls),
                "tool_call_id": new.tool_call_id,
                "invocation_id": new.invocation_id,
                "thread_id": new.thread_id,
                "reply_to": new.reply_to or None,
                "chapter": new.chapter,
                "attachments": _attachments_json(new.attachments),
                "citations": _citations_json(new.citations),
                "metadata": new.metadata or None,
                "user_id": new.user_id or None,
                "size_bytes": new.size_bytes,
            }
            for new in news
        ]
        try:
            async with translated_errors():
                seqs = await self._group_commit.append(session_id, rows)
        except (IntegrityError, asyncpg.IntegrityConstraintViolationError) as error:
            if stored := await self._stored_repeat(session_id, news, rows):
                return stored
            raise await self._conflict(rows) from error
        if seqs is None:
            # A retry whose first attempt landed before the session was closed is no error.
            if stored := await self._stored_repeat(session_id, news, rows):
                return stored
            async with self._db.read() as session:
                taken = await _first_taken(session, [row["id"] for row in rows])
                if taken is not None:
                    raise AlreadyExists.resource("message", taken)
                raise await _closed_or_missing(session, session_id)
        for row, seq in zip(rows, seqs, strict=True):
            row["seq"] = seq
        return [_to_message(row) for row in rows]

    async def _stored_repeat(
        self, session_id: str, news: Sequence[NewMessage], rows: Sequence[dict[str, Any]]
    ) -> list[Message] | None:
        """The stored messages, if every one of `news` has a client-chosen id and is stored as
        asked, in this session: the append is a retry of one that landed."""
        if not all(new.id for new in news):
            return None
        ids = [row["id"] for row in rows]
        async with self._db.read() as session:
            found = (await session.execute(select(messages).where(messages.c.id.in_(ids)))).all()
        stored = {message.id: message for message in (_to_message(r._mapping) for r in found)}
        if len(stored) != len(ids):
            return None
        ordered = [stored[message_id] for message_id in ids]
        if all(
            message.session_id == session_id and repeats(new, message)
            for new, message in zip(news, ordered, strict=True)
        ):
            return ordered
        return None

    async def _write_batch_postgresql(
        self, connection: asyncpg.Connection, rows: list[dict[str, Any]]
    ) -> dict[str, int]:
        """One statement for the rows of several appends (to several sessions): one round trip,
        atomic and durable on its own."""
        now = utcnow()
        for row in rows:
            row["create_time"] = now
        columns = [[row[name] for row in rows] for name in _UNNESTED]
        for index in _JSON_INDEXES:
            columns[index] = [None if v is None else json.dumps(v) for v in columns[index]]
        records = await connection.fetch(_APPEND_POSTGRESQL, now, *columns)
        return {str(record["id"]): record["seq"] for record in records}

    async def _write_batch_sqlite(self, _: None, rows: list[dict[str, Any]]) -> dict[str, int]:
        """The rows of several appends in one transaction (one fsync): per session, an UPDATE that
        reserves its seqs (and matches nothing if it is closed or missing), then one INSERT."""
        now = utcnow()
        wanted = Counter(row["session_id"] for row in rows)
        async with self._db.write() as session:
            next_seq: dict[str, int] = {}
            for session_id, count in wanted.items():
                last_seq = await session.scalar(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.end_time.is_(None))
                    .values(
                        last_seq=sessions.c.last_seq + count,
                        message_count=sessions.c.message_count + count,
                        last_message_time=now,
                        update_time=now,
                    )
                    .returning(sessions.c.last_seq)
                )
                if last_seq is not None:
                    next_seq[session_id] = last_seq - count + 1
            written = [row for row in rows if row["session_id"] in next_seq]
            for row in written:
                row["seq"] = next_seq[row["session_id"]]
                next_seq[row["session_id"]] += 1
                row["create_time"] = now
            if written:
                await session.execute(insert(messages), written)
        return {row["id"]: row["seq"] for row in written}

    async def get(self, message_id: str) -> Message:
        async with self._db.read() as session:
            row = (
                await session.execute(select(messages).where(messages.c.id == message_id))
            ).first()
        if row is None:
            raise NotFound.resource("message", message_id)
        return _to_message(row._mapping)

    async def list(
        self,
        session_id: str,
        where: MessageFilter,
        *,
        position: int,
        limit: int,
        max_bytes: int,
        newest_first: bool = False,
        count_total: bool = True,
    ) -> Page[Message]:
        """Messages matching `where` after keyset `position` (a seq; 0 to start): in seq order, or
        newest first; at most `limit` of them and `max_bytes` of their size (but at least one).
        With count_total, the page says how many match in all."""
        shape = _Shape.of(where, newest_first=newest_first, after_position=position > 0)
        filtered = shape.filtered
        # Unfiltered, the session's own counter is the total: no scan, and no second round trip.
        total_inline = count_total and not filtered
        values = {
            "session_id": session_id,
            "chapter": where.chapter,
            "thread_id": where.thread_id,
            "invocation_id": where.invocation_id,
            "role": where.role.value if where.role is not None else "",
            "after_seq": where.after_seq,
            "position": position,
            "limit": limit + 1,
            "budget": max_bytes,
        }
        rows = await self._db.fetch(_page_query(shape, total_inline), values)
        total: int | None = rows[0]["total"] if rows and total_inline else None
        if not rows or (count_total and filtered):
            found = await self._db.fetch(_MESSAGE_COUNT, values)
            if not found:
                raise NotFound.resource("session", session_id)
            if count_total:
                total = (
                    (await self._db.fetch(_count_query(shape), values))[0]["count"]
                    if filtered
                    else found[0]["message_count"]
                )
        fitting = fit(rows, limit=limit, max_bytes=max_bytes)
        return Page(
            [_to_message(row) for row in rows[:fitting]],
            has_more=len(rows) > fitting,
            total_size=total,
        )

    async def context_window(
        self, session_id: str, max_messages: int, *, max_bytes: int
    ) -> ContextWindow:
        """The session, its contexts (oldest first, at most MAX_WINDOW_CONTEXTS) and its newest
        messages in seq order, at most max_messages of them and max_bytes of their size (but at
        least one), all from one snapshot."""
        values = {"session_id": session_id, "limit": max_messages + 1, "budget": max_bytes}
        session_rows, context_rows, message_rows = await self._db.fetch_snapshot(
            [(_WINDOW_SESSION, values), (_WINDOW_CONTEXTS, values), (_WINDOW_MESSAGES, values)]
        )
        if not session_rows:
            raise NotFound.resource("session", session_id)
        fitting = fit(message_rows, limit=max_messages, max_bytes=max_bytes)
        return ContextWindow(
            session=to_session(session_rows[0]),
            contexts=[to_context(row) for row in context_rows],
            messages=[_to_message(row) for row in reversed(message_rows[:fitting])],
            has_earlier_messages=len(message_rows) > fitting,
        )

    async def delete(self, message_id: str, *, allow_missing: bool) -> None:
        """Delete the message (its ratings cascade); its seq is never handed out again."""
        try:
            async with self._db.write() as session:
                session_id = await session.scalar(
                    select(messages.c.session_id).where(messages.c.id == message_id)
                )
                if session_id is None:
                    raise NotFound.resource("message", message_id)
                # Session row first, as append does, so the two never wait on each other in a cycle.
                await session.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id)
                    .values(message_count=sessions.c.message_count - 1, update_time=utcnow())
                )
                deleted = await session.scalar(
                    delete(messages).where(messages.c.id == message_id).returning(messages.c.id)
                )
                if deleted is None:  # deleted concurrently; the rollback restores the count
                    raise NotFound.resource("message", message_id)
        except NotFound:
            if not allow_missing:
                raise

    async def _conflict(self, rows: Sequence[dict[str, Any]]) -> Exception:
        ids = [row["id"] for row in rows]
        author_ids = {row["user_id"] for row in rows if row["user_id"]}
        async with self._db.read() as session:
            taken = await _first_taken(session, ids)
            if taken is not None:
                return AlreadyExists.resource("message", taken)
            if author_ids:
                found = set(
                    await session.scalars(select(users.c.id).where(users.c.id.in_(author_ids)))
                )
                missing = sorted(author_ids - found)
                if missing:
                    return NotFound.resource("user", missing[0])
        return Aborted(
            "a concurrent change conflicted with this append; retry", reason="CONCURRENT_CONFLICT"
        )


async def _first_taken(session: AsyncSession, ids: Sequence[str]) -> str | None:
    """One of `ids` that a stored message has, if any."""
    taken = await session.scalar(select(messages.c.id).where(messages.c.id.in_(ids)).limit(1))
    return None if taken is None else str(taken)


async def _closed_or_missing(session: AsyncSession, session_id: str) -> Exception:
    if await session.scalar(select(exists().where(sessions.c.id == session_id))):
        return FailedPrecondition(
            f"session {session_id!r} is closed; it accepts no more messages",
            reason="SESSION_CLOSED",
            metadata={"sessionId": session_id},
        )
    return NotFound.resource("session", session_id)
