"""proto <-> domain, at the edge only. Parsing validates as it goes and reports every bad field."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from parley_client._gen.parley.v1 import (
    admin_service_pb2,
    context_pb2,
    message_pb2,
    parley_service_pb2,
    rating_pb2,
    session_pb2,
    user_pb2,
)
from parley_server import domain
from parley_server.api.validate import LABEL_MAX_LENGTH, Violations
from parley_server.identity import ApiKey, Role

# --- domain -> proto ------------------------------------------------------------------------------
# Messages are built by assigning fields, only those that are set: with upb that is several times
# cheaper than the keyword constructor, and history is converted by the thousand.

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def _set_time(target: Timestamp, value: datetime) -> None:
    """Integer arithmetic: exact, and faster than Timestamp.FromDatetime."""
    target.seconds = (value - _EPOCH) // _SECOND
    target.nanos = value.microsecond * 1000  # the same in every zone: offsets are whole seconds


_MIN_SECONDS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _SECOND
_MAX_SECONDS = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH) // _SECOND


def time_of(stamp: Timestamp, field: str, v: Violations) -> datetime | None:
    """A Timestamp as an aware UTC datetime, to the microsecond (nanoseconds are cut)."""
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 10**9:
        v.add(field, "must be a valid time in the years 1 to 9999")
        return None
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def optional_time(owner: ProtoMessage, name: str, field: str, v: Violations) -> datetime | None:
    """owner's Timestamp field `name` as time_of reads it; None when it is not set."""
    return time_of(getattr(owner, name), field, v) if owner.HasField(name) else None


def _set_struct(target: Struct, value: Mapping[str, Any]) -> None:
    if value:
        target.update(value)


def user_pb(user: domain.User) -> user_pb2.User:
    result = user_pb2.User(
        id=user.id, display_name=user.display_name, email=user.email, role=user.role
    )
    profile, target = user.profile, result.profile
    target.picture_url = profile.picture_url
    target.status_message = profile.status_message
    target.bio = profile.bio
    target.location = profile.location
    target.website = profile.website
    target.social_links.update(profile.social_links)
    _set_struct(result.preferences, user.preferences)
    _set_time(result.create_time, user.create_time)
    _set_time(result.update_time, user.update_time)
    return result


def session_pb(session: domain.Session) -> session_pb2.Session:
    result = session_pb2.Session(
        id=session.id,
        user_id=session.user_id,
        title=session.title,
        message_count=session.message_count,
        last_seq=session.last_seq,
    )
    _set_struct(result.metadata, session.metadata)
    info = session.client_info
    result.client_info.ip_address = info.ip_address
    result.client_info.user_agent = info.user_agent
    result.client_info.device = info.device
    _set_time(result.create_time, session.create_time)
    _set_time(result.update_time, session.update_time)
    if session.end_time is not None:
        _set_time(result.end_time, session.end_time)
    if session.last_message_time is not None:
        _set_time(result.last_message_time, session.last_message_time)
    result.app = session.app
    _set_struct(result.state, session.state)
    _set_struct(result.user_state, session.user_state)
    _set_struct(result.app_state, session.app_state)
    if session.last_event_time is not None:
        _set_time(result.last_event_time, session.last_event_time)
    return result


def user_state_pb(state: domain.UserState) -> session_pb2.UserState:
    result = session_pb2.UserState(app=state.app, user_id=state.user_id)
    _set_struct(result.state, state.state)
    if state.update_time is not None:
        _set_time(result.update_time, state.update_time)
    return result


def _state_keys(keys: Iterable[str], field: str, v: Violations) -> None:
    for key in keys:
        if not key:
            v.add(field, "holds an empty key")
        elif len(key) > LABEL_MAX_LENGTH:
            v.add(field, f"holds a key of {len(key)} characters; at most {LABEL_MAX_LENGTH}")


def _scoped_state_delta(
    delta: session_pb2.ScopedStateDelta, prefix: str, v: Violations
) -> domain.ScopedStateDelta:
    values = struct_dict(delta.set)
    _state_keys(values, f"{prefix}.set", v)
    _state_keys(delta.remove, f"{prefix}.remove", v)
    if both := sorted(set(values) & set(delta.remove)):
        v.add(prefix, f"sets and removes the same key {both[0]!r}")
    return domain.ScopedStateDelta(set=values, remove=tuple(delta.remove))


