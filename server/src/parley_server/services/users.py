from __future__ import annotations

from parley_server.domain import NewUser, Page, TimeCursor, User, UserPatch
from parley_server.identity import Principal, Role
from parley_server.services.access import audit, require_data_access, require_role
from parley_server.store import Store


class UserService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, caller: Principal, new: NewUser) -> User:
        require_role(caller, Role.SERVICE, action="create users")
        return await self._store.users.create(caller.scope, new)

    async def get(self, caller: Principal, user_id: str) -> User:
        require_data_access(caller)
        return await self._store.users.get(caller.scope, user_id)

    async def list(self, caller: Principal, *, after: TimeCursor | None, limit: int) -> Page[User]:
        require_data_access(caller)
        return await self._store.users.list(caller.scope, after=after, limit=limit)

    async def update(self, caller: Principal, user_id: str, patch: UserPatch) -> User:
        require_data_access(caller)
        return await self._store.users.update(caller.scope, user_id, patch)

    async def delete(
        self, caller: Principal, user_id: str, *, force: bool, allow_missing: bool
    ) -> None:
        require_role(caller, Role.SERVICE, action="delete users")
        await self._store.users.delete(
            caller.scope, user_id, force=force, allow_missing=allow_missing
        )
        audit.info("user deleted: user=%s force=%s by %s", user_id, force, caller)
