"""Hardening: a shared page-token signing key, message sizes for response budgets, and ids on
SQLite repaired where a lax check once let a trailing newline in.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every id column on SQLite (CHAR(32) hex there): (table, column, nullable).
_ID_COLUMNS = (
    ("users", "id", False),
    ("sessions", "id", False),
    ("sessions", "user_id", True),
    ("messages", "id", False),
    ("messages", "session_id", False),
    ("messages", "reply_to", True),
    ("messages", "user_id", True),
    ("contexts", "id", False),
    ("contexts", "session_id", False),
    ("ratings", "id", False),
    ("ratings", "message_id", False),
    ("ratings", "user_id", False),
    ("ratings", "session_id", False),
)
_WHITESPACE = "' ' || char(9) || char(10) || char(13)"


def upgrade() -> None:
    secrets = op.create_table(
        "parley_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_parley_secrets")),
    )
    op.bulk_insert(secrets, [{"name": "page_token", "value": os.urandom(32)}])

    op.add_column(
        "messages",
        sa.Column("size_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    octets = "length(CAST({} AS BLOB))" if sqlite else "octet_length({}::text)"
    estimate = " + ".join(
        f"coalesce({octets.format(column)}, 0)"
        for column in ("content", "tool_calls", "attachments", "citations", "metadata")
    )
    op.execute(f"UPDATE messages SET size_bytes = 128 + {estimate}")

    if sqlite:
        _repair_sqlite_ids()


def _repair_sqlite_ids() -> None:
    """Strip whitespace from stored ids (the old check accepted "<uuid>\\n"); a reference that is
    still not an id is cleared. Rows that stayed unreadable would fail every read of their
    session."""
    op.execute("PRAGMA defer_foreign_keys=ON")  # parents and children change one at a time
    for table, column, nullable in _ID_COLUMNS:
        bad = f"(length({column}) <> 32 OR {column} GLOB '*[^0-9a-f]*')"
        op.execute(
            f"UPDATE {table} SET {column} = lower(trim({column}, {_WHITESPACE}))"
            f" WHERE {column} IS NOT NULL AND {bad}"
        )
        if nullable:
            op.execute(f"UPDATE {table} SET {column} = NULL WHERE {column} IS NOT NULL AND {bad}")


def downgrade() -> None:
    op.drop_column("messages", "size_bytes")
    op.drop_table("parley_secrets")
