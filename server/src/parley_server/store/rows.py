"""Rows -> domain objects, and the JSON columns of messages: the one place that knows both the
tables' columns and the domain's fields (and about what the objects read take in memory).

Every mapper takes any mapping by column name: SQLAlchemy's RowMapping, asyncpg's Record (whose
ids are UUID objects, hence the str()), or a dict of inserted values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from parley_server.domain import (
    Attachment,
    Citation,
    ClientInfo,
    Context,
    Message,
    Rating,
    Role,
    Session,
    ToolCall,
    User,
    UserProfile,
)
from parley_server.identity import ApiKey
from parley_server.identity import Role as PrincipalRole

Row = Mapping[Any, Any]
_ROLES = {role.value: role for role in Role}


def _id_or_empty(value: Any) -> str:
    return str(value) if value else ""


def to_user(row: Row) -> User:
    return User(
        id=str(row["id"]),
        display_name=row["display_name"],
        email=row["email"] or "",
        profile=UserProfile(
            picture_url=row["picture_url"],
            status_message=row["status_message"],
            bio=row["bio"],
            location=row["location"],
            website=row["website"],
            social_links=row["social_links"],
        ),
        role=row["role"],
        preferences=row["preferences"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def to_session(row: Row) -> Session:
    return Session(
        id=str(row["id"]),
        user_id=_id_or_empty(row["user_id"]),
        title=row["title"],
        metadata=row["metadata"],
        client_info=ClientInfo(
            ip_address=row["ip_address"], user_agent=row["user_agent"], device=row["device"]
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        end_time=row["end_time"],
        message_count=row["message_count"],
        last_message_time=row["last_message_time"],
        last_seq=row["last_seq"],
        app=row["app"],
        state=row["state"],
        user_state=row["user_state"] or {},
        app_state=row["app_state"] or {},
        last_event_time=row["last_event_time"],
    )


def to_message(row: Row) -> Message:
    tool_calls, attachments, citations = row["tool_calls"], row["attachments"], row["citations"]
    return Message(
        id=str(row["id"]),
        session_id=str(row["session_id"]),
        seq=row["seq"],
        role=_ROLES[row["role"]],
        content=row["content"],
        name=row["name"],
        tool_calls=tuple(ToolCall(**c) for c in tool_calls) if tool_calls else (),
        tool_call_id=row["tool_call_id"],
        invocation_id=row["invocation_id"],
        thread_id=row["thread_id"],
        reply_to=_id_or_empty(row["reply_to"]),
        chapter=row["chapter"],
        attachments=tuple(Attachment(**a) for a in attachments) if attachments else (),
        citations=tuple(Citation(**c) for c in citations) if citations else (),
        metadata=row["metadata"] or {},
        user_id=_id_or_empty(row["user_id"]),
        create_time=row["create_time"],
        event_time=row["event_time"],
        payload=bytes(row["payload"] or b""),
        payload_type=row["payload_type"],
    )


def to_context(row: Row) -> Context:
    return Context(
        id=str(row["id"]),
        session_id=str(row["session_id"]),
        type=row["type"],
        content=row["content"],
        metadata=row["metadata"],
        create_time=row["create_time"],
    )


def to_rating(row: Row) -> Rating:
    return Rating(
        id=str(row["id"]),
        message_id=str(row["message_id"]),
        user_id=str(row["user_id"]),
        session_id=str(row["session_id"]),
        value=row["value"],
        comment=row["comment"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]] | None:
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls] or None


def attachments_json(items: Sequence[Attachment]) -> list[dict[str, Any]] | None:
    return [
        {
            "name": a.name,
            "mime_type": a.mime_type,
            "uri": a.uri,
            "size_bytes": a.size_bytes,
            "metadata": a.metadata,
        }
        for a in items
    ] or None


def citations_json(items: Sequence[Citation]) -> list[dict[str, Any]] | None:
    return [
        {
            "uri": c.uri,
            "title": c.title,
            "snippet": c.snippet,
            "start_index": c.start_index,
            "end_index": c.end_index,
            "metadata": c.metadata,
        }
        for c in items
    ] or None


def to_api_key(row: Row) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        tenant=row["tenant_id"],
        role=PrincipalRole(row["role"]),
        user_id=_id_or_empty(row["user_id"]),
        display_name=row["display_name"],
        create_time=row["create_time"],
        last_used_time=row["last_used_time"],
        revoke_time=row["revoke_time"],
    )


# What read rows take in memory, about: for the history cache's capacity.
_MESSAGE_OVERHEAD_BYTES = 250  # a message's object and its user id
_CONTEXT_OVERHEAD_BYTES = 600  # a context's object, strings and metadata beyond its content
_SESSION_OVERHEAD_BYTES = 2048  # a session's object beyond its metadata and states


def memory_of_messages(sizes: Sequence[int]) -> int:
    """Of history messages whose size_bytes (which count their encoding) are `sizes`."""
    return _MESSAGE_OVERHEAD_BYTES * len(sizes) + sum(sizes)


def memory_of_contexts(rows: Sequence[Row]) -> int:
    return sum(_CONTEXT_OVERHEAD_BYTES + len(row["content"]) for row in rows)


def memory_of_session(session: Session) -> int:
    shown = [session.metadata, session.state, session.user_state, session.app_state]
    return _SESSION_OVERHEAD_BYTES + 2 * len(json.dumps(shown, default=str))
