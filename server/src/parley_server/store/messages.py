from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    bindparam,
    cast,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import (
    NO_STATE_DELTA,
    ContextWindow,
    EncodedMessage,
    EncodedMessages,
    HistoryStep,
    Message,
    MessageDeletion,
    MessageEncoding,
    MessageFilter,
    NewMessage,
    Page,
    Scope,
    StateDelta,
    StoredMessage,
    repeats,
)
from parley_server.errors import Aborted, AlreadyExists, NotFound
from parley_server.store.appenders import (
    Appended,
    appender_for,
    reserve_seqs,
    stored_encoding,
    stored_row,
)
from parley_server.store.changes import states_shown
from parley_server.store.contexts import session_closed
from parley_server.store.database import Database, Preferred, translated_errors
from parley_server.store.history_cache import Computed, HistoryCache
from parley_server.store.rows import (
    Row,
    attachments_json,
    citations_json,
    memory_of_contexts,
    memory_of_messages,
    memory_of_session,
    to_context,
    to_message,
    to_session,
    tool_calls_json,
)
from parley_server.store.states import apply_state_delta
from parley_server.store.tables import (
    contexts,
    lock_session,
    message_deletions,
    messages,
    new_id,
    select_sessions,
    sessions,
    users,
    utcnow,
    visible,
)

MAX_WINDOW_CONTEXTS = 1000


@dataclass(frozen=True, slots=True)
class _Shape:
    """Which conditions a list query has: each shape is built and compiled once."""

    chapter: bool
    thread_id: bool
    invocation_id: bool
    role: bool
    after_seq: bool
    min_event_time: bool
    newest_first: bool
    after_position: bool

    @classmethod
    def of(cls, where: MessageFilter, *, newest_first: bool, after_position: bool) -> _Shape:
        return cls(
            chapter=bool(where.chapter),
            thread_id=bool(where.thread_id),
            invocation_id=bool(where.invocation_id),
            role=where.role is not None,
            after_seq=where.after_seq > 0,
            min_event_time=where.min_event_time is not None,
            newest_first=newest_first,
            after_position=after_position,
        )

    @property
    def filtered(self) -> bool:
        return (
            self.chapter
            or self.thread_id
            or self.invocation_id
            or self.role
            or self.after_seq
            or self.min_event_time
        )


# What a history read selects: a row's entry, and what the read needs to know of it. A page with
# rows without an entry (see schema.Message.entry) is read again with every column (_PAGE_RANGE):
# rare, and cheaper than selecting the other columns for every row, whose decoding (a uuid, a
# time) costs more than the rest of the row's. With an entry or not by then (encode-history may
# have run meanwhile): either is read.
_HISTORY_COLUMNS = [messages.c[key] for key in ("seq", "size_bytes", "entry")]
_EVERY_COLUMN = [column for column in messages.c if column.key != "tenant_id"]
_PAGE_RANGE = select(*_EVERY_COLUMN).where(
    messages.c.tenant_id == bindparam("tenant"),
    messages.c.session_id == bindparam("session_id"),
    messages.c.seq >= bindparam("first_seq"),
    messages.c.seq <= bindparam("last_seq"),
)


def _filter(shape: _Shape) -> list[ColumnElement[bool]]:
    """The conditions of `shape`'s filter (not its keyset position), over named parameters."""
    conditions = [
        messages.c.tenant_id == bindparam("tenant"),
        messages.c.session_id == bindparam("session_id"),
    ]
    for column, present in (
        (messages.c.chapter, shape.chapter),
        (messages.c.thread_id, shape.thread_id),
        (messages.c.invocation_id, shape.invocation_id),
        (messages.c.role, shape.role),
    ):
        if present:
            conditions.append(column == bindparam(column.name))
    if shape.after_seq:
        conditions.append(messages.c.seq > bindparam("after_seq"))
    if shape.min_event_time:
        conditions.append(messages.c.event_time >= bindparam("min_event_time"))
    return conditions


def _within_budget(query: Select[Any], order: Any, *extra: Any) -> Preferred:
    """`query`'s rows (a LIMITed select of messages, in `order`) up to the first whose running
    total of size_bytes passes the `budget` parameter, and at least two: the database never
    hands over (nor detoasts) much more than a response can carry, and the row past the budget
    tells the caller that more follow (also the row that starts exactly at the budget, after a
    page that fills it).

    Summing the sizes costs the database more than reading the rows, so the rows are read
    unsummed (running NULL) when even `limit` of the session's largest message fit the budget,
    which then keeps them all; otherwise that statement answers nothing and the summing one runs."""
    page = query.subquery("page")
    # Summed as integers: a bigint sum is numeric in PostgreSQL, several times slower to add up.
    sizes = cast(page.c.size_bytes, Integer)
    running = func.sum(sizes).over(order_by=order(page.c.seq)).label("running")
    position = func.row_number().over(order_by=order(page.c.seq)).label("position")
    sized = select(page, running, position).subquery("sized")
    summed = (
        select(*(sized.c[column.key] for column in _HISTORY_COLUMNS), sized.c.running, *extra)
        .where(
            or_(sized.c.running - sized.c.size_bytes <= bindparam("budget"), sized.c.position <= 2)
        )
        .order_by(order(sized.c.seq))
    )
    unsummed = query.add_columns(null().label("running"), *extra).where(
        _LARGEST.scalar_subquery() * bindparam("limit") <= bindparam("budget")
    )
    return Preferred(unsummed, summed)


