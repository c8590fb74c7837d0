"""Appends on SQLite: the rows of several appends in one transaction (one fsync)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from sqlalchemy import insert

from parley_server.domain import MessageEncoding
from parley_server.store.appenders import (
    WriteObserver,
    reserve_seqs,
    stored_encoding,
    stored_row,
    tell_written,
    writing,
)
from parley_server.store.database import Database
from parley_server.store.group_commit import GroupCommit
from parley_server.store.tables import messages, utcnow


class SqliteAppender:
    def __init__(
        self, db: Database, *, encoding: MessageEncoding, observer: WriteObserver | None
    ) -> None:
        self._db = db
        self._encoding = encoding
        self._observer = observer
        # One lane: SQLite has one writer. Each statement is its own transaction, rolled back on
        # any error, so a failed one wrote nothing and can be split.
        self._group_commit: GroupCommit[None] = GroupCommit(
            lambda _lane: nullcontext(), self._write_batch, lanes=1, wrote_nothing=lambda _: True
        )

    async def append(self, session_id: str, rows: list[dict[str, Any]]) -> list[int] | None:
        return await self._group_commit.append(session_id, rows)

    async def _write_batch(self, _: None, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
        """Per session, an UPDATE that reserves its seqs (and matches nothing if it is closed or
        missing), then one INSERT for every row."""
        now = utcnow()
        wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            wanted.setdefault((row["tenant_id"], row["session_id"]), []).append(row)
        encodings = [stored_encoding(row, now, self._encoding) for row in rows]
        observer = self._observer
        with writing(observer, list(wanted)):
            async with self._db.write(tells=observer) as session:
                next_seq: dict[tuple[str, str], int] = {}
                for (tenant, session_id), its_rows in wanted.items():
                    reserved = await reserve_seqs(session, tenant, session_id, its_rows, now)
                    if reserved is not None:
                        next_seq[tenant, session_id] = reserved["last_seq"] - len(its_rows) + 1
                seqs: dict[tuple[str, str], int] = {}
                written: list[tuple[dict[str, Any], int, bytes | None]] = []
                stored: list[dict[str, Any]] = []
                for row, encoded in zip(rows, encodings, strict=True):
                    key = (row["tenant_id"], row["session_id"])
                    if key in next_seq:
                        row["seq"] = seqs[row["tenant_id"], row["id"]] = next_seq[key]
                        row["create_time"] = now
                        next_seq[key] += 1
                        stored.append(stored_row(row, encoded, self._encoding))
                        written.append((row, row["seq"], stored[-1]["entry"]))
                if stored:
                    await session.execute(insert(messages), stored)
        if observer is not None:
            tell_written(observer, list(wanted), written, now)
        return seqs
