"""Live history: what WatchSession needs to follow a session across server processes.

- sessions.deletions and message_deletions: every message delete, numbered per session, so a
  watcher that was away learns of the deletes it missed.
- On PostgreSQL, a trigger on sessions (which every append, delete, update, close and session
  delete changes) sends NOTIFY parley_history with [tenant, session id, last seq] at commit: the
  wake-up signal for watchers in every process. It carries no data: watchers read the tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOTIFY_FUNCTION = """
CREATE FUNCTION parley_notify_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed sessions%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify(
        'parley_history', json_build_array(changed.tenant_id, changed.id, changed.last_seq)::text
    );
    RETURN NULL;
END
$$
"""
_NOTIFY_TRIGGER = """
CREATE TRIGGER sessions_notify_history AFTER UPDATE OR DELETE ON sessions
FOR EACH ROW EXECUTE FUNCTION parley_notify_history()
"""


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("deletions", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_table(
        "message_deletions",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "session_id"],
            ["sessions.tenant_id", "sessions.id"],
            name=op.f("fk_message_deletions_tenant_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "session_id", "number", name=op.f("pk_message_deletions")
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER sessions_notify_history ON sessions")
        op.execute("DROP FUNCTION parley_notify_history()")
    op.drop_table("message_deletions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("deletions")
