"""Sessions record the largest message ever appended to them (largest_message_bytes).

A read of history keeps its response within the byte budget by summing its rows' sizes, which
costs PostgreSQL more than reading them; when the rows it asks for cannot reach the budget even
at the session's largest size, it reads them without that sum. The column is filled here from
the messages stored, and every append keeps it from then on, so run this migration with no
server from before it still appending (their appends would not raise it).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column(
            "largest_message_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.execute(
        "UPDATE sessions SET largest_message_bytes = coalesce((SELECT max(size_bytes) FROM"
        " messages WHERE messages.tenant_id = sessions.tenant_id AND messages.session_id ="
        " sessions.id), 0)"
    )


def downgrade() -> None:
    op.drop_column("sessions", "largest_message_bytes")