def _answering(
    read: Preferred, session: Mapping[str, Any], values: Mapping[str, Any], *, none_follow: bool
) -> Select[Any] | None:
    """Which statement of a _within_budget `read` answers it, decided from its session's row
    read in the same snapshot: none when no message can follow (`none_follow`), the plain one
    when its own guard would pass, else the summing one. One statement, where running the
    plain one first costs a second whenever it finds nothing."""
    if none_follow:
        return None
    if session["largest_message_bytes"] * values["limit"] <= values["budget"]:
        return read.statement
    return read.fallback


def _ascending(column: Any) -> Any:
    return column.asc()


def _descending(column: Any) -> Any:
    return column.desc()


@functools.cache
def _page_query(shape: _Shape, with_total: bool, with_last_seq: bool) -> Preferred:
    order = _descending if shape.newest_first else _ascending
    query = select(*_HISTORY_COLUMNS).where(*_filter(shape)).order_by(order(messages.c.seq))
    if shape.newest_first:
        if shape.after_position:
            query = query.where(messages.c.seq < bindparam("position"))
    else:
        query = query.where(messages.c.seq > bindparam("position"))
    # The session's message count (the total of an unfiltered page) and its last seq: where the
    # page stands, for the history cache (see _PageAsked).
    extra = [_MESSAGE_COUNT.scalar_subquery().label("total")] if with_total else []
    if with_total or with_last_seq:
        extra.append(_LAST_SEQ.scalar_subquery().label("last_seq"))
    return _within_budget(query.limit(bindparam("limit")), order, *extra)


def _of_session(scope: Scope, session_id: str) -> tuple[ColumnElement[bool], ...]:
    return (messages.c.tenant_id == scope.tenant, messages.c.session_id == session_id)


def _page_values(
    scope: Scope, session_id: str, where: MessageFilter, position: int, limit: int, max_bytes: int
) -> dict[str, Any]:
    """The parameters of a _page_query: one row more than `limit`, to tell if more follow."""
    return {
        "tenant": scope.tenant,
        "session_id": session_id,
        "chapter": where.chapter,
        "thread_id": where.thread_id,
        "invocation_id": where.invocation_id,
        "role": where.role.value if where.role is not None else "",
        "after_seq": where.after_seq,
        "min_event_time": where.min_event_time,
        "position": position,
        "limit": limit + 1,
        "budget": max_bytes,
    }


def fit(rows: Sequence[Mapping[str, Any]], *, limit: int, max_bytes: int) -> int:
    """How many of a _within_budget query's `rows` (in order) a response carries: at most
    `limit`, and no more than `max_bytes` (its budget) of size_bytes, but always the first. The
    query left out every row after the first to pass the budget, so only the last row kept can
    be one too many."""
    count = min(len(rows), limit)
    if count > 1:
        running = rows[count - 1]["running"]  # None: read unsummed, as none can pass the budget
        if running is not None and running > max_bytes:
            count -= 1
    return count


@functools.cache
def _count_query(shape: _Shape) -> Select[Any]:
    return select(func.count().label("count")).select_from(messages).where(*_filter(shape))


_THE_SESSION = (sessions.c.tenant_id == bindparam("tenant")) & (
    sessions.c.id == bindparam("session_id")
)
_MESSAGE_COUNT = select(sessions.c.message_count).where(_THE_SESSION)
_LAST_SEQ = select(sessions.c.last_seq).where(_THE_SESSION)
_LARGEST = select(sessions.c.largest_message_bytes).where(_THE_SESSION)
_COUNTERS = select(sessions.c.message_count, sessions.c.last_seq).where(_THE_SESSION)
_WINDOW_SESSION = select_sessions().where(_THE_SESSION)
_WINDOW_CONTEXTS = (
    select(contexts)
    .where(
        contexts.c.tenant_id == bindparam("tenant"),
        contexts.c.session_id == bindparam("session_id"),
    )
    .order_by(contexts.c.create_time, contexts.c.id)
    .limit(MAX_WINDOW_CONTEXTS)
)


