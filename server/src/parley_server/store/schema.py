"""Tables. Alembic migrations (parley_server/migrations) are the only way this schema reaches a
database; a test compares these definitions with the migrated schema on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

# Longest free-form label (chapter, thread id, tool name, ...): keeps index entries small on both
# backends, far below PostgreSQL's btree row limit.
LABEL_LENGTH = 256
EMAIL_LENGTH = 320
TENANT_LENGTH = 64


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: timestamptz on PostgreSQL, naive-UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class MinuteOf(FunctionElement[datetime]):
    """The minute of a UTC time column (its seconds cut off), as a naive UTC time."""

    type = DateTime()
    inherit_cache = True


@compiles(MinuteOf, "postgresql")
def _minute_of_postgresql(element: MinuteOf, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date_trunc('minute', {compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC')"


@compiles(MinuteOf, "sqlite")
def _minute_of_sqlite(element: MinuteOf, compiler: SQLCompiler, **kw: Any) -> str:
    # Naive UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff', cut to its minute and read as a time.
    return f"datetime(substr({compiler.process(element.clauses, **kw)}, 1, 16))"


# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite. SQL NULL for Python None.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# Native uuid on PostgreSQL, CHAR(32) on SQLite; ids are canonical lower-case strings in Python.
Id = Uuid(as_uuid=False)
# Users and sessions take callers' own ids (an agent framework's), so theirs are strings; a UUID
# among them is kept in its canonical form.
RESOURCE_ID_LENGTH = 255
ResourceId = String(RESOURCE_ID_LENGTH)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: Json}


def _tenant() -> Mapped[str]:
    """The isolation boundary: every key and index of tenant data leads with it, so one
    tenant's rows are never reached through another's, and ids (even caller-chosen ones) need
    be unique only within a tenant."""
    return mapped_column(String(TENANT_LENGTH), primary_key=True)


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    create_time: Mapped[datetime]


class ApiKeyRow(Base):
    """A credential: only the SHA-256 of the key is kept (keys are 256-bit random, so a fast hash
    is as good as a slow one), and the key itself is shown once, when it is made."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(TENANT_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(ResourceId)
    display_name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    create_time: Mapped[datetime]
    last_used_time: Mapped[datetime | None]
    revoke_time: Mapped[datetime | None]

    __table_args__ = (Index(None, "tenant_id", "create_time", "id"),)


class UserRow(Base):
    __tablename__ = "users"

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(ResourceId, primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    # Lower-cased; NULL (not "") when absent so the unique constraint ignores it.
    email: Mapped[str | None] = mapped_column(String(EMAIL_LENGTH))
    role: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    picture_url: Mapped[str] = mapped_column(Text)
    status_message: Mapped[str] = mapped_column(Text)
    bio: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(Text)
    website: Mapped[str] = mapped_column(Text)
    social_links: Mapped[dict[str, Any]] = mapped_column(Json)
    preferences: Mapped[dict[str, Any]] = mapped_column(Json)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("tenant_id", "email"),
        Index(None, "tenant_id", "create_time", "id"),
    )


class SessionRow(Base):
    __tablename__ = "sessions"

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(ResourceId, primary_key=True)
    user_id: Mapped[str | None] = mapped_column(ResourceId)
    title: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", Json)
    ip_address: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    user_agent: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    message_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Highest seq ever assigned; the next append takes last_seq + 1. Never decreases.
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_message_time: Mapped[datetime | None]
    # The largest size_bytes of any message ever appended to it (deletions leave it). A read of
    # history whose rows cannot reach the response budget at this size skips summing their sizes.
    largest_message_bytes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # How many messages were ever deleted from it: the number of its newest message_deletions row.
    deletions: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The application the session belongs to: the namespace of app and user state.
    app: Mapped[str] = mapped_column(String(LABEL_LENGTH), server_default=text("''"))
    # Session-scoped state: JSON values by key.
    state: Mapped[dict[str, Any]] = mapped_column(Json, server_default=text("'{}'"))
    # The client's time of the newest event appended with one (an agent framework's clock).
    last_event_time: Mapped[datetime | None]
    # What the most-recent-session index holds instead of update_time, which every append
    # changes: an update that changes no indexed column leaves every index alone (PostgreSQL's
    # HOT update), and this changes at most once a minute. Stored on PostgreSQL (virtual on
    # SQLite, which cannot add a stored one to a table).
    update_minute: Mapped[datetime] = mapped_column(
        DateTime(), Computed(MinuteOf(text("update_time")), persisted=True)
    )

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
        ),
        # ListSessions(user_id), newest first
        Index(None, "tenant_id", "user_id", "create_time", "id"),
        Index(None, "tenant_id", "create_time", "id"),  # ListSessions(), newest first
        # GetLatestSession, GetOrCreateOpenSession: ordered by update_minute, then update_time
        # within the newest minute.
        Index(None, "tenant_id", "user_id", "update_minute"),
        # ListSessions(app[, user_id]), newest first
        Index(None, "tenant_id", "app", "create_time", "id"),
        Index(None, "tenant_id", "app", "user_id", "create_time", "id"),
    )


