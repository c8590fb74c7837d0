"""WatchSession: follow a session's history as it grows, whichever process the writers use.

The watcher reads the tables from where it stands (a seq and a deletion number) every time the
ChangeHub wakes it, so a wake-up lost or repeated costs nothing but a read, and it holds no
database connection while it waits. It reads only when its client has taken what it sent: a slow
client slows its own watch and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from parley_server.domain import HistoryStep, MessageFilter, Scope, Session, WatchEvent
from parley_server.errors import InvalidArgument, NotFound, Unavailable
from parley_server.identity import Principal
from parley_server.services.messages import STREAM_BATCH
from parley_server.services.sessions import SessionService
from parley_server.store import Store

# A deletion number none reaches: what a first read asks for when there is none to resume from.
_NO_PAST_DELETIONS = 2**62


def _shown(session: Session) -> tuple[Any, ...]:
    """What a session event reports a change of (appends and deletes change other fields)."""
    return (session.title, session.metadata, session.client_info, session.end_time)


ReadKey = tuple[Scope, str, MessageFilter, int, int]
StepReader = Callable[..., Awaitable[HistoryStep]]


class SharedReads:
    """Watchers of one session at one position, woken by one change, share one read.

    A watcher clears its wake-up event before it asks to read, and must get a snapshot taken
    after that. So it joins a read only while that read has not begun: a read starts in a task
    that takes itself out of the table first, on a later turn of the event loop than the
    watchers woken with the one that asked for it.
    """

    def __init__(self, read: StepReader) -> None:
        self._read = read
        self._waiting: dict[ReadKey, asyncio.Future[HistoryStep]] = {}
        self._running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def read(
        self,
        scope: Scope,
        session_id: str,
        where: MessageFilter,
        *,
        position: int,
        after_deletion: int,
    ) -> HistoryStep:
        key = (scope, session_id, where, position, after_deletion)
        result = self._waiting.get(key)
        if result is None:
            result = asyncio.get_running_loop().create_future()
            result.add_done_callback(_retrieve)
            self._waiting[key] = result
            task = asyncio.create_task(self._run(key, result))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # Shielded: a watcher that leaves never cuts the read that others wait for.
        return await asyncio.shield(result)

    async def _run(self, key: ReadKey, result: asyncio.Future[HistoryStep]) -> None:
        del self._waiting[key]  # from now on, later wake-ups need a read of their own
        scope, session_id, where, position, after_deletion = key
        try:
            step = await self._read(
                scope, session_id, where, position=position, after_deletion=after_deletion
            )
        except asyncio.CancelledError:
            result.cancel()
            raise
        except Exception as error:
            result.set_exception(error)
        else:
            result.set_result(step)


def _retrieve(result: asyncio.Future[HistoryStep]) -> None:
    """Mark a shared read's error as seen even when every watcher waiting for it has left."""
    if not result.cancelled():
        result.exception()


class WatchService:
    def __init__(
        self,
        store: Store,
        sessions: SessionService,
        *,
        response_budget_bytes: int,
        heartbeat_seconds: float,
        max_lifetime_seconds: float,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._heartbeat = heartbeat_seconds
        self._lifetime = max_lifetime_seconds
        self._reads = SharedReads(
            functools.partial(
                store.messages.history_step, limit=STREAM_BATCH, max_bytes=response_budget_bytes
            )
        )

    async def watch(
        self,
        caller: Principal,
        session_id: str,
        where: MessageFilter,
        *,
        after_seq: int,
        after_deletion: int,
    ) -> AsyncIterator[WatchEvent]:
        await self._sessions.require_visible(caller, session_id)
        hub = self._store.db.changes
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._lifetime
        position, deletion = after_seq, after_deletion
        # A watch from the start reports only deletes after it starts (every earlier one is of
        # a message it never receives); one from a seq, those numbered after after_deletion.
        deletions_known = after_seq > 0 or after_deletion > 0
        shown: tuple[Any, ...] | None = None
        # Subscribed before the first read: a change committed after that read wakes it.
        with hub.subscribe(caller.tenant, session_id) as changed:
            quiet_since = loop.time()
            while True:
                changed.clear()
                if hub.closed:
                    raise Unavailable(
                        "the server is shutting down; resume the watch with after_seq and"
                        " after_deletion from its last event",
                        reason="SERVER_SHUTTING_DOWN",
                    )
                step = await self._reads.read(
                    caller.scope,
                    session_id,
                    where,
                    position=position,
                    after_deletion=deletion if deletions_known else _NO_PAST_DELETIONS,
                )
                if step.session is None:
                    if shown is None:
                        raise NotFound.resource("session", session_id)
                    yield WatchEvent(
                        last_seq=position, last_deletion=deletion, deleted_session_id=session_id
                    )
                    return
                if shown is None and after_seq > step.session.last_seq:
                    # It would skip the next appends until their seqs passed it.
                    raise InvalidArgument.field(
                        "after_seq",
                        f"is {after_seq}, past the session's last seq"
                        f" {step.session.last_seq}; resume from a seq this session has had",
                    )
                sent = False
                if _shown(step.session) != shown:
                    shown = _shown(step.session)
                    yield WatchEvent(
                        last_seq=position, last_deletion=deletion, session=step.session
                    )
                    sent = True
                for gone in step.deletions:
                    deletion = gone.number
                    # Only what this watch was brought past: anything later never reaches it.
                    if gone.seq <= position:
                        yield WatchEvent(last_seq=position, last_deletion=deletion, deletion=gone)
                        sent = True
                if not deletions_known or not step.more_deletions:
                    deletion = step.last_deletion
                    deletions_known = True
                if step.messages:
                    position = step.messages[-1].seq
                if not step.more_messages:
                    position = max(position, step.session.last_seq)
                if step.messages:
                    yield WatchEvent(
                        last_seq=position, last_deletion=deletion, messages=step.messages
                    )
                    sent = True
                if sent:
                    quiet_since = loop.time()
                if step.more_messages or step.more_deletions:
                    continue
                while not changed.is_set():
                    now = loop.time()
                    if now >= ends_at:
                        raise Unavailable(
                            "this watch reached the server's maximum watch lifetime; resume it"
                            " with after_seq and after_deletion from its last event",
                            reason="WATCH_LIFETIME_ENDED",
                        )
                    wait = min(quiet_since + self._heartbeat, ends_at) - now
                    if wait <= 0:
                        yield WatchEvent(last_seq=position, last_deletion=deletion, heartbeat=True)
                        quiet_since = loop.time()
                        continue
                    try:
                        async with asyncio.timeout(wait):
                            await changed.wait()
                    except TimeoutError:
                        pass
