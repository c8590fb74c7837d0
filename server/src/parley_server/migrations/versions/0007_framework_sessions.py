"""What agent frameworks need of sessions:

- User and session ids become free strings (UUIDs stay valid, canonical and lower-case), so a
  framework's own ids ("support-bot:alice:3f2a...") are kept as they are. Every column holding or
  referencing one changes type: PostgreSQL alters them in place; SQLite, whose ALTER TABLE cannot,
  rebuilds the tables from their own CREATE statements with the type swapped, and its UUIDs
  (stored as 32 hex digits) take the canonical hyphenated form.
- sessions.app: the application a session belongs to (a namespace such as an ADK app_name).
- State at three scopes: sessions.state, user_states (one user within one app) and app_states.
- sessions.last_event_time: the client's time of the newest event appended with one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_LENGTH = 255
# Every column holding a user or session id, parents before children.
_ID_COLUMNS = {
    "users": ("id",),
    "sessions": ("id", "user_id"),
    "messages": ("session_id", "user_id"),
    "contexts": ("session_id",),
    "ratings": ("user_id", "session_id"),
    "message_deletions": ("session_id",),
    "api_keys": ("user_id",),
}
# The composite foreign keys onto users and sessions: (table, column, parent, on delete).
_FOREIGN_KEYS = (
    ("sessions", "user_id", "users", "CASCADE"),
    ("messages", "session_id", "sessions", "CASCADE"),
    ("messages", "user_id", "users", None),
    ("contexts", "session_id", "sessions", "CASCADE"),
    ("ratings", "user_id", "users", "CASCADE"),
    ("ratings", "session_id", "sessions", "CASCADE"),
    ("message_deletions", "session_id", "sessions", "CASCADE"),
)
_UUID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _alter_postgresql(f"varchar({ID_LENGTH})", "{}::text")
    else:
        _rebuild_sqlite("CHAR(32)", f"VARCHAR({ID_LENGTH})", _hyphenated)

    op.add_column(
        "sessions",
        sa.Column("app", sa.String(length=256), server_default=sa.text("''"), nullable=False),
    )
    op.add_column(
        "sessions", sa.Column("state", _json(), server_default=sa.text("'{}'"), nullable=False)
    )
    op.add_column(
        "sessions", sa.Column("last_event_time", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        op.f("ix_sessions_tenant_id_app_create_time_id"),
        "sessions",
        ["tenant_id", "app", "create_time", "id"],
    )
    op.create_index(
        op.f("ix_sessions_tenant_id_app_user_id_create_time_id"),
        "sessions",
        ["tenant_id", "app", "user_id", "create_time", "id"],
    )
    op.create_table(
        "app_states",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=256), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "app", name=op.f("pk_app_states")),
    )
    op.create_table(
        "user_states",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=256), nullable=False),
        sa.Column("user_id", sa.String(length=ID_LENGTH), nullable=False),
        sa.Column("state", _json(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "user_id"],
            ["users.tenant_id", "users.id"],
            name=op.f("fk_user_states_tenant_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "app", "user_id", name=op.f("pk_user_states")),
    )


def downgrade() -> None:
    """Rows whose user or session id is not a UUID cannot go back, and are deleted."""
    op.drop_table("user_states")
    op.drop_table("app_states")
    op.drop_index(op.f("ix_sessions_tenant_id_app_user_id_create_time_id"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_tenant_id_app_create_time_id"), table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("last_event_time")
        batch.drop_column("state")
        batch.drop_column("app")

    postgres = op.get_bind().dialect.name == "postgresql"
    glob = "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12))
    for table, columns in reversed(_ID_COLUMNS.items()):
        for column in columns:
            keeps = f"{column} ~ '{_UUID_PATTERN}'" if postgres else f"{column} GLOB '{glob}'"
            op.execute(f"DELETE FROM {table} WHERE {column} IS NOT NULL AND NOT ({keeps})")
    if postgres:
        _alter_postgresql("uuid", "{}::uuid")
    else:
        _rebuild_sqlite(f"VARCHAR({ID_LENGTH})", "CHAR(32)", "replace({}, '-', '')".format)


def _alter_postgresql(new_type: str, convert: str) -> None:
    """Foreign keys must match their parents' types, so they go while the types change."""
    for table, _column, parent, _ in _FOREIGN_KEYS:
        op.drop_constraint(f"fk_{table}_tenant_id_{parent}", table, type_="foreignkey")
    for table, columns in _ID_COLUMNS.items():
        for column in columns:
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {new_type}"
                f" USING {convert.format(column)}"
            )
    for table, column, parent, on_delete in _FOREIGN_KEYS:
        op.create_foreign_key(
            f"fk_{table}_tenant_id_{parent}",
            table,
            parent,
            ["tenant_id", column],
            ["tenant_id", "id"],
            ondelete=on_delete,
        )


def _hyphenated(column: str) -> str:
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return "lower(" + " || '-' || ".join(f"substr({column}, {a}, {n})" for a, n in parts) + ")"


def _rebuild_sqlite(old_type: str, new_type: str, convert: Any) -> None:
    """SQLite's documented way to change a column's type: make the table anew and copy. The old
    tables are renamed aside first (SQLite points their children at the new names) and dropped
    children first, so that no drop cascades into a table that is kept."""
    bind = op.get_bind()
    tables = list(_ID_COLUMNS)
    definitions: dict[str, str] = {}
    indexes: list[str] = []
    for table in tables:
        (definitions[table],) = bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).one()
        for name, sql in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
            " AND sql IS NOT NULL",
            (table,),
        ):
            op.execute(f"DROP INDEX {name}")
            indexes.append(sql)
    for table in tables:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_v6")
    for table in tables:
        sql = definitions[table]
        for column in _ID_COLUMNS[table]:
            sql, swapped = re.subn(
                rf"(\b{column}\s+){re.escape(old_type)}", rf"\g<1>{new_type}", sql, count=1
            )
            assert swapped == 1, f"{table}.{column} is not {old_type}"
        op.execute(sql)
        names = [row[1] for row in bind.exec_driver_sql(f"PRAGMA table_info({table}_v6)")]
        selected = ", ".join(
            convert(name) if name in _ID_COLUMNS[table] else name for name in names
        )
        op.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {selected} FROM {table}_v6")
    for table in reversed(tables):
        op.execute(f"DROP TABLE {table}_v6")
    for sql in indexes:
        op.execute(sql)
