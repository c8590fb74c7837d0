"""Messages get an opaque payload: the client's own form of the item, with its media type.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("payload", sa.LargeBinary(), nullable=True))
    op.add_column(
        "messages",
        sa.Column(
            "payload_type", sa.String(length=256), server_default=sa.text("''"), nullable=False
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("payload_type")
        batch.drop_column("payload")
