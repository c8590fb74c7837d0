"""API keys: made, listed, revoked, and looked up by the hash of the key a call presents."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import func, insert, select, update

from parley_server.domain import Page, TimeCursor
from parley_server.errors import NotFound
from parley_server.identity import ApiKey, Role
from parley_server.store.database import Database
from parley_server.store.rows import to_api_key
from parley_server.store.tables import after_cursor, api_keys, new_id, tenants, users, utcnow

KEY_PREFIX = "pk_"
# last_used_time is written at most this often per key, so authentication costs no write per call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, tenant: str, role: Role, user_id: str = "", display_name: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown now and never again (only its hash is
        kept). The tenant is created with its first key; a user key's user must exist in it."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        async with self._db.write() as session:
            if not await session.scalar(select(tenants.c.id).where(tenants.c.id == tenant)):
                await session.execute(insert(tenants).values(id=tenant, create_time=now))
            if user_id and not await session.scalar(
                select(users.c.id).where(users.c.tenant_id == tenant, users.c.id == user_id)
            ):
                raise NotFound.resource("user", user_id)
            row = (
                await session.execute(
                    insert(api_keys)
                    .values(
                        id=new_id(),
                        tenant_id=tenant,
                        role=role.value,
                        user_id=user_id or None,
                        display_name=display_name,
                        key_hash=key_hash(secret),
                        create_time=now,
                    )
                    .returning(api_keys)
                )
            ).one()
        return to_api_key(row._mapping), secret

    async def get(self, key_id: str, *, tenant: str) -> ApiKey:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant)
                )
            ).first()
        if row is None:
            raise NotFound.resource("api_key", key_id)
        return to_api_key(row._mapping)

    async def list(
        self, *, tenant: str = "", after: TimeCursor | None = None, limit: int | None = None
    ) -> Page[ApiKey]:
        """Oldest first: `tenant`'s keys (every tenant's if empty), `limit` of them if given."""
        query = select(api_keys).order_by(api_keys.c.create_time, api_keys.c.id)
        if tenant:
            query = query.where(api_keys.c.tenant_id == tenant)
        condition = after_cursor(api_keys.c.create_time, api_keys.c.id, after)
        if condition is not None:
            query = query.where(condition)
        if limit is not None:
            query = query.limit(limit + 1)
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        keys = [to_api_key(row._mapping) for row in rows[:limit]]
        return Page(keys, has_more=limit is not None and len(rows) > limit)

    async def revoke(self, key_id: str, *, tenant: str = "") -> ApiKey:
        """Revoke a key (revoking it again changes nothing); only within `tenant` if given."""
        condition = api_keys.c.id == key_id
        if tenant:
            condition &= api_keys.c.tenant_id == tenant
        async with self._db.write() as session:
            await session.execute(
                update(api_keys)
                .where(condition, api_keys.c.revoke_time.is_(None))
                .values(revoke_time=utcnow())
            )
            row = (await session.execute(select(api_keys).where(condition))).first()
        if row is None:
            raise NotFound.resource("api_key", key_id)
        return to_api_key(row._mapping)

    async def find(self, secret: str) -> ApiKey | None:
        """The live (unrevoked) key with this secret, if any."""
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(api_keys).where(
                        api_keys.c.key_hash == key_hash(secret), api_keys.c.revoke_time.is_(None)
                    )
                )
            ).first()
        return None if row is None else to_api_key(row._mapping)

    async def touch(self, key: ApiKey) -> None:
        now = utcnow()
        if key.last_used_time is not None and now - key.last_used_time < LAST_USED_RESOLUTION:
            return
        async with self._db.write() as session:
            await session.execute(
                update(api_keys).where(api_keys.c.id == key.id).values(last_used_time=now)
            )

    async def count_live(self) -> int:
        async with self._db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(api_keys).where(api_keys.c.revoke_time.is_(None))
            )
        return count or 0
