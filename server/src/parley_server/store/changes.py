"""Which sessions changed, never how: watchers of a session's history wake and read the tables
from where they stand, so a lost or repeated wake-up costs at most one read; the history cache
forgets what it kept of a changed session.

One ChangeHub per process holds an event per watcher and the process's observers (the cache).
On PostgreSQL one listener connection per process feeds it with the NOTIFYs that a trigger on
sessions sends at every commit that changes a session (from any process); when that connection
drops, observers forget everything, and every watcher is woken once it is back and reads what
it missed. On SQLite (one process) the database publishes after each commit.

A write lane of this process tells an observer of its appends itself, as the statement carrying
them returns (so the history cache can show them at once, see history_cache): the announcement
of such a write (on PostgreSQL, a NOTIFY from that lane's connection, `own_writers`) still wakes
watchers but does not reach that observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import asyncpg

from parley_server.logs import describe, throttled

log = logging.getLogger(__name__)

CHANNEL = "parley_history"
# What changed: a session, as (tenant, session id), or state that sessions share (state_key).
ChangeKey = tuple[str, ...]
SessionKey = tuple[str, str]


def app_state_key(tenant: str, app: str) -> ChangeKey:
    """The state every session of an app shares."""
    return ("app state", tenant, app)


def user_state_key(tenant: str, app: str, user_id: str) -> ChangeKey:
    """The state every session of a user within an app shares."""
    return ("user state", tenant, app, user_id)


def states_shown(tenant: str, app: str, user_id: str) -> tuple[ChangeKey, ...]:
    """The shared state a session of `app` owned by `user_id` shows besides its own row."""
    return (app_state_key(tenant, app), user_state_key(tenant, app, user_id))


def is_session_key(key: ChangeKey) -> bool:
    return len(key) == 2


def notification(key: ChangeKey) -> str:
    """The NOTIFY payload that announces a change of `key`: a session as the sessions trigger
    announces it ([tenant, id, last seq], here without one), shared state as {"key": key}."""
    if is_session_key(key):
        return json.dumps([*key, None])
    return json.dumps({"key": list(key)})


def _changed_key(payload: str) -> ChangeKey:
    """What a notification announces (ValueError if it is none of parley's)."""
    parsed = json.loads(payload)
    if isinstance(parsed, list) and len(parsed) == 3:
        tenant, session_id, _last_seq = parsed
        if isinstance(tenant, str) and isinstance(session_id, str):
            return (tenant, session_id)
    key = parsed.get("key") if isinstance(parsed, dict) else None
    if isinstance(key, list) and len(key) > 2 and all(isinstance(part, str) for part in key):
        return tuple(key)
    raise ValueError(f"not a {CHANNEL} notification: {payload[:100]!r}")


# How long a reader waits for the listener to confirm it is caught up before reading without it.
CATCH_UP_TIMEOUT_SECONDS = 0.25


class ChangeObserver(Protocol):
    def changing(self, key: ChangeKey) -> None:
        """A transaction of this process that changes `key` is committing; changed() follows,
        whether it committed or not."""

    def changed(self, key: ChangeKey) -> None:
        """The session (or shared state) changed, or was deleted."""

    def reset(self) -> None:
        """Changes may have been missed: forget every session."""


class Feed(Protocol):
    async def caught_up(self) -> bool:
        """Whether every change committed before this call has been published: True once it
        has, False if that cannot be told now."""


class ChangeHub:
    def __init__(self, *, in_process: bool) -> None:
        """in_process: the database publishes every change before its commit is acknowledged
        (SQLite, written by one process). Otherwise a Feed brings the changes of every process,
        and the hub is caught up only when its feed says so."""
        self._watchers: dict[SessionKey, set[asyncio.Event]] = {}
        self._observers: list[ChangeObserver] = []
        self._in_process = in_process
        # The server process ids of this process's write lane connections, while they are open,
        # each with the observer that its lane tells of its changes itself.
        self.own_writers: dict[int, object] = {}
        self.feed: Feed | None = None
        self.closed = False

    def observe(self, observer: ChangeObserver) -> None:
        self._observers.append(observer)

    async def caught_up(self) -> bool:
        """Whether every change committed before this call has reached the hub (so observers
        have heard of it); False when that cannot be known now (no feed, or it is down)."""
        if self._in_process:
            return True
        return self.feed is not None and await self.feed.caught_up()

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

    def changing(self, changing: Iterable[ChangeKey], *, told: object | None = None) -> None:
        """The database is about to commit changes to these (then publishes them). told: the
        observer that their writer tells of them itself (see publish)."""
        for key in changing:
            for observer in self._observers:
                if observer is not told:
                    observer.changing(key)

    def publish(self, changed: Iterable[ChangeKey], *, told: object | None = None) -> None:
        """told: the observer that the writer of these changes, a write lane of this process,
        tells of them itself; it has heard of them already, or will as the lane's statement
        returns."""
        for key in changed:
            for observer in self._observers:
                if observer is not told:
                    observer.changed(key)
            if is_session_key(key):
                for event in self._watchers.get((key[0], key[1]), ()):
                    event.set()

    def interrupted(self) -> None:
        """The feed stopped: changes from now until it is back may be missed."""
        for observer in self._observers:
            observer.reset()

    def wake_all(self) -> None:
        """After a gap in the feed (a dropped listener), every watcher re-reads."""
        self.interrupted()
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def close(self) -> None:
        """The server is stopping: wake every watcher, to end its stream."""
        self.closed = True
        self.wake_all()


class PostgresListener:
    """LISTEN on one dedicated connection, reconnecting with backoff for as long as it runs; the
    hub's feed.

    It is caught up when a query on that connection, sent after the question, has returned:
    PostgreSQL signals listeners as a NOTIFYing transaction commits, before the commit is
    acknowledged, and a listening backend sends what it was signalled before it answers its next
    query; asyncpg calls the listener before it completes that query. Questions asked while a
    query is on its way share the next one."""

    def __init__(self, hub: ChangeHub, dsn: str, *, max_backoff: float = 5.0) -> None:
        self._hub = hub
        self._dsn = dsn
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None  # while it listens
        self._next_round: asyncio.Future[bool] | None = None
        self._rounds: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._hub.feed = self
        self._task = asyncio.create_task(self._run(), name="parley-history-listener")

    async def stop(self) -> None:
        if self._hub.feed is self:
            self._hub.feed = None
        self._connection = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def caught_up(self) -> bool:
        if self._connection is None:
            return False
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
            if self._rounds is None:
                self._rounds = asyncio.create_task(self._confirm_rounds())
        # Shielded: a caller that leaves never cuts the round that others wait for.
        return await asyncio.shield(self._next_round)

    async def _confirm_rounds(self) -> None:
        """Answer every waiting question, one query per round, until none waits."""
        this_round: asyncio.Future[bool] | None = None
        try:
            while (this_round := self._next_round) is not None:
                self._next_round = None  # asked from now on: the next round
                this_round.set_result(await self._confirm())
        finally:
            self._rounds = None
            for unanswered in (this_round, self._next_round):  # cancelled: not known
                if unanswered is not None and not unanswered.done():
                    unanswered.set_result(False)
            self._next_round = None

    async def _confirm(self) -> bool:
        connection = self._connection
        if connection is None:
            return False
        try:
            await connection.execute("SELECT 1", timeout=CATCH_UP_TIMEOUT_SECONDS)
        except Exception as error:  # whatever it was, nothing is confirmed
            throttled(log, logging.WARNING, f"history listener not answering: {describe(error)}")
            return False
        # Still the connection that listened all along (a new one's gap was reset meanwhile).
        return self._connection is connection

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
                self._connection = None
                self._hub.interrupted()
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))

    async def _listen(self, connection: asyncpg.Connection) -> None:
        """Until the connection is lost."""
        lost = asyncio.Event()

        def on_lost(_: object) -> None:
            # At once, not when _run gets to it: what was heard may be missing changes now.
            self._connection = None
            self._hub.interrupted()
            lost.set()

        connection.add_termination_listener(on_lost)
        await connection.add_listener(CHANNEL, self._notified)
        # Whatever was committed while no one listened is read now.
        self._hub.wake_all()
        self._connection = connection
        await lost.wait()
        throttled(log, logging.WARNING, "history listener connection lost; reconnecting")

    def _notified(self, _connection: Any, pid: int, _channel: str, payload: object) -> None:
        try:
            key = _changed_key(str(payload))
        except ValueError:
            log.warning("a malformed %s notification: forgetting every session", CHANNEL)
            self._hub.interrupted()
            return
        self._hub.publish([key], told=self._hub.own_writers.get(pid))
