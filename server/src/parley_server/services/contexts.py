from __future__ import annotations

from parley_server.domain import Context, NewContext, Page, TimeCursor
from parley_server.identity import Principal
from parley_server.store import Store


class ContextService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, caller: Principal, new: NewContext) -> Context:
        return await self._store.contexts.create(new)

    async def get(self, caller: Principal, context_id: str) -> Context:
        return await self._store.contexts.get(context_id)

    async def list(
        self,
        caller: Principal,
        session_id: str,
        *,
        type: str,
        after: TimeCursor | None,
        limit: int,
    ) -> Page[Context]:
        return await self._store.contexts.list(session_id, type=type, after=after, limit=limit)

    async def delete(self, caller: Principal, context_id: str, *, allow_missing: bool) -> None:
        await self._store.contexts.delete(context_id, allow_missing=allow_missing)
