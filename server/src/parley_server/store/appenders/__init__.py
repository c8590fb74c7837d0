"""The write path of appends, one module per dialect behind one interface: what a dialect does
fastest differs too much to share (one coalesced statement on PostgreSQL's driver connection; one
transaction per batch through SQLAlchemy on SQLite, which has a single writer anyway)."""

from __future__ import annotations

from typing import Any, Protocol

from parley_server.store.database import Database


class Appender(Protocol):
    async def append(self, session_id: str, rows: list[dict[str, Any]]) -> list[int] | None:
        """Write `rows` (new messages of session_id, as column values) atomically and durably;
        their seqs in order, or None if the session is closed or missing. Each row's
        create_time is set to when the statement carrying it ran."""
        ...


def appender_for(db: Database, *, write_lanes: int) -> Appender:
    if db.dialect == "postgresql":
        from parley_server.store.appenders.postgresql import PostgresAppender

        return PostgresAppender(db, lanes=write_lanes)
    from parley_server.store.appenders.sqlite import SqliteAppender

    return SqliteAppender(db)
