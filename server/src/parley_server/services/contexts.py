from __future__ import annotations

from parley_server.domain import Context, NewContext, Page, TimeCursor
from parley_server.identity import Principal
from parley_server.services.access import require_data_access
from parley_server.store import Store


class ContextService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, caller: Principal, new: NewContext) -> Context:
        require_data_access(caller)
        return await self._store.contexts.create(caller.scope, new)

    async def get(self, caller: Principal, context_id: str) -> Context:
        require_data_access(caller)
        return await self._store.contexts.get(caller.scope, context_id)

    async def list(
        self,
        caller: Principal,
        session_id: str,
        *,
        type: str,
        after: TimeCursor | None,
        limit: int,
    ) -> Page[Context]:
        require_data_access(caller)
        return await self._store.contexts.list(
            caller.scope, session_id, type=type, after=after, limit=limit
        )

    async def delete(self, caller: Principal, context_id: str, *, allow_missing: bool) -> None:
        require_data_access(caller)
        await self._store.contexts.delete(caller.scope, context_id, allow_missing=allow_missing)
