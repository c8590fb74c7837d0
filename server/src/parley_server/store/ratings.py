from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from parley_server.domain import Page, Rating, RatingFilter, RatingSummary, Scope, TimeCursor
from parley_server.errors import Aborted, NotFound
from parley_server.store.database import Database
from parley_server.store.rows import to_rating
from parley_server.store.tables import (
    after_cursor,
    messages,
    new_id,
    ratings,
    require_visible,
    sessions,
    users,
    utcnow,
    visible,
)


class RatingStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Both backends spell an upsert INSERT ... ON CONFLICT DO UPDATE.
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    async def rate(
        self, scope: Scope, message_id: str, user_id: str, value: int, comment: str
    ) -> Rating:
        """Record user_id's rating of message_id, replacing their earlier one (keeping its id)."""
        now = utcnow()
        try:
            async with self._db.write() as session:
                session_id = await session.scalar(
                    select(messages.c.session_id).where(
                        *visible(messages, scope), messages.c.id == message_id
                    )
                )
                if session_id is None:
                    raise NotFound.resource("message", message_id)
                await require_visible(session, scope, "user", users, user_id)
                upsert = self._insert(ratings).values(
                    tenant_id=scope.tenant,
                    id=new_id(),
                    message_id=message_id,
                    user_id=user_id,
                    session_id=session_id,
                    value=value,
                    comment=comment,
                    create_time=now,
                    update_time=now,
                )
                upsert = upsert.on_conflict_do_update(
                    index_elements=[ratings.c.tenant_id, ratings.c.message_id, ratings.c.user_id],
                    set_={"value": value, "comment": comment, "update_time": now},
                )
                row = (await session.execute(upsert.returning(ratings))).one()
        except IntegrityError as error:
            # The message or user was deleted between the checks and the upsert.
            raise Aborted.concurrent_conflict() from error
        return to_rating(row._mapping)

    async def list(
        self, scope: Scope, where: RatingFilter, *, after: TimeCursor | None, limit: int
    ) -> Page[Rating]:
        """Oldest first, matching every non-empty field of `where`."""
        query = (
            select(ratings)
            .where(*visible(ratings, scope))
            .order_by(ratings.c.create_time, ratings.c.id)
            .limit(limit + 1)
        )
        if where.message_id:
            query = query.where(ratings.c.message_id == where.message_id)
        if where.session_id:
            query = query.where(ratings.c.session_id == where.session_id)
        if where.user_id:
            query = query.where(ratings.c.user_id == where.user_id)
        condition = after_cursor(ratings.c.create_time, ratings.c.id, after)
        if condition is not None:
            query = query.where(condition)
        async with self._db.read() as session:
            if where.message_id:
                await require_visible(session, scope, "message", messages, where.message_id)
            if where.session_id:
                await require_visible(session, scope, "session", sessions, where.session_id)
            if where.user_id:
                await require_visible(session, scope, "user", users, where.user_id)
            rows = (await session.execute(query)).all()
        return Page([to_rating(r._mapping) for r in rows[:limit]], has_more=len(rows) > limit)

    async def delete(self, scope: Scope, rating_id: str, *, allow_missing: bool) -> None:
        async with self._db.write() as session:
            deleted = await session.scalar(
                delete(ratings)
                .where(*visible(ratings, scope), ratings.c.id == rating_id)
                .returning(ratings.c.id)
            )
        if deleted is None and not allow_missing:
            raise NotFound.resource("rating", rating_id)

    async def summarize(
        self, scope: Scope, *, message_id: str = "", session_id: str = ""
    ) -> RatingSummary:
        """Count and mean of one message's ratings, or of all ratings in a session (everyone's,
        for a user who may see the message or session)."""
        query = select(func.count(), func.avg(ratings.c.value)).where(
            ratings.c.tenant_id == scope.tenant
        )
        async with self._db.read() as session:
            if message_id:
                await require_visible(session, scope, "message", messages, message_id)
                query = query.where(ratings.c.message_id == message_id)
            else:
                await require_visible(session, scope, "session", sessions, session_id)
                query = query.where(ratings.c.session_id == session_id)
            count, mean = (await session.execute(query)).one()
        return RatingSummary(count=count, mean=float(mean or 0.0))
