"""Core views of the mapped tables, and the helpers every repository shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley_server.domain import Scope, TimeCursor
from parley_server.errors import NotFound
from parley_server.store.schema import (
    ApiKeyRow,
    AppStateRow,
    ContextRow,
    MessageDeletionRow,
    MessageRow,
    RatingRow,
    SecretRow,
    SessionRow,
    TenantRow,
    UserRow,
    UserStateRow,
)

users = cast(Table, UserRow.__table__)
sessions = cast(Table, SessionRow.__table__)
messages = cast(Table, MessageRow.__table__)
contexts = cast(Table, ContextRow.__table__)
ratings = cast(Table, RatingRow.__table__)
secrets = cast(Table, SecretRow.__table__)
tenants = cast(Table, TenantRow.__table__)
api_keys = cast(Table, ApiKeyRow.__table__)
message_deletions = cast(Table, MessageDeletionRow.__table__)
app_states = cast(Table, AppStateRow.__table__)
user_states = cast(Table, UserStateRow.__table__)

# A session is read with the state its app and its user within the app share with other sessions.
_SESSIONS_WITH_STATES = sessions.outerjoin(
    app_states,
    and_(app_states.c.tenant_id == sessions.c.tenant_id, app_states.c.app == sessions.c.app),
).outerjoin(
    user_states,
    and_(
        user_states.c.tenant_id == sessions.c.tenant_id,
        user_states.c.app == sessions.c.app,
        user_states.c.user_id == sessions.c.user_id,
    ),
)


def select_sessions() -> Select[Any]:
    """Sessions as rows.to_session reads them: every column, and the shared state."""
    return select(
        sessions,
        app_states.c.state.label("app_state"),
        user_states.c.state.label("user_state"),
    ).select_from(_SESSIONS_WITH_STATES)


def visible(table: Table, scope: Scope) -> list[ColumnElement[bool]]:
    """The conditions that keep a query on `table` within `scope`: its tenant's rows, and for a
    user's scope only that user's own (the user; sessions it owns; what those sessions hold, and
    for ratings, only those it gave)."""
    conditions: list[ColumnElement[bool]] = [table.c.tenant_id == scope.tenant]
    if not scope.owner:
        return conditions
    if table is users:
        conditions.append(users.c.id == scope.owner)
    elif table is sessions:
        conditions.append(sessions.c.user_id == scope.owner)
    else:
        conditions.append(
            exists().where(
                sessions.c.tenant_id == scope.tenant,
                sessions.c.id == table.c.session_id,
                sessions.c.user_id == scope.owner,
            )
        )
        if table is ratings:
            conditions.append(ratings.c.user_id == scope.owner)
    return conditions


async def lock_session(session: AsyncSession, scope: Scope, session_id: str) -> dict[str, Any]:
    """Lock the session's row for this transaction (SQLite's writer holds the whole file) and
    return what writers under the lock need of it; NOT_FOUND if the scope has no such session."""
    row = (
        await session.execute(
            select(
                sessions.c.id,
                sessions.c.app,
                sessions.c.user_id,
                sessions.c.state,
                sessions.c.last_seq,
                sessions.c.deletions,
            )
            .where(*visible(sessions, scope), sessions.c.id == session_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound.resource("session", session_id)
    return dict(row._mapping)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def after_cursor(
    time_column: Any, id_column: Any, cursor: TimeCursor | None, *, descending: bool = False
) -> ColumnElement[bool] | None:
    """The keyset condition "strictly after cursor" for a list ordered by (time, id).

    Spelled with OR/AND rather than a row-value comparison so SQLAlchemy types each bound value
    from its column (UTC datetimes, UUIDs) on every backend.
    """
    if cursor is None:
        return None
    if descending:
        return or_(
            time_column < cursor.time, and_(time_column == cursor.time, id_column < cursor.id)
        )
    return or_(time_column > cursor.time, and_(time_column == cursor.time, id_column > cursor.id))


async def require_visible(
    session: AsyncSession, scope: Scope, kind: str, table: Table, resource_id: str
) -> None:
    """NOT_FOUND unless the `kind` resource `resource_id` of `table` is within `scope`."""
    if not await session.scalar(
        select(exists().where(*visible(table, scope), table.c.id == resource_id))
    ):
        raise NotFound.resource(kind, resource_id)
