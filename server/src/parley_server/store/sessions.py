from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import (
    NO_STATE_DELTA,
    NewSession,
    Page,
    Scope,
    Session,
    SessionPatch,
    StateDelta,
    TimeCursor,
    UserState,
    repeats,
)
from parley_server.errors import Aborted, AlreadyExists, NotFound
from parley_server.store.appenders import Appended
from parley_server.store.changes import states_shown
from parley_server.store.database import Database
from parley_server.store.history_cache import Computed, HistoryCache
from parley_server.store.rows import memory_of_session, to_session
from parley_server.store.states import apply_state_delta, read_user_state
from parley_server.store.tables import (
    after_cursor,
    lock_session,
    new_id,
    require_visible,
    select_sessions,
    sessions,
    users,
    utcnow,
    visible,
)


def _new_session_values(scope: Scope, new: NewSession, user_id: str | None) -> dict[str, Any]:
    now = utcnow()
    return {
        "tenant_id": scope.tenant,
        "id": new.id or new_id(),
        "user_id": user_id,
        "title": new.title,
        "metadata": new.metadata,
        "ip_address": new.client_info.ip_address,
        "user_agent": new.client_info.user_agent,
        "device": new.client_info.device,
        "create_time": now,
        "update_time": now,
        "message_count": 0,
        "last_seq": 0,
        "app": new.app,
        "state": new.state,
    }


# The one session within a scope (as `visible` keeps it), in statements built once with bind
# parameters, so the driver connection's compiled-statement cache holds two entries, not one per
# session.
_SESSION = select_sessions().where(
    sessions.c.tenant_id == bindparam("tenant"), sessions.c.id == bindparam("session_id")
)
_OWNED_SESSION = _SESSION.where(sessions.c.user_id == bindparam("owner"))

# The most recently active first, as the index on update_minute finds them: the newest minute's
# sessions, then by the exact time among those.
_MOST_RECENT_FIRST = (
    sessions.c.update_minute.desc(),
    sessions.c.update_time.desc(),
    sessions.c.id.desc(),
)


def _select_one(scope: Scope, session_id: str) -> tuple[Select[Any], dict[str, str]]:
    """The statement that finds the session within scope, and its parameters."""
    return (
        _OWNED_SESSION if scope.owner else _SESSION,
        {"tenant": scope.tenant, "session_id": session_id, "owner": scope.owner},
    )


async def _reread(session: AsyncSession, scope: Scope, session_id: str) -> Session:
    """The session as it stands in this transaction, with its shared state."""
    return to_session((await session.execute(*_select_one(scope, session_id))).one()._mapping)


@dataclass(frozen=True, slots=True)
class _SessionAsked:
    """The question a session read answers (its cache key): the session as `owner` sees it."""

    owner: str | None

    def brought_forward(self, answer: Any, change: Any) -> Computed[Session] | None:
        """history_cache.BroughtForward: the session once `change` (Appended) is appended."""
        appended: Appended = change
        after = appended.session_after(answer)
        return None if after is None else _computed(appended.session[0], after)


def _computed(tenant: str, session: Session) -> Computed[Session]:
    return Computed(
        session,
        memory_of_session(session),
        shows=states_shown(tenant, session.app, session.user_id),
    )


