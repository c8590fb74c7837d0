from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime

from parley_server.domain import (
    NO_STATE_DELTA,
    ContextWindow,
    Message,
    MessageFilter,
    NewMessage,
    Page,
    Role,
    StateDelta,
    StoredMessage,
)
from parley_server.errors import FieldViolation, InvalidArgument
from parley_server.identity import Principal
from parley_server.services.access import (
    acting_for,
    audit,
    may_change_state,
    require_data_access,
)
from parley_server.services.sessions import SessionService
from parley_server.store import Store
from parley_server.tasks import abandon, run_to_end

MAX_BATCH_MESSAGES = 1000
STREAM_BATCH = 500  # messages per streamed batch at most (and at most the byte budget)


def message_violations(new: NewMessage, field: str) -> list[FieldViolation]:
    """What makes `new` no well-formed turn of a conversation: tool calls come only from the
    assistant, each with its own id; only a tool message answers a call, and it names the call."""
    found: list[FieldViolation] = []
    seen_call_ids: set[str] = set()
    for index, call in enumerate(new.tool_calls):
        if call.id and call.id in seen_call_ids:
            found.append(
                FieldViolation(
                    f"{field}.tool_calls[{index}].id",
                    f"repeats tool call id {call.id!r} of this message",
                )
            )
        seen_call_ids.add(call.id)
    if new.tool_calls and new.role is not Role.ASSISTANT:
        found.append(
            FieldViolation(f"{field}.tool_calls", "only ROLE_ASSISTANT messages carry tool calls")
        )
    if new.role is Role.TOOL and not new.tool_call_id:
        found.append(FieldViolation(f"{field}.tool_call_id", "is required"))
    elif new.tool_call_id and new.role is not Role.TOOL:
        found.append(
            FieldViolation(f"{field}.tool_call_id", "only ROLE_TOOL messages answer a tool call")
        )
    return found


def batch_violations(news: Sequence[NewMessage]) -> list[FieldViolation]:
    """What makes `news` no batch to append: its size, its messages, ids given twice."""
    violations: list[FieldViolation] = []
    if not 1 <= len(news) <= MAX_BATCH_MESSAGES:
        violations.append(
            FieldViolation(
                "messages", f"holds {len(news)} messages; send 1 to {MAX_BATCH_MESSAGES} per call"
            )
        )
    for index, new in enumerate(news):
        violations += message_violations(new, f"messages[{index}]")
    ids = [new.id for new in news if new.id]
    if len(ids) != len(set(ids)):
        violations.append(FieldViolation("messages", "two messages of the batch have the same id"))
    return violations


class MessageService:
    """Rule checks are also exported, so that the API can report a request's every problem,
    of form and of rule, in one answer."""

    def __init__(
        self, store: Store, sessions: SessionService, *, response_budget_bytes: int
    ) -> None:
        """response_budget_bytes: how much of a response its messages may fill; a page (or a
        stream's batch) ends early rather than pass it, though one message always goes out."""
        self._store = store
        self._sessions = sessions
        self._budget = response_budget_bytes

    async def append(
        self,
        caller: Principal,
        session_id: str,
        new: NewMessage,
        *,
        expected_last_seq: int | None = None,
        state_delta: StateDelta = NO_STATE_DELTA,
    ) -> Message:
        """With expected_last_seq, only if the session's last seq is that (else Aborted); with
        state_delta applied atomically with the append."""
        violations = message_violations(new, "message")
        if violations:
            raise InvalidArgument(violations)
        (message,) = await self._append(caller, session_id, [new], expected_last_seq, state_delta)
        return message

    async def append_batch(
        self,
        caller: Principal,
        session_id: str,
        news: Sequence[NewMessage],
        *,
        expected_last_seq: int | None = None,
        state_delta: StateDelta = NO_STATE_DELTA,
    ) -> list[Message]:
        """All of news or none, with consecutive seqs."""
        violations = batch_violations(news)
        if violations:
            raise InvalidArgument(violations)
        return await self._append(caller, session_id, news, expected_last_seq, state_delta)

    async def _append(
        self,
        caller: Principal,
        session_id: str,
        news: Sequence[NewMessage],
        expected_last_seq: int | None,
        state_delta: StateDelta,
    ) -> list[Message]:
        may_change_state(caller, state_delta)
        await self._sessions.require_visible(caller, session_id)
        for new in news:
            acting_for(caller, new.user_id)  # a user writes as itself (or as no one)
        return await self._store.messages.append(
            caller.scope,
            session_id,
            news,
            expected_last_seq=expected_last_seq,
            state_delta=state_delta,
        )

    async def get(self, caller: Principal, message_id: str) -> StoredMessage:
        require_data_access(caller)
        return await self._store.messages.get(caller.scope, message_id)

    async def list(
        self,
        caller: Principal,
        session_id: str,
        where: MessageFilter,
        *,
        position: int,
        limit: int,
        newest_first: bool,
    ) -> Page[StoredMessage]:
        await self._sessions.require_visible(caller, session_id)
        return await self._store.messages.list(
            caller.scope,
            session_id,
            where,
            position=position,
            limit=limit,
            max_bytes=self._budget,
            newest_first=newest_first,
        )

    async def stream(
        self, caller: Principal, session_id: str, where: MessageFilter
    ) -> AsyncGenerator[Sequence[StoredMessage], None]:
        """The matching messages in seq order, in batches that each fit a response."""
        await self._sessions.require_visible(caller, session_id)
        read = functools.partial(
            self._store.messages.list,
            caller.scope,
            session_id,
            where,
            limit=STREAM_BATCH,
            max_bytes=self._budget,
            count_total=False,
            # A whole history, read once: kept, it would push out every session's tail that
            # readers come back to, and grow the server by its size.
            cached=False,
        )
        # A stream is not a unary call, which the API runs to its end: its page reads are, one
        # by one, so a client leaving never cuts one short. Each batch's read starts before the
        # batch before it is handed out, so the database works while the server sends.
        reading = run_to_end(read(position=0))
        try:
            while True:
                page = await reading
                if page.has_more:
                    reading = run_to_end(read(position=page.items[-1].seq))
                    await asyncio.sleep(0)  # so that the read is sent before the batch is framed
                if page.items:
                    yield page.items
                if not page.has_more:
                    return
        finally:
            abandon(reading)

    async def context_window(
        self,
        caller: Principal,
        session_id: str,
        max_messages: int,
        *,
        min_event_time: datetime | None = None,
    ) -> ContextWindow:
        await self._sessions.require_visible(caller, session_id)
        return await self._store.messages.context_window(
            caller.scope,
            session_id,
            max_messages,
            max_bytes=self._budget,
            min_event_time=min_event_time,
        )

    async def delete(self, caller: Principal, message_id: str, *, allow_missing: bool) -> None:
        require_data_access(caller)
        await self._store.messages.delete(caller.scope, message_id, allow_missing=allow_missing)

    async def pop(self, caller: Principal, session_id: str) -> Message | None:
        """The session's newest message, removed; None if it has none."""
        await self._sessions.require_visible(caller, session_id)
        return await self._store.messages.pop(caller.scope, session_id)

    async def clear(self, caller: Principal, session_id: str) -> int:
        await self._sessions.require_visible(caller, session_id)
        cleared = await self._store.messages.clear(caller.scope, session_id)
        audit.info(
            "session history cleared: session=%s messages=%d by %s", session_id, cleared, caller
        )
        return cleared
