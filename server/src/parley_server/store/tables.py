"""Core views of the mapped tables, and the helpers every repository shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, or_

from parley_server.domain import TimeCursor
from parley_server.store.schema import (
    ContextRow,
    MessageRow,
    RatingRow,
    SecretRow,
    SessionRow,
    UserRow,
)

users = cast(Table, UserRow.__table__)
sessions = cast(Table, SessionRow.__table__)
messages = cast(Table, MessageRow.__table__)
contexts = cast(Table, ContextRow.__table__)
ratings = cast(Table, RatingRow.__table__)
secrets = cast(Table, SecretRow.__table__)


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