class SessionStore:
    def __init__(self, db: Database, *, cache: HistoryCache) -> None:
        self._db = db
        self._cache = cache

    async def create(
        self, scope: Scope, new: NewSession, delta: StateDelta = NO_STATE_DELTA
    ) -> Session:
        """With delta applied in the same transaction (its session part on top of new.state)."""
        values = _new_session_values(scope, new, new.user_id or None)
        try:
            async with self._db.write() as session:
                row = (
                    await session.execute(insert(sessions).values(values).returning(sessions))
                ).one()
                if delta:
                    await apply_state_delta(
                        session, scope.tenant, row._mapping, delta, values["create_time"]
                    )
                created = await _reread(session, scope, values["id"])
        except IntegrityError as error:
            if (
                new.id is not None
                and (stored := await self._find(scope, new.id))
                and repeats(new, stored)
            ):
                return stored
            raise await self._conflict(scope, values["id"], new.user_id) from error
        return created

    async def get(self, scope: Scope, session_id: str) -> Session:
        """The session, from the history cache when it is unchanged (before every read by a user
        principal, this is its ownership check): shared, never to be changed."""
        return await self._cache.read(
            (scope.tenant, session_id),
            _SessionAsked(scope.owner),
            functools.partial(self._read, scope, session_id),
        )

    async def _read(self, scope: Scope, session_id: str) -> Computed[Session]:
        found = await self._find(scope, session_id)
        if found is None:
            raise NotFound.resource("session", session_id)
        return _computed(scope.tenant, found)

    async def _find(self, scope: Scope, session_id: str) -> Session | None:
        # One statement on the driver connection, not a transaction through SQLAlchemy: this is
        # on the path of every read by a user principal.
        rows = await self._db.fetch(*_select_one(scope, session_id))
        return to_session(rows[0]) if rows else None

    async def list(
        self,
        scope: Scope,
        *,
        user_id: str,
        app: str | None = None,
        after: TimeCursor | None,
        limit: int,
    ) -> Page[Session]:
        """Newest first; only user_id's sessions when it is not empty, only app's when it is not
        None."""
        query = (
            select_sessions()
            .where(*visible(sessions, scope))
            .order_by(sessions.c.create_time.desc(), sessions.c.id.desc())
            .limit(limit + 1)
        )
        count = select(func.count()).select_from(sessions).where(*visible(sessions, scope))
        if user_id:
            query = query.where(sessions.c.user_id == user_id)
            count = count.where(sessions.c.user_id == user_id)
        if app is not None:
            query = query.where(sessions.c.app == app)
            count = count.where(sessions.c.app == app)
        condition = after_cursor(sessions.c.create_time, sessions.c.id, after, descending=True)
        if condition is not None:
            query = query.where(condition)
        async with self._db.read() as session:
            if user_id:
                await require_visible(session, scope, "user", users, user_id)
            rows = (await session.execute(query)).all()
            total = await session.scalar(count) or 0
        return Page(
            [to_session(r._mapping) for r in rows[:limit]],
            has_more=len(rows) > limit,
            total_size=total,
        )

    async def update(self, scope: Scope, session_id: str, patch: SessionPatch) -> Session:
        values: dict[str, Any] = {
            name: value
            for name, value in (
                ("title", patch.title),
                ("metadata", patch.metadata),
                ("ip_address", patch.ip_address),
                ("user_agent", patch.user_agent),
                ("device", patch.device),
            )
            if value is not None
        }
        values["update_time"] = utcnow()
        statement = (
            update(sessions)
            .where(*visible(sessions, scope), sessions.c.id == session_id)
            .values(values)
            .returning(sessions.c.id)
        )
        async with self._db.write() as session:
            if await session.scalar(statement) is None:
                raise NotFound.resource("session", session_id)
            return await _reread(session, scope, session_id)

    async def update_state(
        self,
        scope: Scope,
        session_id: str,
        delta: StateDelta,
        *,
        expected_last_seq: int | None = None,
    ) -> Session:
        """Apply delta atomically; with expected_last_seq, only if the session is at it."""
        async with self._db.write() as session:
            target = await lock_session(session, scope, session_id)
            if expected_last_seq is not None and target["last_seq"] != expected_last_seq:
                raise Aborted.last_seq_mismatch(expected_last_seq, target["last_seq"])
            now = utcnow()
            await apply_state_delta(session, scope.tenant, target, delta, now)
            await session.execute(
                update(sessions)
                .where(sessions.c.tenant_id == scope.tenant, sessions.c.id == session_id)
                .values(update_time=now)
            )
            return await _reread(session, scope, session_id)

    async def user_state(self, scope: Scope, app: str, user_id: str) -> UserState:
        async with self._db.read() as session:
            await require_visible(session, scope, "user", users, user_id)
            return await read_user_state(session, scope.tenant, app, user_id)

    async def close(self, scope: Scope, session_id: str) -> Session:
        """Set end_time; a session that is already closed is returned unchanged."""
        now = utcnow()
        async with self._db.write() as session:
            await session.execute(
                update(sessions)
                .where(
                    *visible(sessions, scope),
                    sessions.c.id == session_id,
                    sessions.c.end_time.is_(None),
                )
                .values(end_time=now, update_time=now)
            )
            closed = (await session.execute(*_select_one(scope, session_id))).first()
        if closed is None:
            raise NotFound.resource("session", session_id)
        return to_session(closed._mapping)

    async def delete(self, scope: Scope, session_id: str, *, allow_missing: bool) -> None:
        """Delete the session; the database cascades to its messages, contexts and ratings."""
        async with self._db.write() as session:
            deleted = await session.scalar(
                delete(sessions)
                .where(*visible(sessions, scope), sessions.c.id == session_id)
                .returning(sessions.c.id)
            )
        if deleted is None and not allow_missing:
            raise NotFound.resource("session", session_id)

    async def get_or_create_open(
        self, scope: Scope, user_id: str, template: NewSession
    ) -> tuple[Session, bool]:
        """The user's most recently active open session, or a new one; True when created."""
        values = _new_session_values(scope, template, user_id)
        try:
            async with self._db.write() as session:
                # Concurrent callers for one user queue on this row lock (SQLite: on the write
                # lock), so exactly one of them creates and the others find its session.
                locked = await session.scalar(
                    select(users.c.id)
                    .where(*visible(users, scope), users.c.id == user_id)
                    .with_for_update(key_share=True)
                )
                if locked is None:
                    raise NotFound.resource("user", user_id)
                row = (
                    await session.execute(
                        select_sessions()
                        .where(
                            sessions.c.tenant_id == scope.tenant,
                            sessions.c.user_id == user_id,
                            sessions.c.end_time.is_(None),
                        )
                        .order_by(*_MOST_RECENT_FIRST)
                        .limit(1)
                    )
                ).first()
                if row is not None:
                    return to_session(row._mapping), False
                await session.execute(insert(sessions).values(values))
                return await _reread(session, scope, values["id"]), True
        except IntegrityError as error:  # the template's id is another session's
            raise await self._conflict(scope, values["id"], user_id) from error

    async def latest(self, scope: Scope, user_id: str) -> Session:
        """The user's session with the latest update_time, open or closed."""
        async with self._db.read() as session:
            await require_visible(session, scope, "user", users, user_id)
            row = (
                await session.execute(
                    select_sessions()
                    .where(sessions.c.tenant_id == scope.tenant, sessions.c.user_id == user_id)
                    .order_by(*_MOST_RECENT_FIRST)
                    .limit(1)
                )
            ).first()
        if row is None:
            raise NotFound(
                f"user {user_id!r} has no sessions",
                reason="SESSION_NOT_FOUND",
                metadata={"userId": user_id},
            )
        return to_session(row._mapping)

    async def _conflict(self, scope: Scope, session_id: str, user_id: str) -> Exception:
        tenant = scope.tenant
        async with self._db.read() as session:
            if await session.scalar(
                select(exists().where(sessions.c.tenant_id == tenant, sessions.c.id == session_id))
            ):
                return AlreadyExists.resource("session", session_id)
            if user_id and not await session.scalar(
                select(exists().where(users.c.tenant_id == tenant, users.c.id == user_id))
            ):
                return NotFound.resource("user", user_id)
        return Aborted.concurrent_conflict()