@functools.cache
def _window_messages(since_event_time: bool) -> Preferred:
    query = select(*_HISTORY_COLUMNS).where(
        messages.c.tenant_id == bindparam("tenant"),
        messages.c.session_id == bindparam("session_id"),
    )
    if since_event_time:
        query = query.where(messages.c.event_time >= bindparam("min_event_time"))
    return _within_budget(
        query.order_by(messages.c.seq.desc()).limit(bindparam("limit")), _descending
    )


_APPEND_ATTEMPTS = 3
MAX_STEP_DELETIONS = 500
_STEP_DELETIONS = (
    select(message_deletions)
    .where(
        message_deletions.c.tenant_id == bindparam("tenant"),
        message_deletions.c.session_id == bindparam("session_id"),
        message_deletions.c.number > bindparam("after_deletion"),
    )
    .order_by(message_deletions.c.number)
    .limit(MAX_STEP_DELETIONS + 1)
)


@dataclass(frozen=True, slots=True)
class _KeptPage:
    """A page of history as the history cache keeps it: with its messages' size_bytes and the
    session's last seq when it was read."""

    page: Page[StoredMessage]
    sizes: tuple[int, ...]
    last_seq: int | None

    def computed(self) -> Computed[_KeptPage]:
        return Computed(self, memory_of_messages(self.sizes))


@dataclass(frozen=True, slots=True)
class _PageAsked:
    """The question a page of history answers (its cache key)."""

    where: MessageFilter
    position: int
    limit: int
    max_bytes: int
    newest_first: bool
    count_total: bool

    def brought_forward(self, answer: Any, change: Any) -> Computed[_KeptPage] | None:
        """history_cache.BroughtForward: a page of a session's history (newest or oldest first,
        from any position, filtered or not) once `change` (Appended) is appended."""
        kept: _KeptPage = answer
        appended: Appended = change
        page = kept.page
        first = appended.seqs[0]
        if (
            kept.last_seq != first - 1
            # Asked from a position past the session's end (no page of it leads there), some of
            # them would fall on either side of it.
            or (self.position > first if self.newest_first else self.position >= first)
        ):
            return None
        matching = _matching(appended, self.where)
        total = None if page.total_size is None else page.total_size + len(matching)
        if (page.has_more and not self.newest_first) or (self.newest_first and self.position):
            # They come after more than it shows, or after where it starts: it is unchanged.
            after = Page(page.items, has_more=page.has_more, total_size=total)
            return _KeptPage(after, kept.sizes, appended.seqs[-1]).computed()
        shown = _shown(appended, matching)
        if shown is None:
            return None
        new, new_sizes = shown
        if self.newest_first:  # the new messages come first
            items = [*new[::-1], *page.items]
            sizes, more = (*new_sizes[::-1], *kept.sizes), page.has_more
        else:  # after all that it shows
            items, sizes, more = [*page.items, *new], (*kept.sizes, *new_sizes), False
        cut = _read_within(sizes, more=more, limit=self.limit, max_bytes=self.max_bytes)
        if cut is None:
            return None
        count, has_more = cut
        after = Page(items[:count], has_more=has_more, total_size=total)
        return _KeptPage(after, sizes[:count], appended.seqs[-1]).computed()


@dataclass(frozen=True, slots=True)
class _KeptWindow:
    """A context window as the history cache keeps it: with its messages' size_bytes (what an
    append's window is cut from) and the memory its session and contexts take."""

    window: ContextWindow
    sizes: tuple[int, ...]
    other_bytes: int

    def computed(self, tenant: str) -> Computed[_KeptWindow]:
        session = self.window.session
        return Computed(
            self,
            memory_of_messages(self.sizes) + self.other_bytes,
            shows=states_shown(tenant, session.app, session.user_id),
        )


@dataclass(frozen=True, slots=True)
class _WindowAsked:
    """The question a context window answers (its cache key)."""

    max_messages: int
    max_bytes: int
    min_event_time: datetime | None

    def brought_forward(self, answer: Any, change: Any) -> Computed[_KeptWindow] | None:
        """history_cache.BroughtForward: the window once `change` (Appended) is appended, cut
        by the rules the database's read follows (_within_budget, then fit)."""
        kept: _KeptWindow = answer
        appended: Appended = change
        window = kept.window
        session = appended.session_after(window.session)
        if session is None:
            return None
        since = MessageFilter(min_event_time=self.min_event_time)
        shown = _shown(appended, _matching(appended, since))
        if shown is None:
            return None
        new, new_sizes = shown
        sizes = (*kept.sizes, *new_sizes)
        cut = _read_within(
            sizes[::-1],
            more=window.has_earlier_messages,
            limit=self.max_messages,
            max_bytes=self.max_bytes,
        )
        if cut is None:
            return None
        count, has_earlier = cut
        messages = [*window.messages, *new][len(sizes) - count :]
        after = ContextWindow(
            session=session,
            contexts=window.contexts,
            messages=messages,
            has_earlier_messages=has_earlier,
        )
        return _KeptWindow(after, sizes[len(sizes) - count :], kept.other_bytes).computed(
            appended.session[0]
        )


