from __future__ import annotations

from parley_server.domain import NewSession, Page, Session, SessionPatch, TimeCursor
from parley_server.identity import Principal
from parley_server.store import Store


class SessionService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, caller: Principal, new: NewSession) -> Session:
        return await self._store.sessions.create(new)

    async def get(self, caller: Principal, session_id: str) -> Session:
        return await self._store.sessions.get(session_id)

    async def list(
        self, caller: Principal, *, user_id: str, after: TimeCursor | None, limit: int
    ) -> Page[Session]:
        return await self._store.sessions.list(user_id=user_id, after=after, limit=limit)

    async def update(self, caller: Principal, session_id: str, patch: SessionPatch) -> Session:
        return await self._store.sessions.update(session_id, patch)

    async def close(self, caller: Principal, session_id: str) -> Session:
        return await self._store.sessions.close(session_id)

    async def delete(self, caller: Principal, session_id: str, *, allow_missing: bool) -> None:
        await self._store.sessions.delete(session_id, allow_missing=allow_missing)

    async def get_or_create_open(
        self, caller: Principal, user_id: str, template: NewSession
    ) -> tuple[Session, bool]:
        return await self._store.sessions.get_or_create_open(user_id, template)

    async def latest(self, caller: Principal, user_id: str) -> Session:
        return await self._store.sessions.latest(user_id)
