from __future__ import annotations

from typing import Any

from sqlalchemy import Select, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from parley_server.domain import (
    NewSession,
    Page,
    Scope,
    Session,
    SessionPatch,
    TimeCursor,
    repeats,
)
from parley_server.errors import Aborted, AlreadyExists, NotFound
from parley_server.store.database import Database
from parley_server.store.rows import to_session
from parley_server.store.tables import (
    after_cursor,
    new_id,
    require_visible,
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
    }


def _select_one(scope: Scope, session_id: str) -> Select[Any]:
    return select(sessions).where(*visible(sessions, scope), sessions.c.id == session_id)


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, scope: Scope, new: NewSession) -> Session:
        values = _new_session_values(scope, new, new.user_id or None)
        try:
            async with self._db.write() as session:
                row = (
                    await session.execute(insert(sessions).values(values).returning(sessions))
                ).one()
        except IntegrityError as error:
            if (
                new.id is not None
                and (stored := await self._find(scope, new.id))
                and repeats(new, stored)
            ):
                return stored
            raise await self._conflict(scope, values["id"], new.user_id) from error
        return to_session(row._mapping)

    async def get(self, scope: Scope, session_id: str) -> Session:
        found = await self._find(scope, session_id)
        if found is None:
            raise NotFound.resource("session", session_id)
        return found

    async def _find(self, scope: Scope, session_id: str) -> Session | None:
        async with self._db.read() as session:
            row = (await session.execute(_select_one(scope, session_id))).first()
        return None if row is None else to_session(row._mapping)

    async def list(
        self, scope: Scope, *, user_id: str, after: TimeCursor | None, limit: int
    ) -> Page[Session]:
        """Newest first; only user_id's sessions when it is not empty."""
        query = (
            select(sessions)
            .where(*visible(sessions, scope))
            .order_by(sessions.c.create_time.desc(), sessions.c.id.desc())
            .limit(limit + 1)
        )
        count = select(func.count()).select_from(sessions).where(*visible(sessions, scope))
        if user_id:
            query = query.where(sessions.c.user_id == user_id)
            count = count.where(sessions.c.user_id == user_id)
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
            .returning(sessions)
        )
        async with self._db.write() as session:
            row = (await session.execute(statement)).first()
        if row is None:
            raise NotFound.resource("session", session_id)
        return to_session(row._mapping)

    async def close(self, scope: Scope, session_id: str) -> Session:
        """Set end_time; a session that is already closed is returned unchanged."""
        now = utcnow()
        async with self._db.write() as session:
            closed = (
                await session.execute(
                    update(sessions)
                    .where(
                        *visible(sessions, scope),
                        sessions.c.id == session_id,
                        sessions.c.end_time.is_(None),
                    )
                    .values(end_time=now, update_time=now)
                    .returning(sessions)
                )
            ).first()
            if closed is None:
                closed = (await session.execute(_select_one(scope, session_id))).first()
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
        async with self._db.write() as session:
            # Concurrent callers for one user queue on this row lock (SQLite: on the write lock), so
            # exactly one of them creates and the others find its session.
            locked = await session.scalar(
                select(users.c.id)
                .where(*visible(users, scope), users.c.id == user_id)
                .with_for_update(key_share=True)
            )
            if locked is None:
                raise NotFound.resource("user", user_id)
            row = (
                await session.execute(
                    select(sessions)
                    .where(
                        sessions.c.tenant_id == scope.tenant,
                        sessions.c.user_id == user_id,
                        sessions.c.end_time.is_(None),
                    )
                    .order_by(sessions.c.update_time.desc(), sessions.c.id.desc())
                    .limit(1)
                )
            ).first()
            if row is not None:
                return to_session(row._mapping), False
            values = _new_session_values(scope, template, user_id)
            row = (await session.execute(insert(sessions).values(values).returning(sessions))).one()
        return to_session(row._mapping), True

    async def latest(self, scope: Scope, user_id: str) -> Session:
        """The user's session with the latest update_time, open or closed."""
        async with self._db.read() as session:
            await require_visible(session, scope, "user", users, user_id)
            row = (
                await session.execute(
                    select(sessions)
                    .where(sessions.c.tenant_id == scope.tenant, sessions.c.user_id == user_id)
                    .order_by(sessions.c.update_time.desc(), sessions.c.id.desc())
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
