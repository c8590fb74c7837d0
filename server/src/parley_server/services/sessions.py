from __future__ import annotations

import dataclasses

from parley_server.domain import (
    NO_STATE_DELTA,
    NewSession,
    Page,
    Session,
    SessionPatch,
    StateDelta,
    TimeCursor,
    UserState,
)
from parley_server.identity import Principal
from parley_server.services.access import (
    acting_for,
    audit,
    may_change_state,
    require_data_access,
)
from parley_server.store import Store


class SessionService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(
        self, caller: Principal, new: NewSession, delta: StateDelta = NO_STATE_DELTA
    ) -> Session:
        require_data_access(caller)
        may_change_state(caller, delta)
        owner = acting_for(caller, new.user_id)
        if owner != new.user_id:
            new = dataclasses.replace(new, user_id=owner)
        return await self._store.sessions.create(caller.scope, new, delta)

    async def get(self, caller: Principal, session_id: str) -> Session:
        require_data_access(caller)
        return await self._store.sessions.get(caller.scope, session_id)

    async def list(
        self,
        caller: Principal,
        *,
        user_id: str,
        app: str | None = None,
        after: TimeCursor | None,
        limit: int,
    ) -> Page[Session]:
        require_data_access(caller)
        return await self._store.sessions.list(
            caller.scope, user_id=user_id, app=app, after=after, limit=limit
        )

    async def update_state(
        self,
        caller: Principal,
        session_id: str,
        delta: StateDelta,
        *,
        expected_last_seq: int | None = None,
    ) -> Session:
        require_data_access(caller)
        may_change_state(caller, delta)
        return await self._store.sessions.update_state(
            caller.scope, session_id, delta, expected_last_seq=expected_last_seq
        )

    async def user_state(self, caller: Principal, app: str, user_id: str) -> UserState:
        require_data_access(caller)
        return await self._store.sessions.user_state(caller.scope, app, acting_for(caller, user_id))

    async def update(self, caller: Principal, session_id: str, patch: SessionPatch) -> Session:
        require_data_access(caller)
        return await self._store.sessions.update(caller.scope, session_id, patch)

    async def close(self, caller: Principal, session_id: str) -> Session:
        require_data_access(caller)
        return await self._store.sessions.close(caller.scope, session_id)

    async def delete(self, caller: Principal, session_id: str, *, allow_missing: bool) -> None:
        require_data_access(caller)
        await self._store.sessions.delete(caller.scope, session_id, allow_missing=allow_missing)
        audit.info("session deleted: session=%s by %s", session_id, caller)

    async def get_or_create_open(
        self, caller: Principal, user_id: str, template: NewSession
    ) -> tuple[Session, bool]:
        require_data_access(caller)
        return await self._store.sessions.get_or_create_open(
            caller.scope, acting_for(caller, user_id), template
        )

    async def latest(self, caller: Principal, user_id: str) -> Session:
        require_data_access(caller)
        return await self._store.sessions.latest(caller.scope, acting_for(caller, user_id))

    async def require_visible(self, caller: Principal, session_id: str) -> None:
        """For a user principal, NOT_FOUND unless the session is its own (a service sees all of
        its tenant, and the store's tenant condition suffices)."""
        require_data_access(caller)
        if caller.scope.owner:
            await self._store.sessions.get(caller.scope, session_id)