def state_delta(delta: session_pb2.StateDelta, prefix: str, v: Violations) -> domain.StateDelta:
    if not delta.ByteSize():  # as on most appends; converting an empty one is not free
        return domain.NO_STATE_DELTA
    return domain.StateDelta(
        session=_scoped_state_delta(delta.session, f"{prefix}.session", v),
        user=_scoped_state_delta(delta.user, f"{prefix}.user", v),
        app=_scoped_state_delta(delta.app, f"{prefix}.app", v),
    )


_ROLE_TO_PB = {
    domain.Role.SYSTEM: message_pb2.ROLE_SYSTEM,
    domain.Role.USER: message_pb2.ROLE_USER,
    domain.Role.ASSISTANT: message_pb2.ROLE_ASSISTANT,
    domain.Role.TOOL: message_pb2.ROLE_TOOL,
}
_ROLE_FROM_PB = {number: role for role, number in _ROLE_TO_PB.items()}


def message_pb(message: domain.StoredMessage) -> message_pb2.Message:
    result = message_pb2.Message()
    _fill_message(result, message)
    return result


ResponseT = TypeVar("ResponseT", bound=ProtoMessage)


def with_messages(head: ResponseT, messages: Iterable[domain.StoredMessage]) -> ResponseT:
    """The encoding of response `head` with `messages` in its repeated field `messages`, typed
    as the response it stands for: the server's response serializer passes bytes through
    (api.interceptors). A stored entry goes out as it was kept (its tag replaced in a response
    whose messages field has another number): never parsed into objects and serialized again,
    which costs several times as much."""
    encoded = _message_entries(_messages_tag(head.DESCRIPTOR), messages)
    return cast(ResponseT, head.SerializeToString() + encoded)


def _message_entries(tag: bytes, messages: Iterable[domain.StoredMessage]) -> bytes:
    """`messages` as entries of the repeated field whose tag is `tag`."""
    retag = tag != _ENTRY_TAG
    if isinstance(messages, domain.EncodedMessages):  # as reads return them: no object each
        if retag:  # the stored tag (field 1) is one byte
            return b"".join([tag + entry[1:] for entry in messages.entries])
        return b"".join(messages.entries)
    parts: list[bytes] = []
    add = parts.append
    for message in messages:
        if isinstance(message, domain.EncodedMessage):
            if retag:  # the stored tag (field 1) is one byte
                add(tag)
                add(message.entry[1:])
            else:
                add(message.entry)
        else:  # stored without an encoding: built field by field
            encoded = message_pb(message).SerializeToString()
            parts += (tag, _varint(len(encoded)), encoded)
    return b"".join(parts)


@functools.cache
def _messages_tag(response: Descriptor) -> bytes:
    return _field_tag(response.fields_by_name["messages"].number, _LENGTH_DELIMITED)


_VARINT_TYPE, _LENGTH_DELIMITED = 0, 2


def _field_tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    if value < len(_SMALL_VARINTS):
        return _SMALL_VARINTS[value]
    return _encode_varint(value)


def _encode_varint(value: int) -> bytes:
    """A non-negative integer as protobuf's base-128 varint."""
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


_SMALL_VARINTS = [_encode_varint(value) for value in range(1 << 14)]  # every 1- and 2-byte one
_MESSAGE_FIELDS = message_pb2.Message.DESCRIPTOR.fields_by_name
_SEQ_TAG = _field_tag(_MESSAGE_FIELDS["seq"].number, _VARINT_TYPE)
# Most responses carry their messages in field 1: stored entries are framed for those, and
# retagged for the others.
_ENTRY_TAG = _field_tag(1, _LENGTH_DELIMITED)


def message_entry(encoded: bytes, seq: int) -> bytes:
    """domain.EncodeEntry. PostgreSQL's appends frame the same in SQL (store.appenders)."""
    seq_field = _SEQ_TAG + _varint(seq)
    return _ENTRY_TAG + _varint(len(encoded) + len(seq_field)) + encoded + seq_field


def _entry_fields(entry: bytes) -> bytes:
    """The message's fields in a stored entry: past its tag and length."""
    start = 2
    while entry[start - 1] & 0x80:
        start += 1
    return entry[start:]


def _fill_message(result: message_pb2.Message, message: domain.StoredMessage) -> None:
    # A stored encoding is parsed in C, as one call: a fraction of the cost of the fields'
    # assignment one by one.
    if isinstance(message, domain.EncodedMessage):
        result.MergeFromString(_entry_fields(message.entry))
    else:
        _fill_body(result, message)
        result.id = message.id
        result.session_id = message.session_id
        _set_time(result.create_time, message.create_time)
        result.seq = message.seq


