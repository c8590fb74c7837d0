from __future__ import annotations

from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from parley_server.domain import NewUser, Page, Scope, TimeCursor, User, UserPatch, repeats
from parley_server.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from parley_server.store.database import Database, announce
from parley_server.store.rows import to_user
from parley_server.store.tables import (
    after_cursor,
    messages,
    new_id,
    sessions,
    users,
    utcnow,
    visible,
)


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, scope: Scope, new: NewUser) -> User:
        now = utcnow()
        values: dict[str, Any] = {
            "tenant_id": scope.tenant,
            "id": new.id or new_id(),
            "display_name": new.display_name,
            "email": new.email or None,
            "role": new.role,
            "picture_url": new.profile.picture_url,
            "status_message": new.profile.status_message,
            "bio": new.profile.bio,
            "location": new.profile.location,
            "website": new.profile.website,
            "social_links": new.profile.social_links,
            "preferences": new.preferences,
            "create_time": now,
            "update_time": now,
        }
        try:
            async with self._db.write() as session:
                row = (await session.execute(insert(users).values(values).returning(users))).one()
        except IntegrityError as error:
            if (
                new.id is not None
                and (stored := await self._find(scope, new.id))
                and repeats(new, stored)
            ):
                return stored
            raise await self._conflict(scope, values["id"], values["email"]) from error
        return to_user(row._mapping)

    async def get(self, scope: Scope, user_id: str) -> User:
        user = await self._find(scope, user_id)
        if user is None:
            raise NotFound.resource("user", user_id)
        return user

    async def _find(self, scope: Scope, user_id: str) -> User | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(users).where(*visible(users, scope), users.c.id == user_id)
                )
            ).first()
        return None if row is None else to_user(row._mapping)

    async def list(self, scope: Scope, *, after: TimeCursor | None, limit: int) -> Page[User]:
        query = (
            select(users)
            .where(*visible(users, scope))
            .order_by(users.c.create_time, users.c.id)
            .limit(limit + 1)
        )
        condition = after_cursor(users.c.create_time, users.c.id, after)
        if condition is not None:
            query = query.where(condition)
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        return Page([to_user(r._mapping) for r in rows[:limit]], has_more=len(rows) > limit)

    async def update(self, scope: Scope, user_id: str, patch: UserPatch) -> User:
        values: dict[str, Any] = {
            name: value
            for name, value in (
                ("display_name", patch.display_name),
                ("role", patch.role),
                ("preferences", patch.preferences),
                ("picture_url", patch.picture_url),
                ("status_message", patch.status_message),
                ("bio", patch.bio),
                ("location", patch.location),
                ("website", patch.website),
                ("social_links", patch.social_links),
            )
            if value is not None
        }
        if patch.email is not None:
            values["email"] = patch.email or None
        values["update_time"] = utcnow()
        statement = (
            update(users)
            .where(*visible(users, scope), users.c.id == user_id)
            .values(values)
            .returning(users)
        )
        try:
            async with self._db.write() as session:
                row = (await session.execute(statement)).first()
        except IntegrityError as error:
            raise await self._conflict(scope, None, values.get("email")) from error
        if row is None:
            raise NotFound.resource("user", user_id)
        return to_user(row._mapping)

    async def delete(self, scope: Scope, user_id: str, *, force: bool, allow_missing: bool) -> None:
        tenant = scope.tenant
        async with self._db.write() as session:
            # Lock the user first: a concurrent CreateSession or append for them waits, so the
            # check holds.
            locked = await session.scalar(
                select(users.c.id)
                .where(*visible(users, scope), users.c.id == user_id)
                .with_for_update()
            )
            if locked is None:
                if allow_missing:
                    return
                raise NotFound.resource("user", user_id)
            owned = (sessions.c.tenant_id == tenant) & (sessions.c.user_id == user_id)
            if not force and await session.scalar(select(exists().where(owned))):
                raise FailedPrecondition(
                    f"user {user_id!r} still owns sessions; delete them first or pass"
                    " force=true to delete them with the user",
                    reason="USER_HAS_SESSIONS",
                    metadata={"userId": user_id},
                )
            # Messages they wrote in other users' sessions stay, without an author: a change of
            # those sessions' history that no session row shows, so it is announced. Their
            # entries held the author: they are read from their columns from now on.
            unauthored = await session.scalars(
                update(messages)
                .where(messages.c.tenant_id == tenant, messages.c.user_id == user_id)
                .values(user_id=None, entry=None)
                .returning(messages.c.session_id)
            )
            await announce(session, [(tenant, str(id_)) for id_ in set(unauthored)])
            # The database cascades to their sessions (with messages, contexts and ratings) and
            # to their ratings.
            await session.execute(
                delete(users).where(users.c.tenant_id == tenant, users.c.id == user_id)
            )

    async def _conflict(self, scope: Scope, user_id: str | None, email: str | None) -> Exception:
        """Say which unique value (within the tenant) a failed insert or update collided with."""
        tenant = users.c.tenant_id == scope.tenant
        async with self._db.read() as session:
            if user_id is not None and await session.scalar(
                select(exists().where(tenant, users.c.id == user_id))
            ):
                return AlreadyExists.resource("user", user_id)
            if email is not None:
                owner = await session.scalar(
                    select(users.c.id).where(tenant, users.c.email == email)
                )
                if owner is not None:
                    # A user principal sees no other user, so it is not told whose it is.
                    whose = {} if scope.owner else {"userId": str(owner)}
                    return AlreadyExists(
                        f"email {email!r} already belongs to "
                        + ("another user" if scope.owner else f"user {str(owner)!r}"),
                        reason="EMAIL_ALREADY_EXISTS",
                        metadata={"email": email, **whose},
                    )
        return Aborted.concurrent_conflict()
