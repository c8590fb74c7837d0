from __future__ import annotations

from typing import Any

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.exc import IntegrityError

from parley_server.domain import Context, NewContext, Page, Scope, TimeCursor, repeats
from parley_server.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from parley_server.store.database import Database, announce
from parley_server.store.rows import to_context
from parley_server.store.tables import (
    after_cursor,
    contexts,
    new_id,
    require_visible,
    sessions,
    utcnow,
    visible,
)


def session_closed(session_id: str, what: str) -> FailedPrecondition:
    """The closed-session rule's one error: a closed session takes no more messages or
    contexts."""
    return FailedPrecondition(
        f"session {session_id!r} is closed; it accepts no more {what}",
        reason="SESSION_CLOSED",
        metadata={"sessionId": session_id},
    )


class ContextStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, scope: Scope, new: NewContext) -> Context:
        values: dict[str, Any] = {
            "tenant_id": scope.tenant,
            "id": new.id or new_id(),
            "session_id": new.session_id,
            "type": new.type,
            "content": new.content,
            "metadata": new.metadata,
            "create_time": utcnow(),
        }
        try:
            async with self._db.write() as session:
                owner = (
                    await session.execute(
                        select(sessions.c.end_time).where(
                            *visible(sessions, scope), sessions.c.id == new.session_id
                        )
                    )
                ).first()
                if owner is None:
                    raise NotFound.resource("session", new.session_id)
                if owner.end_time is not None:
                    raise session_closed(new.session_id, "contexts")
                statement = insert(contexts).values(values).returning(contexts)
                row = (await session.execute(statement)).one()
                await announce(session, [(scope.tenant, new.session_id)])
        except (IntegrityError, FailedPrecondition) as error:
            # A retry whose first attempt landed, perhaps before the session was closed.
            stored = await self._find(scope, new.id) if new.id is not None else None
            if stored is not None and repeats(new, stored):
                return stored
            if isinstance(error, FailedPrecondition) and stored is None:
                raise
            raise await self._conflict(scope, values["id"]) from error
        return to_context(row._mapping)

    async def get(self, scope: Scope, context_id: str) -> Context:
        found = await self._find(scope, context_id)
        if found is None:
            raise NotFound.resource("context", context_id)
        return found

    async def _find(self, scope: Scope, context_id: str) -> Context | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(contexts).where(*visible(contexts, scope), contexts.c.id == context_id)
                )
            ).first()
        return None if row is None else to_context(row._mapping)

    async def list(
        self, scope: Scope, session_id: str, *, type: str, after: TimeCursor | None, limit: int
    ) -> Page[Context]:
        """Oldest first; only contexts of `type` when it is not empty."""
        query = (
            select(contexts)
            .where(contexts.c.tenant_id == scope.tenant, contexts.c.session_id == session_id)
            .order_by(contexts.c.create_time, contexts.c.id)
            .limit(limit + 1)
        )
        if type:
            query = query.where(contexts.c.type == type)
        condition = after_cursor(contexts.c.create_time, contexts.c.id, after)
        if condition is not None:
            query = query.where(condition)
        async with self._db.read() as session:
            await require_visible(session, scope, "session", sessions, session_id)
            rows = (await session.execute(query)).all()
        return Page([to_context(r._mapping) for r in rows[:limit]], has_more=len(rows) > limit)

    async def delete(self, scope: Scope, context_id: str, *, allow_missing: bool) -> None:
        async with self._db.write() as session:
            deleted = await session.scalar(
                delete(contexts)
                .where(*visible(contexts, scope), contexts.c.id == context_id)
                .returning(contexts.c.session_id)
            )
            if deleted is not None:
                await announce(session, [(scope.tenant, str(deleted))])
        if deleted is None and not allow_missing:
            raise NotFound.resource("context", context_id)

    async def _conflict(self, scope: Scope, context_id: str) -> Exception:
        async with self._db.read() as session:
            if await session.scalar(
                select(
                    exists().where(
                        contexts.c.tenant_id == scope.tenant, contexts.c.id == context_id
                    )
                )
            ):
                return AlreadyExists.resource("context", context_id)
        # The session was deleted between the check and the insert.
        return Aborted.concurrent_conflict()
