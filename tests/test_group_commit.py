"""Group commit (coalescing concurrent appends into one statement), against a fake writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from parley_server.store.group_commit import GroupCommit, Row


class TakenError(Exception):
    """A constraint failure: the statement wrote nothing."""


class BrokenError(Exception):
    """A writer failure after which the statement's fate is unknown."""


class FakeDatabase:
    """Assigns seqs per session in row order, one statement at a time, like the real statement."""

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}
        self.closed: set[str] = set()
        self.taken: set[str] = set()
        self.statements: list[list[Row]] = []
        self.writers_opened = 0
        self.writers_discarded = 0
        self.break_next = False

    @asynccontextmanager
    async def writer(self, _lane: int) -> AsyncIterator[str]:
        self.writers_opened += 1
        try:
            yield f"connection-{self.writers_opened}"
        except BrokenError:
            self.writers_discarded += 1
            raise

    async def write(self, writer: str, rows: list[Row]) -> dict[tuple[str, str], int]:
        await asyncio.sleep(0.001)  # a round trip, during which more appends queue
        self.statements.append(rows)
        if self.break_next:
            self.break_next = False
            raise BrokenError(writer)
        if any(row["id"] in self.taken for row in rows):
            raise TakenError()
        seqs: dict[tuple[str, str], int] = {}
        for row in rows:
            if row["session_id"] in self.closed:
                continue
            seq = self.last_seq.get(row["session_id"], 0) + 1
            self.last_seq[row["session_id"]] = seq
            seqs[row["tenant_id"], row["id"]] = seq
        for row in rows:
            self.taken.add(row["id"])
        return seqs


def rows(session_id: str, *ids: str) -> list[Row]:
    return [{"tenant_id": "default", "session_id": session_id, "id": i} for i in ids]


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase()


def group_commit(database: FakeDatabase, lanes: int = 1) -> GroupCommit[Any]:
    return GroupCommit(
        database.writer,
        database.write,
        lanes=lanes,
        wrote_nothing=lambda error: isinstance(error, TakenError),
    )


async def test_concurrent_appends_share_statements(database: FakeDatabase) -> None:
    writer = group_commit(database, lanes=2)
    results = await asyncio.gather(
        *(writer.append(f"s{n % 8}", rows(f"s{n % 8}", f"m{n}")) for n in range(64))
    )
    assert len(database.statements) < 16  # 64 appends, far fewer statements
    seqs = [seq for result in results for seq in result or ()]
    assert sorted(seqs) == sorted(seq for _session in range(8) for seq in range(1, 9))


async def test_a_session_sees_its_appends_in_arrival_order(database: FakeDatabase) -> None:
    writer = group_commit(database, lanes=3)
    results = await asyncio.gather(
        *(writer.append("s", rows("s", f"m{n}", f"m{n}b")) for n in range(20))
    )
    assert [seqs for seqs in results] == [[2 * n + 1, 2 * n + 2] for n in range(20)]


async def test_a_lone_append_does_not_wait(database: FakeDatabase) -> None:
    writer = group_commit(database)
    assert await asyncio.wait_for(writer.append("s", rows("s", "m1")), 0.5) == [1]
    assert len(database.statements) == 1


async def test_a_constraint_failure_reaches_only_its_append(database: FakeDatabase) -> None:
    database.taken.add("dup")
    writer = group_commit(database)
    results = await asyncio.gather(
        *(writer.append(f"s{n}", rows(f"s{n}", f"m{n}")) for n in range(5)),
        writer.append("s9", rows("s9", "dup")),
        return_exceptions=True,
    )
    assert results[:5] == [[1]] * 5
    assert isinstance(results[5], TakenError)


async def test_a_closed_session_gets_none_and_the_others_their_seqs(
    database: FakeDatabase,
) -> None:
    database.closed.add("closed")
    writer = group_commit(database)
    open_one, closed_one = await asyncio.gather(
        writer.append("open", rows("open", "m1")), writer.append("closed", rows("closed", "m2"))
    )
    assert (open_one, closed_one) == ([1], None)


async def test_a_broken_writer_fails_its_statement_and_is_replaced(
    database: FakeDatabase,
) -> None:
    writer = group_commit(database)
    database.break_next = True
    first = await asyncio.gather(
        *(writer.append(f"s{n}", rows(f"s{n}", f"m{n}")) for n in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(result, BrokenError) for result in first)  # fate unknown: never retried
    assert database.writers_discarded == 1
    assert await writer.append("s", rows("s", "after")) == [1]
    assert database.writers_opened == 2


async def test_a_cancelled_caller_s_queued_append_is_not_written(database: FakeDatabase) -> None:
    writer = group_commit(database)
    first = asyncio.create_task(writer.append("s", rows("s", "first")))
    await asyncio.sleep(0)  # first is now being written
    gone = asyncio.create_task(writer.append("s", rows("s", "gone")))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == [1]
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.01)
    assert all(row["id"] != "gone" for statement in database.statements for row in statement)