class AppStateRow(Base):
    """State shared by every session of one app."""

    __tablename__ = "app_states"

    tenant_id: Mapped[str] = _tenant()
    app: Mapped[str] = mapped_column(String(LABEL_LENGTH), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(Json)
    update_time: Mapped[datetime]


class UserStateRow(Base):
    """State shared by every session of one user within one app."""

    __tablename__ = "user_states"

    tenant_id: Mapped[str] = _tenant()
    app: Mapped[str] = mapped_column(String(LABEL_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(ResourceId, primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(Json)
    update_time: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
        ),
    )


class MessageRow(Base):
    __tablename__ = "messages"

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    session_id: Mapped[str] = mapped_column(ResourceId)
    seq: Mapped[int] = mapped_column(BigInteger)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    tool_call_id: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    invocation_id: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    thread_id: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    reply_to: Mapped[str | None] = mapped_column(Id)
    chapter: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    attachments: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", Json)
    # Cleared by DeleteUser before the user goes (a composite key cannot SET NULL one column of it
    # on every backend).
    user_id: Mapped[str | None] = mapped_column(ResourceId)
    create_time: Mapped[datetime]
    # The message's size in the API's encoding, so reads can stop at a response byte budget
    # without reading what does not fit (rows from before migration 0002 hold an estimate).
    size_bytes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The client's own time of the event (an agent framework's timestamp), if it gave one.
    event_time: Mapped[datetime | None]
    # The client's own form of the item and its media type, kept byte for byte.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload_type: Mapped[str] = mapped_column(String(LABEL_LENGTH), server_default=text("''"))
    # The message in the API's encoding, framed as an entry of a response's messages field
    # (domain.EncodeEntry), which reads hand out as it is; NULL for rows appended before migration
    # 0008 or from below the API, and for a deleted user's messages (it held their id), which
    # reads rebuild from the columns.
    entry: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["tenant_id", "user_id"], ["users.tenant_id", "users.id"]),
        # History in order; seq assignment.
        UniqueConstraint("tenant_id", "session_id", "seq"),
        Index(None, "tenant_id", "session_id", "chapter", "seq"),
        Index(None, "tenant_id", "session_id", "thread_id", "seq"),
        Index(None, "tenant_id", "session_id", "invocation_id", "seq"),
        Index(None, "tenant_id", "session_id", "role", "seq"),
        # For clearing authorship when a user goes; most messages have no author id.
        Index(
            None,
            "tenant_id",
            "user_id",
            postgresql_where=text("user_id IS NOT NULL"),
            sqlite_where=text("user_id IS NOT NULL"),
        ),
    )


class MessageDeletionRow(Base):
    """A message deleted from a session, numbered 1, 2, 3, ... per session, so that a watcher
    that was away learns of every delete it missed (WatchSession's after_deletion)."""

    __tablename__ = "message_deletions"

    tenant_id: Mapped[str] = _tenant()
    session_id: Mapped[str] = mapped_column(ResourceId, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[str] = mapped_column(Id)
    seq: Mapped[int] = mapped_column(BigInteger)
    delete_time: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
        ),
    )


class SecretRow(Base):
    """Keys every server process over this database shares (the page-token signing key), made by
    the migration that added them."""

    __tablename__ = "parley_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class ContextRow(Base):
    __tablename__ = "contexts"

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    session_id: Mapped[str] = mapped_column(ResourceId)
    type: Mapped[str] = mapped_column(String(LABEL_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", Json)
    create_time: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
        ),
        Index(None, "tenant_id", "session_id", "create_time", "id"),
        Index(None, "tenant_id", "session_id", "type", "create_time", "id"),
    )


class RatingRow(Base):
    __tablename__ = "ratings"

    tenant_id: Mapped[str] = _tenant()
    id: Mapped[str] = mapped_column(Id, primary_key=True)
    message_id: Mapped[str] = mapped_column(Id)
    user_id: Mapped[str] = mapped_column(ResourceId)
    # Denormalised from the message so per-session lists and summaries need no join.
    session_id: Mapped[str] = mapped_column(ResourceId)
    value: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "message_id"], ["messages.tenant_id", "messages.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "session_id"], ["sessions.tenant_id", "sessions.id"], ondelete="CASCADE"
        ),
        # One rating per user per message.
        UniqueConstraint("tenant_id", "message_id", "user_id"),
        CheckConstraint("value BETWEEN 1 AND 5", name="value_range"),
        Index(None, "tenant_id", "session_id", "create_time", "id"),
        Index(None, "tenant_id", "user_id", "create_time", "id"),
    )