def _matching(appended: Appended, where: MessageFilter) -> list[int]:
    """The positions in `appended` of the messages that `where` matches, as _filter's conditions
    match their rows."""
    event_since = where.min_event_time
    role = None if where.role is None else where.role.value
    return [
        position
        for position, (row, seq) in enumerate(zip(appended.rows, appended.seqs, strict=True))
        if (not where.chapter or row["chapter"] == where.chapter)
        and (not where.thread_id or row["thread_id"] == where.thread_id)
        and (not where.invocation_id or row["invocation_id"] == where.invocation_id)
        and (role is None or row["role"] == role)
        and seq > where.after_seq
        and (event_since is None or _at_or_after(row["event_time"], event_since))
    ]


def _at_or_after(time: datetime | None, since: datetime) -> bool:
    return time is not None and time >= since


def _shown(
    appended: Appended, positions: Sequence[int]
) -> tuple[list[StoredMessage], tuple[int, ...]] | None:
    """The messages appended at `positions` (those a read shows, _matching) as the read returns
    them (each with its stored entry), and their size_bytes; None if one of them has no entry (a
    read gets it field by field: not built here)."""
    messages: list[StoredMessage] = []
    sizes: list[int] = []
    for position in positions:
        entry = appended.entries[position]
        if entry is None:
            return None
        messages.append(EncodedMessage(appended.seqs[position], entry))
        sizes.append(appended.rows[position]["size_bytes"])
    return messages, tuple(sizes)


def _stored_one(row: Row) -> StoredMessage:
    """The message of a row with every column: its entry if it has one, else built from the
    columns."""
    entry: bytes | None = row["entry"]
    return to_message(row) if entry is None else EncodedMessage(row["seq"], entry)


def _sizes(rows: Sequence[Mapping[str, Any]], shown: Sequence[StoredMessage]) -> tuple[int, ...]:
    """The size_bytes of a history read's rows that its messages show (one deleted between the
    read and its second read, see MessageStore._stored, is left out)."""
    if len(shown) == len(rows):
        return tuple(row["size_bytes"] for row in rows)
    seqs = {message.seq for message in shown}
    return tuple(row["size_bytes"] for row in rows if row["seq"] in seqs)


def _read_within(
    sizes: Sequence[int], *, more: bool, limit: int, max_bytes: int
) -> tuple[int, bool] | None:
    """Of messages whose size_bytes are `sizes`, in the order a read takes them (and `more`
    beyond them if so), how many it keeps, and whether it says that more follow:
    _within_budget's rows (at most limit + 1, each starting within the budget or among the
    first two), then fit(). None if that would keep one of those beyond, whose sizes are not
    known here."""
    runnings: list[int] = []
    running = 0
    for position, size in enumerate(sizes, start=1):
        if position > limit + 1 or (running > max_bytes and position > 2):
            returned = len(runnings)
            break
        running += size
        runnings.append(running)
    else:  # every known one is read: the next one beyond too, on the same terms
        position = len(sizes) + 1
        returned = len(runnings) + (
            more and position <= limit + 1 and (running <= max_bytes or position <= 2)
        )
    count = min(returned, limit)
    if count > len(runnings):
        return None
    if count > 1 and runnings[count - 1] > max_bytes:
        count -= 1
    return count, returned > count


def append_rows(scope: Scope, session_id: str, news: Sequence[NewMessage]) -> list[dict[str, Any]]:
    """The rows an append of `news` hands its appender (without seq and create_time, which the
    statement carrying them assigns)."""
    return [
        {
            "tenant_id": scope.tenant,
            "id": new.id or new_id(),
            "session_id": session_id,
            "role": new.role.value,
            "content": new.content,
            "name": new.name,
            "tool_calls": tool_calls_json(new.tool_calls),
            "tool_call_id": new.tool_call_id,
            "invocation_id": new.invocation_id,
            "thread_id": new.thread_id,
            "reply_to": new.reply_to or None,
            "chapter": new.chapter,
            "attachments": attachments_json(new.attachments),
            "citations": citations_json(new.citations),
            "metadata": new.metadata or None,
            "user_id": new.user_id or None,
            "size_bytes": new.size_bytes,
            "event_time": new.event_time,
            "payload": new.payload or None,
            "payload_type": new.payload_type,
            "encoded": new.encoded or None,
        }
        for new in news
    ]


