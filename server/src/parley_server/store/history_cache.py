"""Recent reads of sessions' history, answered again from memory until their session changes.

An agent reads the same newest messages of its session turn after turn, and several readers
(a UI, a supervisor) read what it wrote: each such read, repeated while the session has not
changed, costs no query. Reads are kept per session, each under the exact question it answered
(its filter, position, size and order), so a kept answer is the database's own answer, from one
snapshot; everything kept of a session goes when the ChangeHub reports the session changed, or
the shared state its answers show (its app's, its user's).

Fair between tenants: once the cache is full, the least recently used session of the tenant that
holds the most of it goes first, so a tenant that reads many sessions pushes out its own pages,
not another tenant's few. A tenant alone has all of it.

Correct across processes: a kept answer is given only after the hub confirms that every change
committed before the question has reached it (on PostgreSQL, one query on the listener's
connection, shared by the questions waiting for it); when the hub cannot confirm it (its feed is
down), the database answers. An answer computed while what it shows changed is not kept: each
computation holds its session's entry, which a change of the session removes, and one that
shows shared state is kept only if no shared state changed meanwhile.

Written through by this process's appends: an agent that appends and then reads its window again
finds it kept. A write lane tells the cache when a statement is on its way to a session
(writing: until it returns, the session's answers are neither given nor kept, since they may or
may not show it) and what it appended once it has committed (written: each kept answer that
was read at the seq the statement followed is brought forward by the reader's own rules, and
the others go). The echo of that commit does not reach the cache (ChangeHub.own_writers); any
other change still removes the entry, and since a change committed before the lane's statement
is heard of before any later question is answered, an entry brought forward from a state that
missed one is gone before it is given.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from parley_server.store.changes import ChangeHub, ChangeKey, SessionKey, is_session_key

T = TypeVar("T")

log = logging.getLogger(__name__)

# What an entry costs beyond its answers' bytes: its dicts and keys.
ENTRY_OVERHEAD_BYTES = 512


@dataclass(frozen=True, slots=True)
class Computed(Generic[T]):
    """An answer as computed: with an estimate of its size in memory, and the shared state it
    shows besides its session's own rows (app_state_key, user_state_key)."""

    answer: T
    size: int
    shows: tuple[ChangeKey, ...] = ()


@runtime_checkable
class BroughtForward(Protocol):
    """A question whose kept answer a write of this process can bring forward (see written)."""

    def brought_forward(self, answer: Any, change: Any) -> Computed[Any] | None:
        """The answer to this question once `change` is made, from the answer just before it;
        None if it cannot be told without a query (or `answer` is not from just before)."""
        ...


class _Entry:
    __slots__ = ("answers", "shows", "size")

    def __init__(self) -> None:
        self.answers: dict[Hashable, Any] = {}
        self.shows: set[ChangeKey] = set()
        self.size = ENTRY_OVERHEAD_BYTES


