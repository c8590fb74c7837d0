"""LangChain: parley as a chat message history (a langchain_core BaseChatMessageHistory).

    from parley_client import ParleyClient, SyncParleyClient
    from parley_client.integrations.langchain import ParleyChatMessageHistory

    history = ParleyChatMessageHistory(
        "conversation-42",
        client=SyncParleyClient("localhost:50051"),  # for messages, add_messages, clear
        async_client=ParleyClient("localhost:50051"),  # for aget_messages, aadd_messages, aclear
    )

What maps to what:
- The session id is the parley session's id (kept as it is when it holds only letters, digits
  and - . _, else escaped), made on the first add; `user_id` and `app` are given to it then.
- Each message is one parley message: role, text, tool calls and tool results as any parley
  client reads them, and LangChain's own dict of it (message_to_dict) as its payload, so it comes
  back equal, with its id, additional_kwargs and response_metadata.
- messages / aget_messages read the history in pages of 1,000; add_messages / aadd_messages are
  one BatchAppendMessages per 1,000 messages (all of them or none); clear / aclear are one
  ClearMessages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)

from parley_client import (
    Message,
    NotFoundError,
    ParleyClient,
    Role,
    SyncParleyClient,
    ToolCall,
    new_message,
)
from parley_client.integrations import _fields, _ids

PAYLOAD_TYPE = "application/vnd.langchain.message+json"
_BATCH = 1000  # the most messages one BatchAppendMessages takes


class ParleyChatMessageHistory(BaseChatMessageHistory):
    """One conversation's messages in a parley session."""

    def __init__(
        self,
        session_id: str,
        *,
        client: SyncParleyClient | None = None,
        async_client: ParleyClient | None = None,
        user_id: str = "",
        app: str = "",
    ) -> None:
        """client serves the sync methods, async_client the async ones; give the ones you use.
        user_id (an existing parley user) and app are given to the session when it is made."""
        if client is None and async_client is None:
            raise ValueError(
                "give client (a SyncParleyClient), async_client (a ParleyClient), or both"
            )
        self.session_id = session_id
        self._client = client
        self._async_client = async_client
        self._parley_id = _ids.escape(session_id)
        self._user_id = user_id
        self._app = app

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        try:
            stored = list(self._sync().iter_messages(self._parley_id, page_size=_BATCH))
        except NotFoundError:
            return []
        return _from_parley(stored)

    async def aget_messages(self) -> list[BaseMessage]:
        client = self._async()
        try:
            stored = [m async for m in client.iter_messages(self._parley_id, page_size=_BATCH)]
        except NotFoundError:
            return []
        return _from_parley(stored)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        client = self._sync()
        for batch in _batches(messages):
            try:
                client.batch_append_messages(self._parley_id, batch)
            except NotFoundError:  # the first messages: make the session, then append
                client.create_session(id=self._parley_id, user_id=self._user_id, app=self._app)
                client.batch_append_messages(self._parley_id, batch)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        client = self._async()
        for batch in _batches(messages):
            try:
                await client.batch_append_messages(self._parley_id, batch)
            except NotFoundError:
                await client.create_session(
                    id=self._parley_id, user_id=self._user_id, app=self._app
                )
                await client.batch_append_messages(self._parley_id, batch)

    def clear(self) -> None:
        with contextlib.suppress(NotFoundError):
            self._sync().clear_messages(self._parley_id)

    async def aclear(self) -> None:
        with contextlib.suppress(NotFoundError):
            await self._async().clear_messages(self._parley_id)

    def _sync(self) -> SyncParleyClient:
        if self._client is None:
            raise RuntimeError("this history has no client (a SyncParleyClient) for sync calls")
        return self._client

    def _async(self) -> ParleyClient:
        if self._async_client is None:
            raise RuntimeError("this history has no async_client (a ParleyClient) for async calls")
        return self._async_client


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        block.get("text", "") if isinstance(block, dict) else str(block) for block in content
    )


def _batches(messages: Sequence[BaseMessage]) -> Iterator[list[Message]]:
    """The messages as parley messages, as many at a time as one BatchAppendMessages takes."""
    for start in range(0, len(messages), _BATCH):
        yield [_to_parley(message) for message in messages[start : start + _BATCH]]


def _to_parley(message: BaseMessage) -> Message:
    """The message as a parley message: the native fields as well as they map, and LangChain's
    own dict of it."""
    fields: dict[str, Any] = {
        "role": "assistant",
        "content": _fields.text(_text(message.content)),
    }
    if isinstance(message, HumanMessage):
        fields["role"] = "user"
    elif isinstance(message, SystemMessage):
        fields["role"] = "system"
    elif isinstance(message, ToolMessage) and _fields.label(message.tool_call_id):
        fields.update(role="tool", tool_call_id=_fields.label(message.tool_call_id))
    elif isinstance(message, AIMessage) and message.tool_calls:
        fields["tool_calls"] = [
            ToolCall(
                id=_fields.label(call["id"], f"call-{index}"),
                name=_fields.label(call["name"], "tool"),
                arguments=_fields.text(json.dumps(call["args"])),
            )
            for index, call in enumerate(message.tool_calls)
        ]
    return new_message(
        **fields,
        name=_fields.label(message.name),
        payload=json.dumps(message_to_dict(message), separators=(",", ":")).encode(),
        payload_type=PAYLOAD_TYPE,
    )


def _from_parley(stored: list[Message]) -> list[BaseMessage]:
    """The stored messages; one another client wrote becomes the message it reads as."""
    result: list[BaseMessage] = []
    for message in stored:
        if message.payload_type == PAYLOAD_TYPE:
            result.extend(messages_from_dict([json.loads(message.payload)]))
        elif message.role == Role.ROLE_USER:
            result.append(HumanMessage(content=message.content, id=message.id))
        elif message.role == Role.ROLE_SYSTEM:
            result.append(SystemMessage(content=message.content, id=message.id))
        elif message.role == Role.ROLE_TOOL:
            result.append(
                ToolMessage(
                    content=message.content, tool_call_id=message.tool_call_id, id=message.id
                )
            )
        else:
            result.append(AIMessage(content=message.content, id=message.id))
    return result


__all__ = ["PAYLOAD_TYPE", "ParleyChatMessageHistory"]
