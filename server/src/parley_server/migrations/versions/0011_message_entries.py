"""Messages keep their whole encoding as a response entry (messages.entry), in place of `encoded`.

A read of history had to build each message's entry of a response from its stored encoding, its
seq and its user_id, row by row in Python: much of a stream's server CPU (the README has the
figures). The entry now holds all of it, framed as an entry of a response's repeated messages
field (tag 1, then the length): a read joins the stored bytes. The user_id is inside, so
DeleteUser clears the entries of the user's messages, which are then read from the columns.

On PostgreSQL, appends frame the entry in the statement that assigns the seq, with the function
parley_entry made here (and parley_varint, protobuf's base-128 varint of a bigint, which it uses).

Rows are converted here, in batches, from `encoded` (those without the fields the server assigns,
stored by a server from before they were, keep no entry and are read from the columns until
`parley encode-history` stores theirs); `encoded` is dropped. Run it with no server from before
it still running.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_ID_TAG, _SEQ_TAG, _USER_ID_TAG, _ENTRY_TAG = b"\x0a", b"\x18", b"\x82\x01", b"\x0a"


def _varint(value: int) -> bytes:
    # A migration keeps its own: what it does must not change with the server's code.
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _entry(encoded: bytes, seq: int, user_id: str | None) -> bytes:
    body = encoded
    if user_id:
        data = user_id.encode()
        body += _USER_ID_TAG + _varint(len(data)) + data
    body += _SEQ_TAG + _varint(seq)
    return _ENTRY_TAG + _varint(len(body)) + body


def _varint_sql(value: str) -> str:
    """A CASE that builds the varint of bigint `value` byte by byte (at most 9 for a bigint)."""
    branches = []
    for length in range(1, 10):
        built = "'\\x" + "00" * length + "'::bytea"
        for index in range(length):
            more = " | 128" if index < length - 1 else ""
            built = f"set_byte({built}, {index}, ({value} >> {7 * index} & 127{more})::int)"
        branches.append(
            f"WHEN {value} < {1 << 7 * length} THEN {built}" if length < 9 else f"ELSE {built}"
        )
    return "CASE " + " ".join(branches) + " END"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # SQL functions that PostgreSQL inlines into the statements that call them on columns
        # or parameters: no call per row (called on an expression, parley_varint would not be,
        # and a call costs many times the inlined expression). An entry's length counts the
        # seq's varint, one byte for each threshold it reaches and one more (width_bucket: one
        # cheap call, so the length is still cheap enough to inline parley_varint on).
        thresholds = ", ".join(str(1 << 7 * length) for length in range(1, 9))
        op.execute(
            "CREATE FUNCTION parley_varint(value bigint) RETURNS bytea LANGUAGE sql IMMUTABLE"
            f" PARALLEL SAFE AS $$ SELECT {_varint_sql('value')} $$"
        )
        op.execute(
            "CREATE FUNCTION parley_entry(encoded bytea, seq bigint) RETURNS bytea LANGUAGE sql"
            " IMMUTABLE PARALLEL SAFE AS $$ SELECT '\\x0a'::bytea || parley_varint(octet_length("
            f"encoded) + 2 + width_bucket(seq, ARRAY[{thresholds}]::bigint[])) || encoded ||"
            " '\\x18'::bytea || parley_varint(seq) $$"
        )
    op.add_column("messages", sa.Column("entry", sa.LargeBinary(), nullable=True))
    messages = sa.table(
        "messages",
        sa.column("tenant_id", sa.String),
        sa.column("id", sa.Uuid(as_uuid=False)),
        sa.column("seq", sa.BigInteger),
        sa.column("user_id", sa.String),
        sa.column("encoded", sa.LargeBinary),
        sa.column("entry", sa.LargeBinary),
    )
    key = sa.tuple_(messages.c.tenant_id, messages.c.id)
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(
            messages.c.tenant_id, messages.c.id, messages.c.seq, messages.c.user_id,
            messages.c.encoded,
        ).where(messages.c.encoded.is_not(None))  # fmt: skip
        if after is not None:
            position = sa.tuple_(
                sa.bindparam("after_tenant", after[0], type_=sa.String),
                sa.bindparam("after_id", after[1], type_=sa.Uuid(as_uuid=False)),
            )
            query = query.where(key > position)
        rows = bind.execute(query.order_by(messages.c.tenant_id, messages.c.id).limit(_BATCH)).all()
        if not rows:
            break
        entries = [
            {"t": row.tenant_id, "i": row.id, "e": _entry(row.encoded, row.seq, row.user_id)}
            for row in rows
            if row.encoded.startswith(_ID_TAG)  # else stored without the assigned fields
        ]
        if entries:
            bind.execute(
                messages.update()
                .where(
                    messages.c.tenant_id == sa.bindparam("t"), messages.c.id == sa.bindparam("i")
                )
                .values(entry=sa.bindparam("e")),
                entries,
            )
        after = (rows[-1].tenant_id, rows[-1].id)
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("encoded")


def downgrade() -> None:
    # Servers from before read the messages from their columns until their encode-history runs.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("encoded", sa.LargeBinary(), nullable=True))
        batch.drop_column("entry")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION parley_entry(bytea, bigint)")
        op.execute("DROP FUNCTION parley_varint(bigint)")