def encoded_assigned(message_id: str, session_id: str, create_time: datetime) -> bytes:
    """domain.EncodeAssigned: what the store keeps before a message's encoded_body."""
    result = message_pb2.Message(id=message_id, session_id=session_id)
    _set_time(result.create_time, create_time)
    return result.SerializeToString()


def encoded_body(message: domain.NewMessage | domain.Message) -> bytes:
    """The encoding of a message's fields but those the server assigns: what an append keeps."""
    result = message_pb2.Message()
    _fill_body(result, message)
    return result.SerializeToString()


MESSAGE_ENCODING = domain.MessageEncoding(assigned=encoded_assigned, entry=message_entry)


def stored_entry(message: domain.Message) -> bytes:
    """The entry a stored message keeps, as an append of it would have stored it: what
    encode-history gives rows stored without one."""
    assigned = encoded_assigned(message.id, message.session_id, message.create_time)
    return message_entry(assigned + encoded_body(message), message.seq)


def _fill_body(result: message_pb2.Message, message: domain.Message | domain.NewMessage) -> None:
    """Every field but id, session_id, seq and create_time."""
    result.role = _ROLE_TO_PB[message.role]
    if message.content:
        result.content = message.content
    if message.name:
        result.name = message.name
    for call in message.tool_calls:
        added = result.tool_calls.add()
        added.id, added.name, added.arguments = call.id, call.name, call.arguments
    if message.tool_call_id:
        result.tool_call_id = message.tool_call_id
    if message.invocation_id:
        result.invocation_id = message.invocation_id
    if message.thread_id:
        result.thread_id = message.thread_id
    if message.reply_to:
        result.reply_to = message.reply_to
    if message.chapter:
        result.chapter = message.chapter
    for attachment in message.attachments:
        item = result.attachments.add(
            name=attachment.name,
            mime_type=attachment.mime_type,
            uri=attachment.uri,
            size_bytes=attachment.size_bytes,
        )
        _set_struct(item.metadata, attachment.metadata)
    for citation in message.citations:
        cited = result.citations.add(
            uri=citation.uri,
            title=citation.title,
            snippet=citation.snippet,
            start_index=citation.start_index,
            end_index=citation.end_index,
        )
        _set_struct(cited.metadata, citation.metadata)
    _set_struct(result.metadata, message.metadata)
    if message.event_time is not None:
        _set_time(result.event_time, message.event_time)
    if message.payload:
        result.payload = message.payload
        result.payload_type = message.payload_type
    if message.user_id:
        result.user_id = message.user_id


def context_pb(context: domain.Context) -> context_pb2.Context:
    result = context_pb2.Context(
        id=context.id, session_id=context.session_id, type=context.type, content=context.content
    )
    _set_struct(result.metadata, context.metadata)
    _set_time(result.create_time, context.create_time)
    return result


def rating_pb(rating: domain.Rating) -> rating_pb2.Rating:
    result = rating_pb2.Rating(
        id=rating.id,
        message_id=rating.message_id,
        user_id=rating.user_id,
        session_id=rating.session_id,
        value=rating.value,
        comment=rating.comment,
    )
    _set_time(result.create_time, rating.create_time)
    _set_time(result.update_time, rating.update_time)
    return result


# --- proto -> domain ------------------------------------------------------------------------------


def watch_event_pb(event: domain.WatchEvent) -> parley_service_pb2.WatchSessionResponse:
    result = parley_service_pb2.WatchSessionResponse(
        last_seq=event.last_seq, last_deletion=event.last_deletion
    )
    if event.messages:
        batch = cast(bytes, with_messages(parley_service_pb2.WatchedMessages(), event.messages))
        encoded = result.SerializeToString() + _WATCHED_TAG + _varint(len(batch)) + batch
        return cast(parley_service_pb2.WatchSessionResponse, encoded)  # as with_messages
    if event.session is not None:
        result.session.CopyFrom(session_pb(event.session))
    elif event.deletion is not None:
        gone = result.deleted_message
        gone.message_id = event.deletion.message_id
        gone.seq = event.deletion.seq
        _set_time(gone.delete_time, event.deletion.delete_time)
    elif event.deleted_session_id:
        result.deleted_session.session_id = event.deleted_session_id
    else:
        result.heartbeat.SetInParent()
    return result


