"""OpenAI Agents SDK: parley as a session's memory (an agents.memory SessionABC).

    from parley_client import ParleyClient
    from parley_client.integrations.openai_agents import ParleySession

    session = ParleySession("conversation-42", ParleyClient("localhost:50051"))
    result = await Runner.run(agent, "Hello", session=session)

What maps to what:
- The session id is the parley session's id (kept as it is when it holds only letters, digits
  and - . _, else escaped), made on the first add_items; `user_id` and `app` are given to it then.
- Each item is one message: role, text, tool calls and tool results as any parley client reads
  them, and the item itself, as JSON, as its payload, so that it comes back equal.
- get_items(limit) is one GetContextWindow (or a paged read for more than 1,000 items);
  add_items one BatchAppendMessages (atomic); pop_item one PopMessage (atomic: concurrent pops
  never return the same item); clear_session one ClearMessages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session import SessionABC
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)

from parley_client import Message, NotFoundError, ParleyClient, Role, ToolCall, new_message
from parley_client.integrations import _fields, _ids

PAYLOAD_TYPE = "application/vnd.openai.agents.item+json"
_WINDOW = 1000  # the most one GetContextWindow returns
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ParleySession(SessionABC):
    """One conversation's items in a parley session."""

    def __init__(
        self,
        session_id: str,
        client: ParleyClient,
        *,
        user_id: str = "",
        app: str = "",
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
    ) -> None:
        """user_id (an existing parley user) and app are given to the session when it is made."""
        self.session_id = session_id
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(dict(session_settings))
            if isinstance(session_settings, Mapping)
            else session_settings
        )
        self._client = client
        self._parley_id = _ids.escape(session_id)
        self._user_id = user_id
        self._app = app

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        limit = resolve_session_limit(limit, self.session_settings)
        if limit is not None and limit <= 0:
            return []
        try:
            if limit is not None and limit <= _WINDOW:
                window = await self._client.get_context_window(self._parley_id, max_messages=limit)
                messages = list(window.messages)
            else:
                messages = [m async for m in self._client.iter_messages(self._parley_id)]
                messages = messages[-limit:] if limit else messages
        except NotFoundError:
            return []
        return [_item(m) for m in messages]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        messages = [_message(item) for item in items]
        try:
            await self._client.batch_append_messages(self._parley_id, messages)
        except NotFoundError:  # the first items: make the session, then append
            await self._client.create_session(
                id=self._parley_id, user_id=self._user_id, app=self._app
            )
            await self._client.batch_append_messages(self._parley_id, messages)

    async def pop_item(self) -> TResponseInputItem | None:
        try:
            popped = await self._client.pop_message(self._parley_id)
        except NotFoundError:
            return None
        return None if popped is None else _item(popped)

    async def clear_session(self) -> None:
        with contextlib.suppress(NotFoundError):
            await self._client.clear_messages(self._parley_id)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return ""


def _message(item: TResponseInputItem) -> Message:
    """The item as a parley message: the native fields as well as they map, and the item."""
    raw = cast(Mapping[str, Any], item)
    kind = raw.get("type", "message")
    fields: dict[str, Any] = {"role": _ROLES.get(raw.get("role", ""), "assistant")}
    if kind == "function_call":
        fields["tool_calls"] = [
            ToolCall(
                id=_fields.label(raw.get("call_id") or raw.get("id"), "call"),
                name=_fields.label(raw.get("name"), "tool"),
                arguments=_fields.text(str(raw.get("arguments", ""))),
            )
        ]
    elif kind == "function_call_output" and _fields.label(raw.get("call_id")):
        fields.update(
            role="tool",
            tool_call_id=_fields.label(raw["call_id"]),
            content=_fields.text(_text(raw.get("output"))),
        )
    else:
        fields["content"] = _fields.text(_text(raw.get("content")))
    return new_message(
        **fields,
        payload=json.dumps(item, separators=(",", ":")).encode(),
        payload_type=PAYLOAD_TYPE,
    )


def _item(message: Message) -> TResponseInputItem:
    """The stored item; a message another client wrote becomes the item it reads as."""
    if message.payload_type == PAYLOAD_TYPE:
        return cast(TResponseInputItem, json.loads(message.payload))
    role = {Role.ROLE_USER: "user", Role.ROLE_SYSTEM: "system"}.get(message.role, "assistant")
    return cast(TResponseInputItem, {"role": role, "content": message.content})


__all__ = ["PAYLOAD_TYPE", "ParleySession"]
