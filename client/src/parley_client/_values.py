"""What both clients share: call options, and building requests' values (roles, structs, ids,
messages, state deltas, timestamps)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias, TypedDict

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from parley_client._gen.parley.v1.message_pb2 import (
    Attachment,
    Citation,
    Message,
    Role,
    ToolCall,
)
from parley_client._gen.parley.v1.session_pb2 import (
    ScopedStateDelta,
    Session,
    StateDelta,
)
from parley_client._retry import DEFAULT_RETRY, RetryPolicy, Safety

RoleLike: TypeAlias = "Role.ValueType | str"  # Role.ROLE_USER, "user", "ROLE_USER"

DEFAULT_TIMEOUT = 30.0


class CallOptions(TypedDict, total=False):
    """Per-call options every method takes as keywords."""

    timeout: float | None  # seconds per attempt; None waits forever; absent: default_timeout
    call_metadata: Mapping[str, str]  # gRPC metadata for this call, after the client's own
    # Absent or True: the default RetryPolicy where repeating the call is safe (every call but a
    # delete without allow_missing); a RetryPolicy of your own; False: one attempt only.
    retry: RetryPolicy | bool


def to_role(value: RoleLike) -> Role.ValueType:
    """A Role from Role.ROLE_USER, "user", "USER" or "ROLE_USER"."""
    if isinstance(value, int):
        return value
    name = value.strip().upper()
    try:
        return Role.Value(name if name.startswith("ROLE_") else f"ROLE_{name}")
    except ValueError:
        choices = ", ".join(n.removeprefix("ROLE_").lower() for n in Role.keys()[1:])
        raise ValueError(f"unknown role {value!r}; use one of {choices}") from None


def struct(value: Mapping[str, Any] | None) -> Struct | None:
    """A google.protobuf.Struct holding a JSON-like mapping (numbers become floats)."""
    if value is None:
        return None
    result = Struct()
    result.update(value)
    return result


def new_id() -> str:
    """A fresh id for a resource the caller creates (a random UUID)."""
    return str(uuid.uuid4())


def new_message(
    *,
    role: RoleLike,
    content: str = "",
    id: str = "",
    name: str = "",
    tool_calls: Sequence[ToolCall] = (),
    tool_call_id: str = "",
    invocation_id: str = "",
    thread_id: str = "",
    reply_to: str = "",
    chapter: str = "",
    attachments: Sequence[Attachment] = (),
    citations: Sequence[Citation] = (),
    metadata: Mapping[str, Any] | None = None,
    user_id: str = "",
    event_time: datetime | None = None,
    payload: bytes = b"",
    payload_type: str = "",
) -> Message:
    """A Message to append, with a fresh id unless given one (so a retried append cannot store it
    twice); ToolCall.arguments is JSON text, kept byte for byte. event_time is your own time of
    the event (a naive datetime is taken as UTC), kept to the microsecond. payload is your own
    form of the item, kept byte for byte, with its media type in payload_type."""
    return Message(
        id=id or new_id(),
        role=to_role(role),
        content=content,
        name=name,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        invocation_id=invocation_id,
        thread_id=thread_id,
        reply_to=reply_to,
        chapter=chapter,
        attachments=attachments,
        citations=citations,
        metadata=struct(metadata),
        user_id=user_id,
        event_time=timestamp(event_time),
        payload=payload,
        payload_type=payload_type,
    )


def state_delta(
    session: Mapping[str, Any] | None = None,
    user: Mapping[str, Any] | None = None,
    app: Mapping[str, Any] | None = None,
    *,
    remove_session: Sequence[str] = (),
    remove_user: Sequence[str] = (),
    remove_app: Sequence[str] = (),
) -> StateDelta:
    """A StateDelta: keys to set (JSON values; None is stored as null) and keys to remove, in the
    session's own state, its user's state within its app, and its app's state."""
    return StateDelta(
        session=ScopedStateDelta(set=struct(session), remove=remove_session),
        user=ScopedStateDelta(set=struct(user), remove=remove_user),
        app=ScopedStateDelta(set=struct(app), remove=remove_app),
    )


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp of an aware datetime (a naive one is taken as UTC)."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def same_session(before: Session, after: Session) -> bool:
    """Equal but for what appends and deletes change (counts, last seq, times)."""
    changing = ("message_count", "last_seq", "update_time", "last_message_time")
    first, second = Session(), Session()
    first.CopyFrom(before)
    second.CopyFrom(after)
    for name in changing:
        first.ClearField(name)  # type: ignore[arg-type]
        second.ClearField(name)  # type: ignore[arg-type]
    return first == second


def retry_policy(retry: RetryPolicy | bool) -> RetryPolicy | None:
    if retry is True:
        return DEFAULT_RETRY
    return retry or None


def delete_safety(allow_missing: bool) -> Safety:
    # Without allow_missing, a repeat of a delete that did happen would report NOT_FOUND.
    return Safety.IDEMPOTENT if allow_missing else Safety.UNSAFE
