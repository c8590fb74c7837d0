"""Initial schema: users, sessions, messages, contexts, ratings.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def _id() -> sa.Uuid[str]:
    return sa.Uuid(as_uuid=False)


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index(op.f("ix_users_create_time_id"), "users", ["create_time", "id"])

    op.create_table(
        "sessions",
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
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_create_time_id"), "sessions", ["create_time", "id"])
    op.create_index(
        op.f("ix_sessions_user_id_create_time_id"), "sessions", ["user_id", "create_time", "id"]
    )
    op.create_index(op.f("ix_sessions_user_id_update_time"), "sessions", ["user_id", "update_time"])

    op.create_table(
        "contexts",
        sa.Column("id", _id(), nullable=False),
        sa.Column("session_id", _id(), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_contexts_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contexts")),
    )
    op.create_index(
        op.f("ix_contexts_session_id_create_time_id"),
        "contexts",
        ["session_id", "create_time", "id"],
    )
    op.create_index(
        op.f("ix_contexts_session_id_type_create_time_id"),
        "contexts",
        ["session_id", "type", "create_time", "id"],
    )

    op.create_table(
        "messages",
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
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_messages_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_messages_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("session_id", "seq", name=op.f("uq_messages_session_id_seq")),
    )
    for column in ("chapter", "thread_id", "invocation_id", "role"):
        op.create_index(
            op.f(f"ix_messages_session_id_{column}_seq"), "messages", ["session_id", column, "seq"]
        )
    op.create_index(
        op.f("ix_messages_user_id"),
        "messages",
        ["user_id"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
        sqlite_where=sa.text("user_id IS NOT NULL"),
    )

    op.create_table(
        "ratings",
        sa.Column("id", _id(), nullable=False),
        sa.Column("message_id", _id(), nullable=False),
        sa.Column("user_id", _id(), nullable=False),
        sa.Column("session_id", _id(), nullable=False),
        sa.Column("value", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("create_time", _time(), nullable=False),
        sa.Column("update_time", _time(), nullable=False),
        sa.CheckConstraint("value BETWEEN 1 AND 5", name=op.f("ck_ratings_value_range")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_ratings_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_ratings_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_ratings_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ratings")),
        sa.UniqueConstraint("message_id", "user_id", name=op.f("uq_ratings_message_id_user_id")),
    )
    op.create_index(
        op.f("ix_ratings_session_id_create_time_id"),
        "ratings",
        ["session_id", "create_time", "id"],
    )
    op.create_index(
        op.f("ix_ratings_user_id_create_time_id"), "ratings", ["user_id", "create_time", "id"]
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints with it.
    for table in ("ratings", "messages", "contexts", "sessions", "users"):
        op.drop_table(table)
