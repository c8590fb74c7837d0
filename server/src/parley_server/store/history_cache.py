"""Recent reads of sessions' history, answered again from memory until their session changes.

An agent reads the same newest messages of its session turn after turn, and several readers
(a UI, a supervisor) read what it wrote: each such read, repeated while the session has not
changed, costs no query. Reads are kept per session, each under the exact question it answered
(its filter, position, size and order), so a kept answer is the database's own answer, from one
snapshot; everything kept of a session goes when the ChangeHub reports the session changed.

Correct across processes: a kept answer is given only after the hub confirms that every change
committed before the question has reached it (on PostgreSQL, one query on the listener's
connection, shared by the questions waiting for it); when the hub cannot confirm it (its feed is
down), the database answers. An answer computed while its session changed is not kept: each
computation holds its session's entry, and a change removes the entry.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from parley_server.store.changes import ChangeHub, SessionKey

T = TypeVar("T")

# What an entry costs beyond its answers' bytes: its dicts and keys.
ENTRY_OVERHEAD_BYTES = 512


class _Entry:
    __slots__ = ("answers", "size")

    def __init__(self) -> None:
        self.answers: dict[Hashable, Any] = {}
        self.size = ENTRY_OVERHEAD_BYTES


class HistoryCache:
    """Least recently used sessions go first once the answers kept pass capacity_bytes (as
    estimated by the readers); a capacity of 0 keeps nothing."""

    def __init__(self, hub: ChangeHub, *, capacity_bytes: int) -> None:
        self._hub = hub
        self._capacity = capacity_bytes
        self._entries: OrderedDict[SessionKey, _Entry] = OrderedDict()
        # Sessions that a transaction of this process is committing changes to (SQLite).
        self._unsettled: Counter[SessionKey] = Counter()
        self._size = 0
        if capacity_bytes > 0:
            hub.observe(self)

    @property
    def size_bytes(self) -> int:
        return self._size

    async def read(
        self,
        session: SessionKey,
        question: Hashable,
        compute: Callable[[], Awaitable[tuple[T, int]]],
    ) -> T:
        """The answer to `question` about `session`: kept, or computed (as the answer and an
        estimate of its size in memory) and then kept if its session did not change meanwhile.
        A kept answer is shared: callers never change it."""
        if self._capacity <= 0 or session in self._unsettled:
            answer, _ = await compute()
            return answer
        entry = self._entries.get(session)
        if entry is not None and question in entry.answers:
            # Any change committed before this read removes the entry once the hub has it.
            if await self._hub.caught_up() and self._entries.get(session) is entry:
                self._entries.move_to_end(session)
                return entry.answers[question]  # type: ignore[no-any-return]
            entry = self._entries.get(session)
        if entry is None:
            entry = self._entries[session] = _Entry()
            self._size += entry.size
            self._evict()
        try:
            answer, size = await compute()
        except BaseException:
            if not entry.answers and self._entries.get(session) is entry:
                self._forget(session)  # a missing session's entry would stay empty
            raise
        if self._entries.get(session) is entry and question not in entry.answers:
            entry.answers[question] = answer
            entry.size += size
            self._size += size
            self._entries.move_to_end(session)
            self._evict()
        return answer

    def _evict(self) -> None:
        while self._size > self._capacity and self._entries:
            _, oldest = self._entries.popitem(last=False)
            self._size -= oldest.size

    def _forget(self, session: SessionKey) -> None:
        entry = self._entries.pop(session, None)
        if entry is not None:
            self._size -= entry.size

    # ChangeObserver

    def changing(self, session: SessionKey) -> None:
        self._unsettled[session] += 1
        self._forget(session)

    def changed(self, session: SessionKey) -> None:
        self._forget(session)
        if session in self._unsettled:
            self._unsettled[session] -= 1
            if self._unsettled[session] <= 0:
                del self._unsettled[session]

    def reset(self) -> None:
        self._entries.clear()
        self._size = 0
