"""Google ADK: parley as the session store (a google.adk BaseSessionService).

    from parley_client import ParleyClient
    from parley_client.integrations.adk import ParleySessionService

    session_service = ParleySessionService(ParleyClient("localhost:50051"))
    runner = Runner(agent=agent, app_name="travel", session_service=session_service)

What maps to what:
- An ADK session (app_name, user_id, id) is the parley session "app:user:id" (each part kept as
  it is when it holds only letters, digits and - . _, else escaped) with app = app_name, owned by
  the parley user user_id, made on first use.
- State: "app:" keys are the session's app_state, "user:" keys its user_state, other keys its own
  state; "temp:" keys are never stored.
- An event is one message: role, text, tool calls and tool results as any parley client reads
  them, the event's timestamp as event_time, and the whole event, byte for byte, as its payload.
  append_event is one AppendMessage carrying the event's state delta, conditional on the seq the
  session object was read at: a stale session object is refused with StaleSessionError.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.sessions import Session
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.state import State
from google.genai import types
from google.protobuf.json_format import MessageToDict

from parley_client import (
    AbortedError,
    Message,
    NotFoundError,
    ParleyClient,
    Role,
    ToolCall,
    state_delta,
)
from parley_client import (
    AlreadyExistsError as ParleyAlreadyExistsError,
)
from parley_client import Session as ParleySession
from parley_client.integrations import _fields, _ids

try:
    from google.adk.errors._stale_session_error import StaleSessionError
except ImportError:  # releases before StaleSessionError refused stale sessions with ValueError
    StaleSessionError = ValueError  # type: ignore[misc,assignment]

PAYLOAD_TYPE = "application/vnd.google.adk.event+json"
_STALE = (
    "The session has been modified in storage since it was loaded. "
    "Please reload the session before appending more events."
)
# A window as large as parley serves at once; longer histories are read page by page.
_WINDOW = 1000


class ParleySessionService(BaseSessionService):
    """ADK sessions, state and events in parley."""

    def __init__(self, client: ParleyClient) -> None:
        self._client = client

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = session_id or str(uuid.uuid4())
        scoped = _split_state(state or {})
        request: dict[str, Any] = {
            "id": _session_id(app_name, user_id, session_id),
            "user_id": _ids.escape(user_id),
            "app": app_name,
            "state": scoped["session"],
            "state_delta": state_delta(user=scoped["user"], app=scoped["app"]),
            # Makes each create distinct, so that an id already taken is ALREADY_EXISTS (ADK's
            # rule), while a retry of this very call still finds its own session.
            "metadata": {"adk_create": secrets.token_hex(8)},
        }
        try:
            try:
                created = await self._client.create_session(**request)
            except NotFoundError:  # the user's first session: make the user, then the session
                await self._client.create_user(id=request["user_id"], display_name=user_id)
                created = await self._client.create_session(**request)
        except ParleyAlreadyExistsError:
            raise AlreadyExistsError(f"Session with id {session_id} already exists.") from None
        return _adk_session(created, app_name, user_id, session_id, [])

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        parley_id = _session_id(app_name, user_id, session_id)
        recent = config.num_recent_events if config else None
        after = config.after_timestamp if config else None
        since = datetime.fromtimestamp(after, UTC) if after else None
        try:
            if recent == 0:
                return _adk_session(
                    await self._client.get_session(parley_id), app_name, user_id, session_id, []
                )
            window = await self._client.get_context_window(
                parley_id, max_messages=min(recent or _WINDOW, _WINDOW), min_event_time=since
            )
            messages = list(window.messages)
            if window.has_earlier_messages and (recent is None or recent > _WINDOW):
                earlier = [
                    m
                    async for m in self._client.iter_messages(
                        parley_id, min_event_time=since, page_size=_WINDOW
                    )
                    if not messages or m.seq < messages[0].seq
                ]
                messages = (earlier + messages)[-recent:] if recent else earlier + messages
        except NotFoundError:
            return None
        events = [_event(m) for m in messages]
        return _adk_session(window.session, app_name, user_id, session_id, events)

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        parley_user = "" if user_id is None else _ids.escape(user_id)
        found: list[Session] = []
        try:
            async for stored in self._client.iter_sessions(
                app=app_name, user_id=parley_user, page_size=_WINDOW
            ):
                parts = _ids.split(stored.id)
                if len(parts) == 3 and parts[0] == app_name:  # not a session ADK made: skipped
                    found.append(_adk_session(stored, app_name, parts[1], parts[2], []))
        except NotFoundError:  # an unknown user has no sessions
            return ListSessionsResponse()
        found.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=found)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        await self._client.delete_session(
            _session_id(app_name, user_id, session_id), allow_missing=True
        )

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        try:
            stored = await self._client.get_user_state(app_name, _ids.escape(user_id))
        except NotFoundError:
            return {}
        return MessageToDict(stored.state)

    async def append_event(self, session: Session, event: Event) -> Event:
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        scoped = _split_state(event.actions.state_delta if event.actions else {})
        marker = session._storage_update_marker
        fields = _message_fields(event)
        append = functools.partial(
            self._client.append_message,
            _session_id(session.app_name, session.user_id, session.id),
            expected_last_seq=None if marker is None else int(marker),
            state_delta=state_delta(scoped["session"], scoped["user"], scoped["app"]),
        )
        try:
            try:
                # A re-delivered event (same id, same content) is stored once.
                stored = await append(**fields)
            except ParleyAlreadyExistsError:  # another event with this id: kept all the same
                stored = await append(**{**fields, "id": str(uuid.uuid4())})
        except AbortedError as error:
            if error.reason == "LAST_SEQ_MISMATCH":
                raise StaleSessionError(_STALE) from None
            raise
        session._storage_update_marker = str(stored.seq)
        session.last_update_time = event.timestamp
        return self._commit_event_to_session(session, event)


def _session_id(app_name: str, user_id: str, session_id: str) -> str:
    return _ids.join(app_name, user_id, session_id)


def _split_state(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """ADK's prefixed keys by scope, JSON-safe (what JSON cannot hold is kept as its text)."""
    scoped: dict[str, dict[str, Any]] = {"app": {}, "user": {}, "session": {}}
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            scoped["app"][key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            scoped["user"][key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            scoped["session"][key] = value
    return {scope: json.loads(json.dumps(values, default=str)) for scope, values in scoped.items()}


def _adk_session(
    stored: ParleySession, app_name: str, user_id: str, session_id: str, events: list[Event]
) -> Session:
    state = MessageToDict(stored.state)
    state.update({State.APP_PREFIX + k: v for k, v in MessageToDict(stored.app_state).items()})
    state.update({State.USER_PREFIX + k: v for k, v in MessageToDict(stored.user_state).items()})
    moment = stored.last_event_time if stored.HasField("last_event_time") else stored.create_time
    session = Session(
        id=session_id,
        app_name=app_name,
        user_id=user_id,
        state=state,
        events=events,
        last_update_time=moment.ToDatetime(UTC).timestamp(),
    )
    session._storage_update_marker = str(stored.last_seq)
    return session


def _message_fields(event: Event) -> dict[str, Any]:
    """The event as a parley message: the native fields as well as they map, and the event."""
    parts = event.content.parts or [] if event.content else []
    text = "".join(part.text for part in parts if part.text and not part.thought)
    calls = [part.function_call for part in parts if part.function_call]
    results = [part.function_response for part in parts if part.function_response]
    fields: dict[str, Any] = {"role": "user" if event.author == "user" else "assistant"}
    if calls:  # tool calls come from the assistant in parley, whoever the event names
        fields["role"] = "assistant"
        fields["tool_calls"] = [
            ToolCall(
                id=_fields.label(call.id, f"call-{index}"),
                name=_fields.label(call.name, "tool"),
                arguments=_fields.text(json.dumps(call.args or {})),
            )
            for index, call in enumerate(calls)
        ]
    elif results and _fields.label(results[0].id):
        fields["role"] = "tool"
        fields["tool_call_id"] = _fields.label(results[0].id)
        text = json.dumps(results[0].response or {})
    return {
        **fields,
        "id": event.id if _is_uuid(event.id) else str(uuid.uuid5(uuid.NAMESPACE_URL, event.id)),
        "content": _fields.text(text),
        "name": _fields.label(event.author),
        "invocation_id": _fields.label(event.invocation_id),
        "event_time": datetime.fromtimestamp(event.timestamp, UTC),
        "payload": event.model_dump_json(exclude_none=True).encode(),
        "payload_type": PAYLOAD_TYPE,
    }


def _event(message: Message) -> Event:
    """The stored event; a message another client wrote becomes the event it reads as."""
    if message.payload_type == PAYLOAD_TYPE:
        return Event.model_validate_json(message.payload)
    moment = message.event_time if message.HasField("event_time") else message.create_time
    role = "user" if message.role == Role.ROLE_USER else "model"
    return Event(
        id=message.id,
        invocation_id=message.invocation_id,
        author="user" if role == "user" else (message.name or "model"),
        content=types.Content(role=role, parts=[types.Part(text=message.content)]),
        timestamp=moment.ToDatetime(UTC).timestamp(),
    )


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


__all__ = ["PAYLOAD_TYPE", "ParleySessionService"]
