"""What parley stores, independent of protobuf and of SQL.

The API edge converts requests into these types and results out of them; the store reads and writes
them. Optional fields use "" (or 0, or an empty collection) for "not set", as proto3 does.

Inputs (New*, *Patch, filters) are frozen. The types of what the store returns, made by the
thousand when history is read, are plain slotted classes, several times cheaper to build than
frozen ones. Nothing mutates them after the store hands them out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

JsonObject = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows a store operation may reach: one tenant's, and within it only the data of the
    user `owner` when that is set (a user principal's view)."""

    tenant: str
    owner: str = ""


@dataclass(slots=True, kw_only=True)
class UserProfile:
    picture_url: str = ""
    status_message: str = ""
    bio: str = ""
    location: str = ""
    website: str = ""
    social_links: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUser:
    id: str | None
    display_name: str = ""
    email: str = ""
    profile: UserProfile = field(default_factory=UserProfile)
    role: str = ""
    preferences: JsonObject = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class User:
    id: str
    display_name: str
    email: str
    profile: UserProfile
    role: str
    preferences: JsonObject
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class UserPatch:
    """The fields an update changes; None leaves a field as it is."""

    display_name: str | None = None
    email: str | None = None
    role: str | None = None
    preferences: JsonObject | None = None
    picture_url: str | None = None
    status_message: str | None = None
    bio: str | None = None
    location: str | None = None
    website: str | None = None
    social_links: dict[str, str] | None = None


@dataclass(slots=True, kw_only=True)
class ClientInfo:
    ip_address: str = ""
    user_agent: str = ""
    device: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSession:
    id: str | None
    user_id: str = ""
    title: str = ""
    metadata: JsonObject = field(default_factory=dict)
    client_info: ClientInfo = field(default_factory=ClientInfo)
    app: str = ""
    state: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopedStateDelta:
    set: JsonObject = field(default_factory=dict)
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)

    def applied_to(self, state: JsonObject) -> JsonObject:
        changed = {key: value for key, value in state.items() if key not in self.remove}
        changed.update(self.set)
        return changed


@dataclass(frozen=True, slots=True, kw_only=True)
class StateDelta:
    """A change to state at its three scopes: the session's own, its user's within its app, and
    its app's."""

    session: ScopedStateDelta = field(default_factory=ScopedStateDelta)
    user: ScopedStateDelta = field(default_factory=ScopedStateDelta)
    app: ScopedStateDelta = field(default_factory=ScopedStateDelta)

    def __bool__(self) -> bool:
        return bool(self.session or self.user or self.app)


NO_STATE_DELTA = StateDelta()


@dataclass(slots=True, kw_only=True)
class UserState:
    app: str
    user_id: str
    state: JsonObject
    update_time: datetime | None


@dataclass(slots=True, kw_only=True)
class Session:
    id: str
    user_id: str
    title: str
    metadata: JsonObject
    client_info: ClientInfo
    create_time: datetime
    update_time: datetime
    end_time: datetime | None
    message_count: int
    last_message_time: datetime | None
    last_seq: int
    app: str
    state: JsonObject
    user_state: JsonObject
    app_state: JsonObject
    last_event_time: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPatch:
    title: str | None = None
    metadata: JsonObject | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    device: str | None = None


class Role(enum.StrEnum):
    """Stored as these lower-case words, the vocabulary every chat API shares."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(slots=True, kw_only=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True, kw_only=True)
class Attachment:
    name: str = ""
    mime_type: str = ""
    uri: str = ""
    size_bytes: int = 0
    metadata: JsonObject = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Citation:
    uri: str = ""
    title: str = ""
    snippet: str = ""
    start_index: int = 0
    end_index: int = 0
    metadata: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    id: str | None
    role: Role
    content: str = ""
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    invocation_id: str = ""
    thread_id: str = ""
    reply_to: str = ""
    chapter: str = ""
    attachments: tuple[Attachment, ...] = ()
    citations: tuple[Citation, ...] = ()
    metadata: JsonObject = field(default_factory=dict)
    user_id: str = ""
    event_time: datetime | None = None  # the client's own time of the event
    payload: bytes = b""  # the client's own form of the item, kept byte for byte
    payload_type: str = ""  # its media type
    # Its size in the API's encoding once stored, so reads can keep responses within a byte budget.
    size_bytes: int = 0
    # Its fields but id, session_id, seq and create_time, in the API's encoding: stored (after
    # EncodeAssigned's, framed by EncodeEntry) so that a read hands them out as they are; opaque
    # below the API. Empty: not encoded.
    encoded: bytes = b""


# The API's encoding of what the server assigns a message as it is stored (its id, session_id and
# create_time), which the store keeps before NewMessage.encoded: together they hold every field
# of the message but its seq.
EncodeAssigned = Callable[[str, str, datetime], bytes]
# A stored message as history reads hand it out, from the encoding of every field but its seq
# (EncodeAssigned's, then NewMessage.encoded) and its seq: an entry of a response's repeated
# messages field numbered 1 (its tag and length, then the message's fields).
EncodeEntry = Callable[[bytes, int], bytes]


@dataclass(frozen=True, slots=True)
class MessageEncoding:
    """The API's encoding of stored messages, handed to the store (which knows no protobuf)."""

    assigned: EncodeAssigned
    entry: EncodeEntry


