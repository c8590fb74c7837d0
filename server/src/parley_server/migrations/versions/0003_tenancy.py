"""Tenancy: every user, session, message, context and rating belongs to a tenant, which leads
every key and index; API keys; existing data moves into the tenant "default".

Primary keys become (tenant_id, id), so the tables are rebuilt: each old table is renamed away,
the new one is created, the rows are copied, and the old tables are dropped, children first.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import importlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = "default"
# Parents before children: the order rows are copied in (and dropped in, reversed).
TABLES = ("users", "sessions", "messages", "contexts", "ratings")
# Constraints whose names are (on PostgreSQL) indexes, global to the schema, so they are renamed
# with their old table before the new table takes the name.
_INDEXED_CONSTRAINTS = {
    "users": ("pk_users", "uq_users_email"),
    "sessions": ("pk_sessions",),
    "messages": ("pk_messages", "uq_messages_session_id_seq"),
    "contexts": ("pk_contexts",),
    "ratings": ("pk_ratings", "uq_ratings_message_id_user_id"),
}
_INDEXED_CONSTRAINTS_V3 = {
    "users": ("pk_users", "uq_users_tenant_id_email"),
    "sessions": ("pk_sessions",),
    "messages": ("pk_messages", "uq_messages_tenant_id_session_id_seq"),
    "contexts": ("pk_contexts",),
    "ratings": ("pk_ratings", "uq_ratings_tenant_id_message_id_user_id"),
}


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def _id() -> sa.Uuid[str]:
    return sa.Uuid(as_uuid=False)


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(length=64), nullable=False)


def _fk(source: str, column: str, table: str, *, cascade: bool = True) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id", column],
        [f"{table}.tenant_id", f"{table}.id"],
        name=op.f(f"fk_{source}_tenant_id_{table}"),
        ondelete="CASCADE" if cascade else None,
    )


def _move_aside(
    tables: Sequence[str], constraints: dict[str, tuple[str, ...]], suffix: str
) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in tables:
        op.rename_table(table, f"{table}_{suffix}")
        if postgres:
            for name in constraints[table]:
                op.execute(
                    f"ALTER TABLE {table}_{suffix} RENAME CONSTRAINT {name} TO {name}_{suffix}"
                )


def _copy(table: str, source: str, columns: Sequence[str], *, tenant: str | None) -> None:
    names = ", ".join(columns)
    if tenant is None:  # into the tenanted table
        op.execute(
            f"INSERT INTO {table} (tenant_id, {names}) SELECT '{DEFAULT_TENANT}', {names}"
            f" FROM {source}"
        )
    else:
        op.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}"
            f" WHERE tenant_id = '{tenant}'"
        )


def _columns() -> dict[str, list[str]]:
    bind = op.get_bind()
    return {
        table: [
            column["name"]
            for column in sa.inspect(bind).get_columns(table)
            if column["name"] != "tenant_id"
        ]
        for table in TABLES
    }


def upgrade() -> None:
    columns = _columns()
    _move_aside(TABLES, _INDEXED_CONSTRAINTS, "v2")

    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.execute(tenants.insert().values(id=DEFAULT_TENANT, create_time=sa.func.now()))
    op.create_table(
        "api_keys",
        sa.Column("id", _id(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("user_id", _id(), nullable=True),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("last_used_time", _time(), nullable=True),
        sa.Column("revoke_time", _time(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(
        op.f("ix_api_keys_tenant_id_create_time_id"),
        "api_keys",
        ["tenant_id", "create_time", "id"],
    )

    op.create_table(
        "users",
        _tenant(),
        sa.Column("id", _id(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("role", sa.String(length=256), nullable=False),
        sa.Column("picture_url", sa.Text(), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("bio", sa.Text(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("website", sa.Text(), nullable=False),
        sa.Column("social_links", _json(), nullable=False),
        sa.Column("preferences", _json(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("update_time", _time(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_users")),
        sa.UniqueConstraint("tenant_id", "email", name=op.f("uq_users_tenant_id_email")),
    )
    op.create_table(
        "sessions",
        _tenant(),
        sa.Column("id", _id(), nullable=False),
        sa.Column("user_id", _id(), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        sa.Column("ip_address", sa.String(length=256), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.Column("device", sa.Text(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("update_time", _time(), nullable=False),
        sa.Column("end_time", _time(), nullable=True),
        sa.Column("message_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_message_time", _time(), nullable=True),
        _fk("sessions", "user_id", "users"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_sessions")),
    )
    op.create_table(
        "messages",
        _tenant(),
        sa.Column("id", _id(), nullable=False),
        sa.Column("session_id", _id(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("tool_calls", _json(), nullable=True),
        sa.Column("tool_call_id", sa.String(length=256), nullable=False),
        sa.Column("invocation_id", sa.String(length=256), nullable=False),
        sa.Column("thread_id", sa.String(length=256), nullable=False),
        sa.Column("reply_to", _id(), nullable=True),
        sa.Column("chapter", sa.String(length=256), nullable=False),
        sa.Column("attachments", _json(), nullable=True),
        sa.Column("citations", _json(), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("user_id", _id(), nullable=True),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _fk("messages", "session_id", "sessions"),
        _fk("messages", "user_id", "users", cascade=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_messages")),
        sa.UniqueConstraint(
            "tenant_id", "session_id", "seq", name=op.f("uq_messages_tenant_id_session_id_seq")
        ),
    )
    op.create_table(
        "contexts",
        _tenant(),
        sa.Column("id", _id(), nullable=False),
        sa.Column("session_id", _id(), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        _fk("contexts", "session_id", "sessions"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_contexts")),
    )
    op.create_table(
        "ratings",
        _tenant(),
        sa.Column("id", _id(), nullable=False),
        sa.Column("message_id", _id(), nullable=False),
        sa.Column("user_id", _id(), nullable=False),
        sa.Column("session_id", _id(), nullable=False),
        sa.Column("value", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("update_time", _time(), nullable=False),
        sa.CheckConstraint("value BETWEEN 1 AND 5", name=op.f("ck_ratings_value_range")),
        _fk("ratings", "message_id", "messages"),
        _fk("ratings", "user_id", "users"),
        _fk("ratings", "session_id", "sessions"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_ratings")),
        sa.UniqueConstraint(
            "tenant_id",
            "message_id",
            "user_id",
            name=op.f("uq_ratings_tenant_id_message_id_user_id"),
        ),
    )

    for table in TABLES:
        _copy(table, f"{table}_v2", columns[table], tenant=None)
    for table in reversed(TABLES):
        op.drop_table(f"{table}_v2")

    for table, *indexed in (
        ("users", "create_time", "id"),
        ("sessions", "user_id", "create_time", "id"),
        ("sessions", "create_time", "id"),
        ("sessions", "user_id", "update_time"),
        ("messages", "session_id", "chapter", "seq"),
        ("messages", "session_id", "thread_id", "seq"),
        ("messages", "session_id", "invocation_id", "seq"),
        ("messages", "session_id", "role", "seq"),
        ("contexts", "session_id", "create_time", "id"),
        ("contexts", "session_id", "type", "create_time", "id"),
        ("ratings", "session_id", "create_time", "id"),
        ("ratings", "user_id", "create_time", "id"),
    ):
        op.create_index(
            op.f(f"ix_{table}_tenant_id_{'_'.join(indexed)}"), table, ["tenant_id", *indexed]
        )
    op.create_index(
        op.f("ix_messages_tenant_id_user_id"),
        "messages",
        ["tenant_id", "user_id"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
        sqlite_where=sa.text("user_id IS NOT NULL"),
    )


def downgrade() -> None:
    """Back to one tenant: the default tenant's rows are kept, every other tenant's are lost."""
    columns = _columns()
    _move_aside(TABLES, _INDEXED_CONSTRAINTS_V3, "v3")
    initial = importlib.import_module("parley_server.migrations.versions.0001_initial_schema")
    initial.upgrade()
    op.add_column(
        "messages",
        sa.Column("size_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    for table in TABLES:
        _copy(table, f"{table}_v3", columns[table], tenant=DEFAULT_TENANT)
    for table in reversed(TABLES):
        op.drop_table(f"{table}_v3")
    op.drop_table("api_keys")
    op.drop_table("tenants")
