"""Sessions' most-recent index holds update_time's minute (update_minute), not update_time.

Every append changes its session's update_time. While an index held it, each append wrote a new
entry into every index of sessions; now an append changes no indexed column (but once a minute),
so PostgreSQL updates the row in place (a HOT update). GetLatestSession and
GetOrCreateOpenSession order by update_minute, then by update_time within the newest minute.

On PostgreSQL adding the stored column rewrites sessions (under an exclusive lock); SQLite can only
add a virtual one, which its index stores.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MINUTE_OF_UPDATE_TIME = {
    "postgresql": "date_trunc('minute', update_time AT TIME ZONE 'UTC')",
    "sqlite": "datetime(substr(update_time, 1, 16))",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column(
        "sessions",
        sa.Column(
            "update_minute",
            sa.DateTime(),
            sa.Computed(_MINUTE_OF_UPDATE_TIME[dialect], persisted=dialect == "postgresql"),
            nullable=False,
        ),
    )
    op.drop_index("ix_sessions_tenant_id_user_id_update_time", table_name="sessions")
    op.create_index(
        "ix_sessions_tenant_id_user_id_update_minute",
        "sessions",
        ["tenant_id", "user_id", "update_minute"],
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_tenant_id_user_id_update_minute", table_name="sessions")
    op.create_index(
        "ix_sessions_tenant_id_user_id_update_time",
        "sessions",
        ["tenant_id", "user_id", "update_time"],
    )
    op.drop_column("sessions", "update_minute")
