"""The write path of appends, one module per dialect behind one interface: what a dialect does
fastest differs too much to share (one coalesced statement on PostgreSQL's driver connection; one
transaction per batch through SQLAlchemy on SQLite, which has a single writer anyway)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import case, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import MessageEncoding, Session
from parley_server.store.changes import SessionKey
from parley_server.store.database import Database
from parley_server.store.tables import sessions


class Appender(Protocol):
    async def append(self, session_id: str, rows: list[dict[str, Any]]) -> list[int] | None:
        """Write `rows` (new messages of session_id, as column values) atomically and durably;
        their seqs in order, or None if the session is closed or missing. Each row's
        create_time is set to when the statement carrying it ran, and its entry stored as
        EncodeEntry makes it from stored_encoding's and the seq."""
        ...


@dataclass(frozen=True, slots=True)
class Appended:
    """What one statement appended to one session, as stored: the rows (column values, as the
    append gave them) in seq order, their seqs and stored entries, and the statement's time
    (the rows' create_time, the session's update_time and last_message_time)."""

    session: SessionKey
    time: datetime
    rows: list[dict[str, Any]]
    seqs: list[int]
    entries: list[bytes | None]

    def session_after(self, before: Session) -> Session | None:
        """`before` as this statement left it, if it was read just before the statement (at
        the last seq the statement followed); None if it was read at another point."""
        if before.last_seq != self.seqs[0] - 1:
            return None
        return dataclasses.replace(
            before,
            last_seq=self.seqs[-1],
            message_count=before.message_count + len(self.rows),
            last_message_time=self.time,
            update_time=self.time,
            last_event_time=newest_event_time(self.rows) or before.last_event_time,
        )


class WriteObserver(Protocol):
    """Told of each statement of a write lane, as the history cache is (its write-through)."""

    def writing(self, session: SessionKey) -> None:
        """A statement that changes `session` is on its way."""

    def written(self, session: SessionKey, change: Any) -> None:
        """It committed, and appended `change` (Appended) to `session`."""

    def abandoned(self, session: SessionKey) -> None:
        """It changed nothing of `session`, or failed and may or may not have committed."""


@contextmanager
def writing(observer: WriteObserver | None, changing: Sequence[SessionKey]) -> Iterator[None]:
    """Tell `observer` that a statement (or transaction) is on its way to the sessions it is to
    change, and that it abandoned them if the block fails; tell_written says what it wrote."""
    if observer is None:
        yield
        return
    for key in changing:
        observer.writing(key)
    try:
        yield
    except BaseException:
        for key in changing:
            observer.abandoned(key)
        raise


def tell_written(
    observer: WriteObserver,
    changing: Sequence[SessionKey],
    written: Iterable[tuple[dict[str, Any], int, bytes | None]],
    time: datetime,
) -> None:
    """Tell `observer` what a committed statement (or transaction) appended to each session it
    was to change: the rows it `written`, in order, each with its seq and stored entry (none, to
    a closed or missing session)."""
    appended: dict[SessionKey, Appended] = {}
    for row, seq, entry in written:
        key = (row["tenant_id"], row["session_id"])
        into = appended.get(key)
        if into is None:
            into = appended[key] = Appended(key, time, [], [], [])
        into.rows.append(row)
        into.seqs.append(seq)
        into.entries.append(entry)
    for key in changing:
        if key in appended:
            observer.written(key, appended[key])
        else:
            observer.abandoned(key)


async def reserve_seqs(
    session: AsyncSession,
    tenant: str,
    session_id: str,
    rows: Sequence[dict[str, Any]],
    now: datetime,
    *,
    expected_last_seq: int | None = None,
) -> dict[str, Any] | None:
    """Take the session's next seqs for `rows` (its messages, in order), count them in and
    record the largest's size_bytes and the newest event_time among them, returning its new
    last_seq with what a state delta needs of the row it has locked (id, app, user_id, state);
    None, changing nothing, if it is closed or missing, or not at expected_last_seq when given.
    Portable SQL: the SQLite appender and appends in a transaction of their own (on either
    backend) use it."""
    count = len(rows)
    largest = max(row["size_bytes"] for row in rows)
    event_time = newest_event_time(rows)
    conditions = [
        sessions.c.tenant_id == tenant,
        sessions.c.id == session_id,
        sessions.c.end_time.is_(None),
    ]
    if expected_last_seq is not None:
        conditions.append(sessions.c.last_seq == expected_last_seq)
    values: dict[str, Any] = {
        "last_seq": sessions.c.last_seq + count,
        "message_count": sessions.c.message_count + count,
        "last_message_time": now,
        "update_time": now,
        "largest_message_bytes": case(
            (sessions.c.largest_message_bytes < largest, largest),
            else_=sessions.c.largest_message_bytes,
        ),
    }
    if event_time is not None:
        values["last_event_time"] = event_time
    reserved = (
        await session.execute(
            update(sessions)
            .where(*conditions)
            .values(values)
            .returning(
                sessions.c.last_seq,
                sessions.c.id,
                sessions.c.app,
                sessions.c.user_id,
                sessions.c.state,
            )
        )
    ).first()
    return None if reserved is None else dict(reserved._mapping)


def newest_event_time(rows: Sequence[dict[str, Any]]) -> datetime | None:
    """The event_time of the last of `rows` that has one."""
    return next((row["event_time"] for row in reversed(rows) if row["event_time"]), None)


def stored_encoding(
    row: dict[str, Any], create_time: datetime, encoding: MessageEncoding
) -> bytes | None:
    """A new row's encoding as stored: what the server assigned it, then the rest (None if the
    append gave none). Computed anew for each statement that carries the row, so a retried
    statement stores the same."""
    body: bytes | None = row["encoded"]
    if body is None:
        return None
    return encoding.assigned(row["id"], row["session_id"], create_time) + body


def stored_row(
    row: dict[str, Any], encoded: bytes | None, encoding: MessageEncoding
) -> dict[str, Any]:
    """A copy of a new row (its seq set) as an INSERT of it stores it: with its entry, from its
    stored_encoding `encoded`, in place of the encoding the append gave (which the row keeps,
    for a statement that carries it again)."""
    stored = {**row, "entry": None if encoded is None else encoding.entry(encoded, row["seq"])}
    del stored["encoded"]
    return stored


def appender_for(
    db: Database,
    *,
    write_lanes: int,
    encoding: MessageEncoding,
    observer: WriteObserver | None = None,
) -> Appender:
    """observer: told of each statement (each transaction, on SQLite) of the write lanes."""
    if db.dialect == "postgresql":
        from parley_server.store.appenders.postgresql import PostgresAppender

        return PostgresAppender(db, lanes=write_lanes, encoding=encoding, observer=observer)
    from parley_server.store.appenders.sqlite import SqliteAppender

    return SqliteAppender(db, encoding=encoding, observer=observer)
