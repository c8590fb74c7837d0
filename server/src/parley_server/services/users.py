from __future__ import annotations

from parley_server.domain import NewUser, Page, TimeCursor, User, UserPatch
from parley_server.identity import Principal
from parley_server.store import Store


class UserService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, caller: Principal, new: NewUser) -> User:
        return await self._store.users.create(new)

    async def get(self, caller: Principal, user_id: str) -> User:
        return await self._store.users.get(user_id)

    async def list(self, caller: Principal, *, after: TimeCursor | None, limit: int) -> Page[User]:
        return await self._store.users.list(after=after, limit=limit)

    async def update(self, caller: Principal, user_id: str, patch: UserPatch) -> User:
        return await self._store.users.update(user_id, patch)

    async def delete(
        self, caller: Principal, user_id: str, *, force: bool, allow_missing: bool
    ) -> None:
        await self._store.users.delete(user_id, force=force, allow_missing=allow_missing)
