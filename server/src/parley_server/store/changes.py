"""Wake-ups for watchers of a session's history, never the history itself: a watcher that wakes
reads the tables from where it stands, so a lost or repeated wake-up costs at most one read.

One ChangeHub per process holds an event per watcher. On PostgreSQL one listener connection per
process feeds it with the NOTIFYs that a trigger on sessions sends at every commit that changes a
session (from any process); when that connection drops, every watcher is woken once it is back,
and reads what it missed. On SQLite (one process) the database publishes after each commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg

from parley_server.logs import describe, throttled

log = logging.getLogger(__name__)

CHANNEL = "parley_history"
SessionKey = tuple[str, str]  # (tenant, session id)


class ChangeHub:
    def __init__(self) -> None:
        self._watchers: dict[SessionKey, set[asyncio.Event]] = {}
        self.closed = False

    @contextlib.contextmanager
    def subscribe(self, tenant: str, session_id: str) -> Iterator[asyncio.Event]:
        """An event set at every change of the session after this call (and when the hub
        closes or may have missed changes): clear it before reading, wait on it after."""
        event = asyncio.Event()
        key = (tenant, session_id)
        self._watchers.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    def publish(self, changed: Iterable[SessionKey]) -> None:
        for key in changed:
            for event in self._watchers.get(key, ()):
                event.set()

    def wake_all(self) -> None:
        """After a gap in the feed (a dropped listener), every watcher re-reads."""
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def close(self) -> None:
        """The server is stopping: wake every watcher, to end its stream."""
        self.closed = True
        self.wake_all()


class PostgresListener:
    """LISTEN on one dedicated connection, reconnecting with backoff for as long as it runs."""

    def __init__(self, hub: ChangeHub, dsn: str, *, max_backoff: float = 5.0) -> None:
        self._hub = hub
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="parley-history-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                throttled(
                    log, logging.WARNING, f"history listener: no connection: {describe(error)}"
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.1
            try:
                await self._listen(connection)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                throttled(log, logging.WARNING, f"history listener failed: {describe(error)}")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))

    async def _listen(self, connection: asyncpg.Connection) -> None:
        """Until the connection is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(CHANNEL, self._notified)
        # Whatever was committed while no one listened is read now.
        self._hub.wake_all()
        await lost.wait()
        throttled(log, logging.WARNING, "history listener connection lost; reconnecting")

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            tenant, session_id, _last_seq = json.loads(str(payload))
        except (ValueError, TypeError):
            log.warning("ignoring a malformed %s notification", CHANNEL)
            return
        self._hub.publish([(tenant, session_id)])