class MessageStore:
    def __init__(
        self,
        db: Database,
        *,
        write_lanes: int = 1,
        encoding: MessageEncoding,
        cache: HistoryCache,
    ) -> None:
        self._db = db
        self._cache = cache
        self._encoding = encoding
        # An append brings what the cache kept of its session forward, without a query.
        self._appender = appender_for(
            db, write_lanes=write_lanes, encoding=encoding, observer=cache
        )

    async def append(
        self,
        scope: Scope,
        session_id: str,
        news: Sequence[NewMessage],
        *,
        expected_last_seq: int | None = None,
        state_delta: StateDelta = NO_STATE_DELTA,
    ) -> list[Message]:
        """Append news in order with consecutive seqs, atomically; the batch must not be empty.
        Its create_time is when the statement carrying it runs (see group_commit). With
        expected_last_seq, only if the session's last seq is that (else Aborted); state_delta is
        applied in the same transaction."""
        rows = append_rows(scope, session_id, news)
        # Another try only when the session turned up open after the write found it missing:
        # it was created meanwhile (a framework making a session on first use, from two places).
        for _ in range(_APPEND_ATTEMPTS):
            try:
                async with translated_errors():
                    if expected_last_seq is None and not state_delta:
                        seqs = await self._appender.append(session_id, rows)
                    else:
                        seqs = await self._append_alone(
                            scope, session_id, rows, expected_last_seq, state_delta
                        )
            except (IntegrityError, asyncpg.IntegrityConstraintViolationError) as error:
                if stored := await self._stored_repeat(scope, session_id, news, rows):
                    return stored
                raise await self._conflict(scope, rows) from error
            if seqs is not None:
                break
            # A retry whose first attempt landed before the session was closed is no error.
            if stored := await self._stored_repeat(scope, session_id, news, rows):
                return stored
            async with self._db.read() as session:
                taken = await _first_taken(session, scope, [row["id"] for row in rows])
                if taken is not None:
                    raise AlreadyExists.resource("message", taken)
                if expected_last_seq is not None:
                    current = await session.scalar(
                        select(sessions.c.last_seq).where(
                            *visible(sessions, scope),
                            sessions.c.id == session_id,
                            sessions.c.end_time.is_(None),
                        )
                    )
                    if current is not None:
                        raise Aborted.last_seq_mismatch(expected_last_seq, current)
                problem = await _closed_or_missing(session, scope, session_id)
            if problem is not None:
                raise problem
        else:
            raise Aborted.concurrent_conflict()
        for row, seq in zip(rows, seqs, strict=True):
            row["seq"] = seq
        return [to_message(row) for row in rows]

    async def _append_alone(
        self,
        scope: Scope,
        session_id: str,
        rows: list[dict[str, Any]],
        expected_last_seq: int | None,
        state_delta: StateDelta,
    ) -> list[int] | None:
        """The rows' seqs, appended (with state_delta applied) in a transaction of their own if
        the session is open (and at expected_last_seq, when given); None (nothing written)
        otherwise. Not coalesced by group commit: a statement for several appends cannot fail one
        of them alone on its condition, nor apply their deltas in order."""
        now = utcnow()
        async with self._db.write() as session:
            reserved = await reserve_seqs(
                session, scope.tenant, session_id, rows, now, expected_last_seq=expected_last_seq
            )
            if reserved is None:
                return None
            for offset, row in enumerate(rows, start=reserved["last_seq"] - len(rows) + 1):
                row["seq"] = offset
                row["create_time"] = now
            stored = [
                stored_row(row, stored_encoding(row, now, self._encoding), self._encoding)
                for row in rows
            ]
            await session.execute(insert(messages), stored)
            if state_delta:  # under the row lock the reserving UPDATE took
                await apply_state_delta(session, scope.tenant, reserved, state_delta, now)
        return [row["seq"] for row in rows]

    async def _stored_repeat(
        self,
        scope: Scope,
        session_id: str,
        news: Sequence[NewMessage],
        rows: Sequence[dict[str, Any]],
    ) -> list[Message] | None:
        """The stored messages, if every one of `news` has a client-chosen id and is stored as
        asked, in this session: the append is a retry of one that landed."""
        if not all(new.id for new in news):
            return None
        ids = [row["id"] for row in rows]
        async with self._db.read() as session:
            found = (
                await session.execute(
                    select(messages).where(
                        messages.c.tenant_id == scope.tenant, messages.c.id.in_(ids)
                    )
                )
            ).all()
        stored = {message.id: message for message in (to_message(r._mapping) for r in found)}
        if len(stored) != len(ids):
            return None
        ordered = [stored[message_id] for message_id in ids]
        if all(
            message.session_id == session_id and repeats(new, message)
            for new, message in zip(news, ordered, strict=True)
        ):
            return ordered
        return None

    async def unencoded(
        self, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, Message]]:
        """Up to `limit` messages stored without an entry (appended before migration 0008, or
        from below the API), with their tenants, in (tenant, id) order after `after`."""
        query = select(messages).where(messages.c.entry.is_(None))
        if after is not None:
            position = tuple_(
                bindparam("after_tenant", after[0], type_=messages.c.tenant_id.type),
                bindparam("after_id", after[1], type_=messages.c.id.type),
            )
            query = query.where(tuple_(messages.c.tenant_id, messages.c.id) > position)
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    query.order_by(messages.c.tenant_id, messages.c.id).limit(limit)
                )
            ).all()
        return [(row.tenant_id, to_message(row._mapping)) for row in rows]

    async def store_entries(self, entries: Sequence[tuple[str, Message, bytes]]) -> None:
        """Each (tenant, message, entry) stored for a message that has none, unless its author
        was deleted meanwhile (the entry holds them)."""
        if not entries:
            return
        async with self._db.write() as session:
            await session.execute(
                update(messages)
                .where(
                    messages.c.tenant_id == bindparam("tenant"),
                    messages.c.id == bindparam("message_id"),
                    messages.c.entry.is_(None),
                    messages.c.user_id.is_not_distinct_from(bindparam("author")),
                )
                .values(entry=bindparam("entry")),
                [
                    {
                        "tenant": tenant,
                        "message_id": message.id,
                        "author": message.user_id or None,
                        "entry": entry,
                    }
                    for tenant, message, entry in entries
                ],
            )

    async def get(self, scope: Scope, message_id: str) -> StoredMessage:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(*_EVERY_COLUMN).where(
                        *visible(messages, scope), messages.c.id == message_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound.resource("message", message_id)
        return _stored_one(row._mapping)

    async def list(
        self,
        scope: Scope,
        session_id: str,
        where: MessageFilter,
        *,
        position: int,
        limit: int,
        max_bytes: int,
        newest_first: bool = False,
        count_total: bool = True,
        cached: bool = True,
    ) -> Page[StoredMessage]:
        """Messages matching `where` after keyset `position` (a seq; 0 to start): in seq order, or
        newest first; at most `limit` of them and `max_bytes` of their size (but at least one).
        With count_total, the page says how many match in all. With cached, the page may come
        from the history cache and go into it: then it is shared, and never to be changed."""
        asked = _PageAsked(where, position, limit, max_bytes, newest_first, count_total)
        if not cached:
            page, _, _ = await self._page(scope, session_id, asked)
            return page
        kept: _KeptPage = await self._cache.read(
            (scope.tenant, session_id),
            asked,
            functools.partial(self._kept, scope, session_id, asked),
        )
        return kept.page

    async def _kept(self, scope: Scope, session_id: str, asked: _PageAsked) -> Computed[_KeptPage]:
        page, rows, last_seq = await self._page(scope, session_id, asked, with_last_seq=True)
        return _KeptPage(page, _sizes(rows, page.items), last_seq).computed()

    async def _page(
        self, scope: Scope, session_id: str, asked: _PageAsked, *, with_last_seq: bool = False
    ) -> tuple[Page[StoredMessage], Sequence[Mapping[str, Any]], int | None]:
        """The page, the rows it shows, and (with_last_seq, or unfiltered with its total) the
        session's last seq."""
        shape = _Shape.of(
            asked.where, newest_first=asked.newest_first, after_position=asked.position > 0
        )
        filtered = shape.filtered
        # Unfiltered, the session's own counter is the total: no scan, and no second round trip.
        total_inline = asked.count_total and not filtered
        values = _page_values(
            scope, session_id, asked.where, asked.position, asked.limit, asked.max_bytes
        )
        with_last_seq = with_last_seq or total_inline
        rows = await self._db.fetch(_page_query(shape, total_inline, with_last_seq), values)
        total: int | None = None
        last_seq: int | None = None
        if rows:
            total = rows[0]["total"] if total_inline else None
            last_seq = rows[0]["last_seq"] if with_last_seq else None
        else:  # the session's counters tell a missing session from an empty page
            found = await self._db.fetch(_COUNTERS, values)
            if not found:
                raise NotFound.resource("session", session_id)
            counters = found[0]
            last_seq = counters["last_seq"] if with_last_seq else None
            if asked.count_total and not filtered:
                total = counters["message_count"]
            elif asked.count_total and asked.position == 0:
                total = 0  # from the start, no message matches
        if asked.count_total and total is None:  # filtered: its count is not in the page's
            total = (await self._db.fetch(_count_query(shape), values))[0]["count"]
        fitting = fit(rows, limit=asked.limit, max_bytes=asked.max_bytes)
        items = await self._stored(scope, session_id, rows[:fitting])
        return Page(items, has_more=len(rows) > fitting, total_size=total), rows[:fitting], last_seq

    async def context_window(
        self,
        scope: Scope,
        session_id: str,
        max_messages: int,
        *,
        max_bytes: int,
        min_event_time: datetime | None = None,
    ) -> ContextWindow:
        """The session, its contexts (oldest first, at most MAX_WINDOW_CONTEXTS) and its newest
        messages (with an event_time from min_event_time on, when given) in seq order, at most
        max_messages of them and max_bytes of their size (but at least one), all from one
        snapshot. The window is shared with other callers that asked the same: never change
        it."""
        asked = _WindowAsked(max_messages, max_bytes, min_event_time)
        kept: _KeptWindow = await self._cache.read(
            (scope.tenant, session_id),
            asked,
            functools.partial(self._context_window, scope, session_id, asked),
        )
        return kept.window

    async def _context_window(
        self, scope: Scope, session_id: str, asked: _WindowAsked
    ) -> Computed[_KeptWindow]:
        values = {
            "tenant": scope.tenant,
            "session_id": session_id,
            "limit": asked.max_messages + 1,
            "budget": asked.max_bytes,
            "min_event_time": asked.min_event_time,
        }
        async with self._db.snapshot() as read:
            session_rows = await read(_WINDOW_SESSION, values)
            if not session_rows:
                raise NotFound.resource("session", session_id)
            context_rows = await read(_WINDOW_CONTEXTS, values)
            history = _answering(
                _window_messages(asked.min_event_time is not None),
                session_rows[0],
                values,
                none_follow=session_rows[0]["message_count"] == 0,
            )
            message_rows = [] if history is None else await read(history, values)
        fitting = fit(message_rows, limit=asked.max_messages, max_bytes=asked.max_bytes)
        session = to_session(session_rows[0])
        kept = message_rows[:fitting][::-1]
        messages = await self._stored(scope, session_id, kept)
        window = ContextWindow(
            session=session,
            contexts=[to_context(row) for row in context_rows],
            messages=messages,
            has_earlier_messages=len(message_rows) > fitting,
        )
        other_bytes = memory_of_session(session) + memory_of_contexts(context_rows)
        return _KeptWindow(window, _sizes(kept, messages), other_bytes).computed(scope.tenant)

    async def history_step(
        self,
        scope: Scope,
        session_id: str,
        where: MessageFilter,
        *,
        position: int,
        after_deletion: int,
        limit: int,
        max_bytes: int,
    ) -> HistoryStep:
        """One step of a watch, from one snapshot: the session, the messages matching `where`
        after seq `position` (at most `limit` and `max_bytes` of them, but at least one), and
        the deletions numbered after `after_deletion`."""
        shape = _Shape.of(where, newest_first=False, after_position=position > 0)
        values = _page_values(scope, session_id, where, position, limit, max_bytes)
        values["after_deletion"] = after_deletion
        async with self._db.snapshot() as read:
            session_rows = await read(_WINDOW_SESSION, values)
            if not session_rows:
                return HistoryStep(
                    session=None,
                    messages=[],
                    more_messages=False,
                    deletions=[],
                    more_deletions=False,
                    last_deletion=after_deletion,
                )
            session_row = session_rows[0]
            history = _answering(
                _page_query(shape, False, False),
                session_row,
                values,
                none_follow=session_row["last_seq"] <= position,
            )
            message_rows = [] if history is None else await read(history, values)
            # Deletions are numbered by the session's counter: none followed unless it moved.
            deleted = session_row["deletions"] > after_deletion
            deletion_rows = await read(_STEP_DELETIONS, values) if deleted else []
        fitting = fit(message_rows, limit=limit, max_bytes=max_bytes)
        return HistoryStep(
            session=to_session(session_rows[0]),
            messages=await self._stored(scope, session_id, message_rows[:fitting]),
            more_messages=len(message_rows) > fitting,
            deletions=[
                MessageDeletion(
                    number=row["number"],
                    message_id=str(row["message_id"]),
                    seq=row["seq"],
                    delete_time=row["delete_time"],
                )
                for row in deletion_rows[:MAX_STEP_DELETIONS]
            ],
            more_deletions=len(deletion_rows) > MAX_STEP_DELETIONS,
            last_deletion=session_rows[0]["deletions"],
        )

    async def _stored(
        self, scope: Scope, session_id: str, rows: Sequence[Mapping[str, Any]]
    ) -> Sequence[StoredMessage]:
        """The messages of history rows (of one session, in seq order either way), those without
        an entry read again with every column. One deleted meanwhile is left out."""
        entries = [row["entry"] for row in rows]
        seqs = [row["seq"] for row in rows]
        if None not in entries:
            return EncodedMessages(seqs, entries)
        found = await self._db.fetch(
            _PAGE_RANGE,
            {
                "tenant": scope.tenant,
                "session_id": session_id,
                "first_seq": min(seqs),
                "last_seq": max(seqs),
            },
        )
        reread = {row["seq"]: row for row in found}
        return [_stored_one(reread[row["seq"]]) for row in rows if row["seq"] in reread]

    async def delete(self, scope: Scope, message_id: str, *, allow_missing: bool) -> None:
        """Delete the message (its ratings cascade); its seq is never handed out again."""
        try:
            async with self._db.write() as session:
                session_id = await session.scalar(
                    select(messages.c.session_id).where(
                        *visible(messages, scope), messages.c.id == message_id
                    )
                )
                if session_id is None:
                    raise NotFound.resource("message", message_id)
                # Session row first, as append does, so the two never wait on each other in a cycle.
                deletions = (await lock_session(session, scope, session_id))["deletions"]
                seq = await session.scalar(
                    delete(messages)
                    .where(messages.c.tenant_id == scope.tenant, messages.c.id == message_id)
                    .returning(messages.c.seq)
                )
                if seq is None:  # deleted concurrently
                    raise NotFound.resource("message", message_id)
                await self._record_deletions(
                    session, scope, session_id, [(message_id, seq)], deletions
                )
        except NotFound:
            if not allow_missing:
                raise

    async def pop(self, scope: Scope, session_id: str) -> Message | None:
        """Remove the session's newest message and return it (None if it has none). The
        session row is locked first, as appends lock it, so pops (and appends) take turns."""
        async with self._db.write() as session:
            deletions = (await lock_session(session, scope, session_id))["deletions"]
            row = (
                await session.execute(
                    select(messages)
                    .where(*_of_session(scope, session_id))
                    .order_by(messages.c.seq.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            newest = to_message(row._mapping)
            await session.execute(
                delete(messages).where(
                    messages.c.tenant_id == scope.tenant, messages.c.id == newest.id
                )
            )
            await self._record_deletions(
                session, scope, session_id, [(newest.id, newest.seq)], deletions
            )
        return newest

    async def clear(self, scope: Scope, session_id: str) -> int:
        """Delete every message of the session (their ratings cascade); the session, its
        contexts and its last seq stay. Returns how many were deleted."""
        async with self._db.write() as session:
            deletions = (await lock_session(session, scope, session_id))["deletions"]
            deleted = await session.execute(
                delete(messages)
                .where(*_of_session(scope, session_id))
                .returning(messages.c.id, messages.c.seq)
            )
            gone = sorted(((str(id_), seq) for id_, seq in deleted), key=lambda pair: pair[1])
            await self._record_deletions(session, scope, session_id, gone, deletions)
        return len(gone)

    @staticmethod
    async def _record_deletions(
        session: AsyncSession,
        scope: Scope,
        session_id: str,
        gone: Sequence[tuple[str, int]],
        deletions: int,
    ) -> None:
        """Count the deleted messages (id, seq) out of their session and number them after
        `deletions`, so watchers that were away learn of them (WatchSession)."""
        if not gone:
            return
        now = utcnow()
        await session.execute(
            update(sessions)
            .where(sessions.c.tenant_id == scope.tenant, sessions.c.id == session_id)
            .values(
                message_count=sessions.c.message_count - len(gone),
                deletions=deletions + len(gone),
                update_time=now,
            )
        )
        await session.execute(
            insert(message_deletions),
            [
                {
                    "tenant_id": scope.tenant,
                    "session_id": session_id,
                    "number": deletions + number,
                    "message_id": message_id,
                    "seq": seq,
                    "delete_time": now,
                }
                for number, (message_id, seq) in enumerate(gone, start=1)
            ],
        )

    async def _conflict(self, scope: Scope, rows: Sequence[dict[str, Any]]) -> Exception:
        ids = [row["id"] for row in rows]
        author_ids = {row["user_id"] for row in rows if row["user_id"]}
        async with self._db.read() as session:
            taken = await _first_taken(session, scope, ids)
            if taken is not None:
                return AlreadyExists.resource("message", taken)
            if author_ids:
                found = set(
                    await session.scalars(
                        select(users.c.id).where(
                            users.c.tenant_id == scope.tenant, users.c.id.in_(author_ids)
                        )
                    )
                )
                missing = sorted(author_ids - found)
                if missing:
                    return NotFound.resource("user", missing[0])
        return Aborted.concurrent_conflict()


async def _first_taken(session: AsyncSession, scope: Scope, ids: Sequence[str]) -> str | None:
    """One of `ids` that a stored message of the tenant has, if any."""
    taken = await session.scalar(
        select(messages.c.id)
        .where(messages.c.tenant_id == scope.tenant, messages.c.id.in_(ids))
        .limit(1)
    )
    return None if taken is None else str(taken)


async def _closed_or_missing(
    session: AsyncSession, scope: Scope, session_id: str
) -> Exception | None:
    """Why an append found no open session to write to; None if there is one now."""
    row = (
        await session.execute(
            select(sessions.c.end_time).where(
                sessions.c.tenant_id == scope.tenant, sessions.c.id == session_id
            )
        )
    ).first()
    if row is None:
        return NotFound.resource("session", session_id)
    return None if row.end_time is None else session_closed(session_id, "messages")
