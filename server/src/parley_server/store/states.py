"""State at three scopes: a session's own (sessions.state), a user's within an app (user_states)
and an app's (app_states). Deltas are applied inside the caller's write transaction, so that they
land together with whatever carries them (an append, a create) or not at all.

Locks are taken in one order, session row, then user state, then app state, so concurrent deltas
queue instead of deadlocking."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import ScopedStateDelta, StateDelta, UserState
from parley_server.errors import FailedPrecondition
from parley_server.store.changes import ChangeKey, app_state_key, user_state_key
from parley_server.store.database import announce
from parley_server.store.tables import app_states, sessions, user_states


async def apply_state_delta(
    session: AsyncSession,
    tenant: str,
    target: Mapping[str, Any],
    delta: StateDelta,
    now: datetime,
) -> None:
    """Apply delta for the session `target` (its id, app, user_id and state), whose row this
    transaction has locked."""
    changed: list[ChangeKey] = []  # the shared state, which the sessions trigger does not see
    if delta.session:
        await session.execute(
            update(sessions)
            .where(sessions.c.tenant_id == tenant, sessions.c.id == target["id"])
            .values(state=delta.session.applied_to(target["state"]))
        )
    if delta.user:
        if not target["user_id"]:
            raise FailedPrecondition(
                f"session {target['id']!r} has no user, so it has no user state to change;"
                " create the session with a user_id, or change only session and app state",
                reason="SESSION_HAS_NO_USER",
                metadata={"sessionId": target["id"]},
            )
        key = {"tenant_id": tenant, "app": target["app"], "user_id": target["user_id"]}
        await _apply_shared(session, user_states, key, delta.user, now)
        changed.append(user_state_key(tenant, target["app"], target["user_id"]))
    if delta.app:
        await _apply_shared(
            session, app_states, {"tenant_id": tenant, "app": target["app"]}, delta.app, now
        )
        changed.append(app_state_key(tenant, target["app"]))
    await announce(session, changed)


async def _apply_shared(
    session: AsyncSession,
    table: Table,
    key: dict[str, str],
    delta: ScopedStateDelta,
    now: datetime,
) -> None:
    """Read-modify-write of one shared state row, made if missing, under its row lock."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(
        insert(table).values(**key, state={}, update_time=now).on_conflict_do_nothing()
    )
    where = [table.c[name] == value for name, value in key.items()]
    current = await session.scalar(select(table.c.state).where(*where).with_for_update())
    await session.execute(
        update(table).where(*where).values(state=delta.applied_to(current or {}), update_time=now)
    )


async def read_user_state(session: AsyncSession, tenant: str, app: str, user_id: str) -> UserState:
    row = (
        await session.execute(
            select(user_states.c.state, user_states.c.update_time).where(
                user_states.c.tenant_id == tenant,
                user_states.c.app == app,
                user_states.c.user_id == user_id,
            )
        )
    ).first()
    return UserState(
        app=app,
        user_id=user_id,
        state={} if row is None else row.state,
        update_time=None if row is None else row.update_time,
    )