_WATCHED_TAG = _messages_tag(parley_service_pb2.WatchSessionResponse.DESCRIPTOR)

_KEY_ROLE_TO_PB = {
    Role.ADMIN: admin_service_pb2.ApiKey.ROLE_ADMIN,
    Role.SERVICE: admin_service_pb2.ApiKey.ROLE_SERVICE,
    Role.USER: admin_service_pb2.ApiKey.ROLE_USER,
}
_KEY_ROLE_FROM_PB = {number: role for role, number in _KEY_ROLE_TO_PB.items()}
DISPLAY_NAME_MAX_LENGTH = 200


def api_key_pb(key: ApiKey) -> admin_service_pb2.ApiKey:
    result = admin_service_pb2.ApiKey(
        id=key.id,
        tenant=key.tenant,
        role=_KEY_ROLE_TO_PB[key.role],
        user_id=key.user_id,
        display_name=key.display_name,
    )
    _set_time(result.create_time, key.create_time)
    if key.last_used_time is not None:
        _set_time(result.last_used_time, key.last_used_time)
    if key.revoke_time is not None:
        _set_time(result.revoke_time, key.revoke_time)
    return result


@dataclass(frozen=True, slots=True)
class NewApiKey:
    role: Role
    user_id: str
    display_name: str


def new_api_key(key: admin_service_pb2.ApiKey, prefix: str, v: Violations) -> NewApiKey:
    role = _KEY_ROLE_FROM_PB.get(key.role)
    if role is None:
        v.add(f"{prefix}.role", "is required: ROLE_ADMIN, ROLE_SERVICE or ROLE_USER")
    user_id = v.resource_id(f"{prefix}.user_id", key.user_id, required=role is Role.USER)
    if key.user_id and role is not Role.USER:
        v.add(f"{prefix}.user_id", "is only for ROLE_USER keys; leave it empty")
    if len(key.display_name) > DISPLAY_NAME_MAX_LENGTH:
        v.add(
            f"{prefix}.display_name",
            f"is {len(key.display_name)} characters long; at most {DISPLAY_NAME_MAX_LENGTH}",
        )
    return NewApiKey(role or Role.SERVICE, user_id, key.display_name)


def struct_dict(struct: Struct) -> dict[str, Any]:
    if not struct.fields:  # as most are: MessageToDict costs microseconds even then
        return {}
    return json_format.MessageToDict(struct)


def role(value: int, field: str, violations: Violations) -> domain.Role | None:
    parsed: domain.Role | None = _ROLE_FROM_PB.get(value)  # type: ignore[call-overload]
    if parsed is None:
        choices = ", ".join(message_pb2.Role.Name(n) for n in _ROLE_FROM_PB)
        violations.add(field, f"is required: one of {choices}")
    return parsed


# A resource's writable fields, each with how to read and check it from the proto. Create reads all
# of them; Update reads the ones its field mask names. The patch attribute is the path's last part.
Extract = Callable[[Any, str, Violations], Any]


@dataclass(frozen=True)
class WritableFields:
    fields: Mapping[str, Extract]  # leaf path -> extractor
    groups: Mapping[str, tuple[str, ...]]  # message-typed path -> its leaf paths
    output_only: frozenset[str]
    immutable: frozenset[str] = frozenset()

    def read(
        self, resource: ProtoMessage, prefix: str, paths: Iterable[str], v: Violations
    ) -> dict[str, Any]:
        return {
            path.rsplit(".", 1)[-1]: self.fields[path](resource, f"{prefix}.{path}", v)
            for path in paths
        }

    def paths_for_update(
        self, resource: ProtoMessage, mask: FieldMask, prefix: str, v: Violations
    ) -> list[str]:
        """AIP-134: the leaf paths an update writes."""
        if not mask.paths:
            # No mask: every populated field, ignoring output-only and immutable ones.
            implied: list[str] = []
            for field, value in resource.ListFields():
                if field.name in self.groups:
                    implied.extend(f"{field.name}.{sub.name}" for sub, _ in value.ListFields())
                elif field.name in self.fields:
                    implied.append(field.name)
            return implied
        if "*" in mask.paths:
            if len(mask.paths) > 1:
                v.add("update_mask", '"*" replaces every field and cannot be combined with paths')
            return list(self.fields)
        paths: list[str] = []
        for path in mask.paths:
            if path in self.groups:
                paths.extend(self.groups[path])
            elif path in self.fields:
                paths.append(path)
            elif path in self.output_only:
                v.add("update_mask", f"{path!r} is output only and cannot be updated")
            elif path in self.immutable:
                v.add("update_mask", f"{path!r} cannot be changed after create")
            else:
                choices = ", ".join(sorted({*self.fields, *self.groups}))
                v.add("update_mask", f"unknown field {path!r} of {prefix}; updatable: {choices}")
        return list(dict.fromkeys(paths))