@dataclass(slots=True, kw_only=True)
class Message:
    id: str
    session_id: str
    seq: int
    role: Role
    content: str
    name: str
    tool_calls: tuple[ToolCall, ...]
    tool_call_id: str
    invocation_id: str
    thread_id: str
    reply_to: str
    chapter: str
    attachments: tuple[Attachment, ...]
    citations: tuple[Citation, ...]
    metadata: JsonObject
    user_id: str
    create_time: datetime
    event_time: datetime | None = None
    payload: bytes = b""
    payload_type: str = ""


@dataclass(slots=True)
class EncodedMessage:
    """A stored message as a read returns it when its append encoded it: `entry` as EncodeEntry
    made it, ready to send."""

    seq: int
    entry: bytes


# What reads of history return: encoded when the append encoded it (the API's appends do), else
# field by field (rows from before encodings were stored, and appends from below the API).
StoredMessage = Message | EncodedMessage


class EncodedMessages(Sequence[EncodedMessage]):
    """Messages read together, each with its entry, kept as their seqs and entries: a response
    joins the entries, and an EncodedMessage is made only for one that is asked for (an object
    per message was a large part of a stream's cost)."""

    __slots__ = ("entries", "seqs")

    def __init__(self, seqs: list[int], entries: list[bytes]) -> None:
        self.seqs = seqs
        self.entries = entries

    def __len__(self) -> int:
        return len(self.seqs)

    @overload
    def __getitem__(self, index: int) -> EncodedMessage: ...

    @overload
    def __getitem__(self, index: slice) -> EncodedMessages: ...

    def __getitem__(self, index: int | slice) -> EncodedMessage | EncodedMessages:
        if isinstance(index, slice):
            return EncodedMessages(self.seqs[index], self.entries[index])
        return EncodedMessage(self.seqs[index], self.entries[index])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedMessages(seqs={self.seqs!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFilter:
    """Conditions a listed message must meet; empty values do not filter."""

    chapter: str = ""
    thread_id: str = ""
    invocation_id: str = ""
    role: Role | None = None
    after_seq: int = 0
    min_event_time: datetime | None = None  # event_time at or after it (and not unset)


@dataclass(slots=True, kw_only=True)
class ContextWindow:
    """A session with its contexts and newest messages, read at one moment."""

    session: Session
    contexts: list[Context]
    messages: Sequence[StoredMessage]
    has_earlier_messages: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDeletion:
    """A message deleted from a session: its deletion's number in that session (1, 2, 3, ...)."""

    number: int
    message_id: str
    seq: int
    delete_time: datetime


@dataclass(slots=True, kw_only=True)
class HistoryStep:
    """What a watcher of a session reads at one moment after its position: the session (None
    once deleted), the next messages after `position`, and deletions after `after_deletion`."""

    session: Session | None
    messages: Sequence[StoredMessage]
    more_messages: bool
    deletions: list[MessageDeletion]
    more_deletions: bool
    last_deletion: int  # the session's newest deletion number


@dataclass(slots=True, kw_only=True)
class WatchEvent:
    """One event of a watch, exactly one of: the session (as the watch starts, and whenever it
    is updated or closed), messages, a deletion, the session's deletion, or a heartbeat. Each
    says where the watcher then stands: resuming from (last_seq, last_deletion) loses nothing."""

    last_seq: int
    last_deletion: int
    session: Session | None = None
    messages: Sequence[StoredMessage] = ()
    deletion: MessageDeletion | None = None
    deleted_session_id: str = ""
    heartbeat: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NewContext:
    id: str | None
    session_id: str
    type: str
    content: str = ""
    metadata: JsonObject = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Context:
    id: str
    session_id: str
    type: str
    content: str
    metadata: JsonObject
    create_time: datetime


@dataclass(slots=True, kw_only=True)
class Rating:
    id: str
    message_id: str
    user_id: str
    session_id: str
    value: int
    comment: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RatingFilter:
    message_id: str = ""
    session_id: str = ""
    user_id: str = ""


@dataclass(slots=True, kw_only=True)
class RatingSummary:
    count: int
    mean: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeCursor:
    """Keyset position in a list ordered by (create_time, id)."""

    time: datetime
    id: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paginated list: the items, and whether more follow them."""

    items: Sequence[T]
    has_more: bool
    total_size: int | None = None


def repeats(new: Any, stored: Any) -> bool:
    """Whether `new` (a NewUser, NewSession, NewContext or NewMessage with a client-chosen id)
    asks for exactly what `stored` already is: then a create or append that meets its own id is
    the retry of one that landed, and answers with the stored resource instead of
    ALREADY_EXISTS."""
    return all(
        getattr(stored, f.name) == getattr(new, f.name)
        for f in fields(new)
        if f.name not in _NOT_COMPARED
    )


_NOT_COMPARED = frozenset({"id", "size_bytes", "encoded"})