class _Tenant:
    """A tenant's kept sessions, least recently used first, and their size."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: OrderedDict[SessionKey, _Entry] = OrderedDict()
        self.size = 0


class HistoryCache:
    """Once the answers kept pass capacity_bytes (as estimated by the readers), the least
    recently used session of the tenant holding the most goes first; a capacity of 0 keeps
    nothing."""

    def __init__(self, hub: ChangeHub, *, capacity_bytes: int) -> None:
        self._hub = hub
        self._capacity = capacity_bytes
        self._entries: dict[SessionKey, _Entry] = {}
        self._tenants: dict[str, _Tenant] = {}
        # (-size, tenant) pushed at every change of a tenant's size: the largest is the first
        # entry that still tells a kept tenant's size (the others are dropped as they surface).
        self._largest: list[tuple[int, str]] = []
        self._shown_by: dict[ChangeKey, set[SessionKey]] = {}  # shared state -> sessions
        # What a transaction of this process is committing changes to (SQLite).
        self._unsettled: Counter[ChangeKey] = Counter()
        # The sessions a write lane's statement in flight changes (see writing()).
        self._writing: Counter[SessionKey] = Counter()
        self._shared_changes = 0  # how many changes of shared state this process has heard of
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
        compute: Callable[[], Awaitable[Computed[T]]],
    ) -> T:
        """The answer to `question` about `session`: kept, or computed and then kept if nothing
        it shows changed meanwhile. A kept answer is shared: callers never change it."""
        if self._capacity <= 0 or session in self._unsettled or session in self._writing:
            return (await compute()).answer
        entry = self._entries.get(session)
        if entry is not None and question in entry.answers:
            # Any change committed before this read removes the entry once the hub has it.
            if await self._hub.caught_up() and self._entries.get(session) is entry:
                self._tenants[session[0]].entries.move_to_end(session)
                return entry.answers[question]  # type: ignore[no-any-return]
            entry = self._entries.get(session)
        if entry is None:
            entry = self._new_entry(session)
        shared_changes = self._shared_changes
        try:
            computed = await compute()
        except BaseException:
            if not entry.answers and self._entries.get(session) is entry:
                self._forget(session)  # a missing session's entry would stay empty
            raise
        unchanged = self._entries.get(session) is entry and (
            not computed.shows
            or (shared_changes == self._shared_changes and not self._unsettled_shared())
        )
        if unchanged and question not in entry.answers:
            self._keep(session, entry, question, computed)
        return computed.answer

    def _new_entry(self, session: SessionKey) -> _Entry:
        entry = self._entries[session] = _Entry()
        tenant = self._tenants.get(session[0])
        if tenant is None:
            tenant = self._tenants[session[0]] = _Tenant()
        tenant.entries[session] = entry
        self._grown(session, entry.size)
        return entry

    def _keep(
        self, session: SessionKey, entry: _Entry, question: Hashable, computed: Computed[Any]
    ) -> None:
        entry.answers[question] = computed.answer
        entry.size += computed.size
        for key in computed.shows:
            entry.shows.add(key)
            self._shown_by.setdefault(key, set()).add(session)
        self._tenants[session[0]].entries.move_to_end(session)
        self._grown(session, computed.size)

    def writing(self, session: SessionKey) -> None:
        """A write lane of this process sends a statement that changes `session`: until
        written() or abandoned(), its answers are neither given nor kept."""
        self._writing[session] += 1

    def written(self, session: SessionKey, change: Any) -> None:
        """That statement committed `change`, the only change of `session` since its answers
        were read (any other one removes them when it is heard of): each kept answer to a
        question that is BroughtForward becomes what the question makes of it; the others go.
        A computation that began before keeps nothing (it may show the change, or not)."""
        entry = self._entries.get(session)
        if entry is not None:
            kept = list(entry.answers.items())
            self._forget(session)
            try:
                advanced = [
                    (question, question.brought_forward(answer, change))
                    for question, answer in kept
                    if isinstance(question, BroughtForward)
                ]
            except Exception as error:  # a bug must never fail appends that have committed
                log.error("history cache: could not bring %s forward: %r", session, error)
                advanced = []
            if any(computed is not None for _, computed in advanced):
                entry = self._new_entry(session)
                for question, computed in advanced:
                    if self._entries.get(session) is not entry:
                        break  # made room for the others by going itself
                    if computed is not None:
                        self._keep(session, entry, question, computed)
        self._written(session)

    def abandoned(self, session: SessionKey) -> None:
        """That statement failed, and may or may not have committed: what was kept goes."""
        self._forget(session)
        self._written(session)

    def _written(self, session: SessionKey) -> None:
        self._writing[session] -= 1
        if self._writing[session] <= 0:
            del self._writing[session]

    def _unsettled_shared(self) -> bool:
        return any(not is_session_key(key) for key in self._unsettled)

    def _grown(self, session: SessionKey, size: int) -> None:
        """Count `size` more bytes kept for `session`, and make room for them."""
        self._resized(session[0], size)
        while self._size > self._capacity and self._tenants:
            self._forget(next(iter(self._largest_tenant().entries)))

    def _resized(self, name: str, change: int) -> None:
        tenant = self._tenants[name]
        tenant.size += change
        self._size += change
        if len(self._largest) > 2 * len(self._tenants) + 64:
            self._largest = [(-kept.size, kept_name) for kept_name, kept in self._tenants.items()]
            heapq.heapify(self._largest)
        else:
            heapq.heappush(self._largest, (-tenant.size, name))

    def _largest_tenant(self) -> _Tenant:
        while True:
            negative_size, name = self._largest[0]
            tenant = self._tenants.get(name)
            if tenant is not None and tenant.size == -negative_size:
                return tenant
            heapq.heappop(self._largest)

    def _forget(self, session: SessionKey) -> None:
        entry = self._entries.pop(session, None)
        if entry is None:
            return
        tenant = self._tenants[session[0]]
        del tenant.entries[session]
        self._resized(session[0], -entry.size)
        if not tenant.entries:
            del self._tenants[session[0]]
        for key in entry.shows:
            sessions = self._shown_by.get(key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._shown_by[key]

    def _forget_what_shows(self, key: ChangeKey) -> None:
        if is_session_key(key):
            self._forget((key[0], key[1]))
        else:
            self._shared_changes += 1
            for session in self._shown_by.pop(key, set()):
                self._forget(session)

    # ChangeObserver

    def changing(self, key: ChangeKey) -> None:
        self._unsettled[key] += 1
        self._forget_what_shows(key)

    def changed(self, key: ChangeKey) -> None:
        self._forget_what_shows(key)
        if key in self._unsettled:
            self._unsettled[key] -= 1
            if self._unsettled[key] <= 0:
                del self._unsettled[key]

    def reset(self) -> None:
        self._entries.clear()
        self._tenants.clear()
        self._largest.clear()
        self._shown_by.clear()
        self._shared_changes += 1
        self._size = 0