def _text(resource: Any, field: str, v: Violations) -> str:
    return getattr(resource, field.rsplit(".", 1)[-1])  # type: ignore[no-any-return]


def _nested_text(group: str) -> Extract:
    def extract(resource: Any, field: str, v: Violations) -> str:
        return getattr(getattr(resource, group), field.rsplit(".", 1)[-1])  # type: ignore[no-any-return]

    return extract


def _social_links(user: user_pb2.User, field: str, v: Violations) -> dict[str, str]:
    for network in user.profile.social_links:
        v.label(f"{field}[{network!r}]", network, required=True)
    return dict(user.profile.social_links)


_PROFILE_PATHS = tuple(
    f"profile.{name}"
    for name in ("picture_url", "status_message", "bio", "location", "website", "social_links")
)

USER_FIELDS = WritableFields(
    fields={
        "display_name": _text,
        "email": lambda u, f, v: v.email(f, u.email),
        "role": lambda u, f, v: v.label(f, u.role),
        "preferences": lambda u, f, v: struct_dict(u.preferences),
        **{path: _nested_text("profile") for path in _PROFILE_PATHS[:-1]},
        "profile.social_links": _social_links,
    },
    groups={"profile": _PROFILE_PATHS},
    output_only=frozenset({"id", "create_time", "update_time"}),
)

_CLIENT_INFO_PATHS = ("client_info.ip_address", "client_info.user_agent", "client_info.device")

SESSION_FIELDS = WritableFields(
    fields={
        "title": _text,
        "metadata": lambda s, f, v: struct_dict(s.metadata),
        "client_info.ip_address": lambda s, f, v: v.ip_address(f, s.client_info.ip_address),
        "client_info.user_agent": _nested_text("client_info"),
        "client_info.device": _nested_text("client_info"),
    },
    groups={"client_info": _CLIENT_INFO_PATHS},
    output_only=frozenset(
        {
            "id",
            "create_time",
            "update_time",
            "end_time",
            "message_count",
            "last_message_time",
            "last_seq",
            "user_state",
            "app_state",
            "last_event_time",
        }
    ),
    # State changes by deltas (UpdateSessionState), never by replacing it whole.
    immutable=frozenset({"user_id", "app", "state"}),
)


def new_user(user: user_pb2.User, prefix: str, v: Violations) -> domain.NewUser:
    user_id = v.resource_id(f"{prefix}.id", user.id, required=False)
    values = USER_FIELDS.read(user, prefix, USER_FIELDS.fields, v)
    profile_keys = [path.rsplit(".", 1)[-1] for path in _PROFILE_PATHS]
    profile = domain.UserProfile(**{key: values.pop(key) for key in profile_keys})
    return domain.NewUser(id=user_id or None, profile=profile, **values)


def user_patch(request_user: user_pb2.User, mask: FieldMask, v: Violations) -> domain.UserPatch:
    paths = USER_FIELDS.paths_for_update(request_user, mask, "user", v)
    return domain.UserPatch(**USER_FIELDS.read(request_user, "user", paths, v))


def new_session(session: session_pb2.Session, prefix: str, v: Violations) -> domain.NewSession:
    session_id = v.resource_id(f"{prefix}.id", session.id, required=False)
    user_id = v.resource_id(f"{prefix}.user_id", session.user_id, required=False)
    values = SESSION_FIELDS.read(session, prefix, SESSION_FIELDS.fields, v)
    info = domain.ClientInfo(
        ip_address=values.pop("ip_address"),
        user_agent=values.pop("user_agent"),
        device=values.pop("device"),
    )
    state = struct_dict(session.state)
    _state_keys(state, f"{prefix}.state", v)
    return domain.NewSession(
        id=session_id or None,
        user_id=user_id,
        client_info=info,
        app=v.label(f"{prefix}.app", session.app),
        state=state,
        **values,
    )


