"""Looking into a server under test: what its store asks the database, and when its change feed
is caught up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley_server.store import Store, database
from parley_server.store.changes import ChangeHub


def count_calls(store: Store, monkeypatch: pytest.MonkeyPatch, read: str) -> list[int]:
    """A one-item list holding how many times the store's database has run `read` (fetch: a
    history page; snapshot: a context window) since."""
    counted = [0]
    reader = getattr(store.db, read)

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return reader(*args, **kwargs)

    monkeypatch.setattr(store.db, read, counting)
    return counted


async def until_caught_up(hub: ChangeHub) -> None:
    """Until the server's hub has heard of every change committed so far (on PostgreSQL, once
    its listener has connected): a read computed before it heard of an earlier change is not
    kept, since the change might be newer than the read."""
    async with asyncio.timeout(10):
        while not await hub.caught_up():  # noqa: ASYNC110  # the listener connects in its own task
            await asyncio.sleep(0.01)


def count_statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list holding how many read statements the store's databases have run since
    (each of a read in two statements counts)."""
    counted = [0]
    inner = database._read

    async def counting(read: Any, run: Any) -> Any:
        async def counted_run(statement: Any) -> Any:
            counted[0] += 1
            return await run(statement)

        return await inner(read, counted_run)

    monkeypatch.setattr(database, "_read", counting)
    return counted