def session_patch(
    request_session: session_pb2.Session, mask: FieldMask, v: Violations
) -> domain.SessionPatch:
    paths = SESSION_FIELDS.paths_for_update(request_session, mask, "session", v)
    return domain.SessionPatch(**SESSION_FIELDS.read(request_session, "session", paths, v))


# What the server adds to a message it stores (id, session_id, seq, create_time) and its framing in
# a response's repeated field, at most.
SERVER_FIELDS_BYTES = 128


def new_message(
    message: message_pb2.Message, prefix: str, session_id: str, v: Violations
) -> domain.NewMessage:
    """Output-only fields (seq, create_time) are ignored; session_id may repeat the request's.
    The result is only meaningful when no violation was added."""
    if message.session_id and message.session_id.lower() != session_id:
        v.add(f"{prefix}.session_id", "differs from the request's session_id; leave it empty")
    parsed_role = role(message.role, f"{prefix}.role", v)
    tool_calls: list[domain.ToolCall] = []
    for index, call in enumerate(message.tool_calls):
        field = f"{prefix}.tool_calls[{index}]"
        v.label(f"{field}.name", call.name, required=True)
        v.label(f"{field}.id", call.id)
        tool_calls.append(domain.ToolCall(id=call.id, name=call.name, arguments=call.arguments))
    v.label(f"{prefix}.tool_call_id", message.tool_call_id)
    attachments = []
    for index, attachment in enumerate(message.attachments):
        if attachment.size_bytes < 0:
            v.add(f"{prefix}.attachments[{index}].size_bytes", "must not be negative")
        attachments.append(
            domain.Attachment(
                name=attachment.name,
                mime_type=attachment.mime_type,
                uri=attachment.uri,
                size_bytes=attachment.size_bytes,
                metadata=struct_dict(attachment.metadata),
            )
        )
    citations = []
    for index, citation in enumerate(message.citations):
        if citation.start_index < 0 or citation.end_index < citation.start_index:
            v.add(
                f"{prefix}.citations[{index}]",
                "needs 0 <= start_index <= end_index",
            )
        citations.append(
            domain.Citation(
                uri=citation.uri,
                title=citation.title,
                snippet=citation.snippet,
                start_index=citation.start_index,
                end_index=citation.end_index,
                metadata=struct_dict(citation.metadata),
            )
        )
    new = domain.NewMessage(
        id=v.uuid(f"{prefix}.id", message.id, required=False) or None,
        role=parsed_role or domain.Role.USER,
        content=message.content,
        name=v.label(f"{prefix}.name", message.name),
        tool_calls=tuple(tool_calls),
        tool_call_id=message.tool_call_id,
        invocation_id=v.label(f"{prefix}.invocation_id", message.invocation_id),
        thread_id=v.label(f"{prefix}.thread_id", message.thread_id),
        reply_to=v.uuid(f"{prefix}.reply_to", message.reply_to, required=False),
        chapter=v.label(f"{prefix}.chapter", message.chapter),
        attachments=tuple(attachments),
        citations=tuple(citations),
        metadata=struct_dict(message.metadata),
        user_id=v.resource_id(f"{prefix}.user_id", message.user_id, required=False),
        event_time=optional_time(message, "event_time", f"{prefix}.event_time", v),
        payload=message.payload,
        payload_type=_payload_type(message, prefix, v),
    )
    encoded = encoded_body(new)
    return dataclasses.replace(new, encoded=encoded, size_bytes=len(encoded) + SERVER_FIELDS_BYTES)


def _payload_type(message: message_pb2.Message, prefix: str, v: Violations) -> str:
    if message.payload and not message.payload_type:
        v.add(f"{prefix}.payload_type", 'is required with a payload, e.g. "application/json"')
    elif message.payload_type and not message.payload:
        v.add(f"{prefix}.payload_type", "is only for a payload; leave it empty without one")
    return v.label(f"{prefix}.payload_type", message.payload_type)


def new_context(context: context_pb2.Context, prefix: str, v: Violations) -> domain.NewContext:
    return domain.NewContext(
        id=v.uuid(f"{prefix}.id", context.id, required=False) or None,
        session_id=v.resource_id(f"{prefix}.session_id", context.session_id, required=True),
        type=v.label(f"{prefix}.type", context.type, required=True),
        content=context.content,
        metadata=struct_dict(context.metadata),
    )
