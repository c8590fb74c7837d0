"""The Google ADK adapter against the real server: every behaviour BaseSessionService promises,
and that a session written through it reads as an ordinary transcript."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from parley_client import ParleyClient, Role
from parley_client.integrations.adk import ParleySessionService


@pytest.fixture
def service(client: ParleyClient) -> ParleySessionService:
    return ParleySessionService(client)


def _event(author: str = "user", **fields: object) -> Event:
    return Event(invocation_id="inv", author=author, **fields)


async def test_create_get_list_delete(service: ParleySessionService) -> None:
    created = await service.create_session(
        app_name="my app", user_id="u:1", state={"k": "v", "app:a": 1, "user:u": 2, "temp:t": 3}
    )
    assert created.state == {"k": "v", "app:a": 1, "user:u": 2}
    got = await service.get_session(app_name="my app", user_id="u:1", session_id=created.id)
    assert got == created
    listed = (await service.list_sessions(app_name="my app", user_id="u:1")).sessions
    assert [(s.id, s.user_id, s.state) for s in listed] == [(created.id, "u:1", created.state)]
    await service.delete_session(app_name="my app", user_id="u:1", session_id=created.id)
    assert (
        await service.get_session(app_name="my app", user_id="u:1", session_id=created.id) is None
    )
    assert (await service.list_sessions(app_name="my app", user_id="nobody")).sessions == []


async def test_an_existing_id_is_already_exists(service: ParleySessionService) -> None:
    await service.create_session(app_name="a", user_id="u", session_id="s 1")
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name="a", user_id="u", session_id="s 1")
    # The same id under another user, or another app, is another session.
    other = await service.create_session(app_name="a", user_id="v", session_id="s 1")
    await service.append_event(other, _event())
    assert len((await service.get_session(app_name="a", user_id="u", session_id="s 1")).events) == 0  # type: ignore[union-attr]
    await service.create_session(app_name="b", user_id="u", session_id="s 1")


async def test_state_scopes(service: ParleySessionService) -> None:
    first = await service.create_session(app_name="app", user_id="u1", state={"app:k1": "v1"})
    await service.append_event(
        first,
        _event(
            actions=EventActions(state_delta={"app:k2": "v2", "user:k": 1, "s": 2, "temp:t": 3})
        ),
    )
    assert first.state == {"app:k1": "v1", "app:k2": "v2", "user:k": 1, "s": 2, "temp:t": 3}
    mine = await service.create_session(app_name="app", user_id="u1")
    assert mine.state == {"app:k1": "v1", "app:k2": "v2", "user:k": 1}
    theirs = await service.create_session(app_name="app", user_id="u2")
    assert theirs.state == {"app:k1": "v1", "app:k2": "v2"}
    again = await service.get_session(app_name="app", user_id="u1", session_id=first.id)
    assert again is not None
    assert again.state == {"app:k1": "v1", "app:k2": "v2", "user:k": 1, "s": 2}
    assert "temp:t" not in again.events[0].actions.state_delta
    assert await service.get_user_state(app_name="app", user_id="u1") == {"k": 1}
    assert await service.get_user_state(app_name="app", user_id="u2") == {}
    assert await service.get_user_state(app_name="other", user_id="u1") == {}
    everyone = (await service.list_sessions(app_name="app")).sessions
    assert {s.id for s in everyone} == {first.id, mine.id, theirs.id}


async def test_events_come_back_exactly_and_filtered(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    content = types.Content(
        role="user", parts=[types.Part.from_bytes(data=b"\x00png", mime_type="image/png")]
    )
    rich = _event(
        content=content,
        timestamp=1700000000.123,
        custom_metadata={"k": "v"},
        long_running_tool_ids={"t1"},
        actions=EventActions(transfer_to_agent="agent", escalate=True),
    )
    await service.append_event(session, rich)
    for n in range(2, 6):
        await service.append_event(session, _event(timestamp=1700000000.0 + n))
    got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert got == session
    assert got.last_update_time == pytest.approx(1700000005.0, abs=1e-6)

    async def timestamps(config: GetSessionConfig) -> list[float]:
        found = await service.get_session(
            app_name="app", user_id="u", session_id=session.id, config=config
        )
        assert found is not None
        return [e.timestamp for e in found.events]

    assert await timestamps(GetSessionConfig(num_recent_events=0)) == []
    assert await timestamps(GetSessionConfig(num_recent_events=2)) == [1700000004.0, 1700000005.0]
    assert await timestamps(GetSessionConfig(after_timestamp=1700000004.0)) == [
        1700000004.0,
        1700000005.0,
    ]
    assert await timestamps(
        GetSessionConfig(after_timestamp=1700000003.0, num_recent_events=2)
    ) == [1700000004.0, 1700000005.0]


async def test_partial_events_are_not_stored(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    await service.append_event(session, _event(partial=True))
    stored = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert stored is not None
    assert stored.events == []
    assert session.events == []


async def test_a_stale_session_object_is_refused(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    for round_ in range(5):
        latest = await service.get_session(app_name="app", user_id="u", session_id=session.id)
        assert latest is not None
        copies = [latest.model_copy(deep=True) for _ in range(2)]
        results = await asyncio.gather(
            *(
                service.append_event(
                    copy,
                    _event(actions=EventActions(state_delta={f"k{round_}": n})),
                )
                for n, copy in enumerate(copies)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], ValueError)
        assert "modified in storage" in str(errors[0])
    final = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert final is not None
    assert len(final.events) == 5
    assert all(f"k{n}" in final.state for n in range(5))


async def test_last_update_time_follows_the_event(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    assert session.last_update_time <= time.time()
    stamp = session.last_update_time + 10
    await service.append_event(session, _event(timestamp=stamp))
    assert session.last_update_time == pytest.approx(stamp, abs=1e-6)
    got = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert got is not None
    assert got.last_update_time == pytest.approx(stamp, abs=1e-6)


async def test_an_adk_session_reads_as_a_transcript(
    service: ParleySessionService, client: ParleyClient
) -> None:
    session = await service.create_session(app_name="travel", user_id="ada", session_id="trip")
    call = types.FunctionCall(id="c1", name="book", args={"city": "Oslo"})
    answer = types.FunctionResponse(id="c1", name="book", response={"ok": True})
    for event in (
        _event(content=types.Content(role="user", parts=[types.Part(text="Book Oslo")])),
        _event(
            "planner", content=types.Content(role="model", parts=[types.Part(function_call=call)])
        ),
        _event(
            "planner",
            content=types.Content(role="user", parts=[types.Part(function_response=answer)]),
        ),
        _event("planner", content=types.Content(role="model", parts=[types.Part(text="Booked.")])),
    ):
        await service.append_event(session, event)
    stored = await client.get_session("travel:ada:trip")
    assert (stored.app, stored.user_id) == ("travel", "ada")
    messages = (await client.list_messages("travel:ada:trip")).messages
    assert [(m.role, m.content, m.name) for m in messages] == [
        (Role.ROLE_USER, "Book Oslo", "user"),
        (Role.ROLE_ASSISTANT, "", "planner"),
        (Role.ROLE_TOOL, '{"ok": true}', "planner"),
        (Role.ROLE_ASSISTANT, "Booked.", "planner"),
    ]
    (tool_call,) = messages[1].tool_calls
    assert (tool_call.id, tool_call.name, tool_call.arguments) == ("c1", "book", '{"city": "Oslo"}')
    assert messages[2].tool_call_id == "c1"
    again = await service.get_session(app_name="travel", user_id="ada", session_id="trip")
    assert again is not None
    assert again.events == session.events


async def test_a_redelivered_event_is_stored_once(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    event = _event(actions=EventActions(state_delta={"counter": 1}))
    await service.append_event(session, event)
    stale = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    await service.append_event(session, event.model_copy(deep=True))
    stored = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert stored is not None
    assert [e.id for e in stored.events] == [event.id]
    assert stored.state == {"counter": 1}
    assert stale == stored


async def test_distinct_events_with_one_id_are_both_kept(service: ParleySessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    await service.append_event(session, Event(id="same", invocation_id="a", author="user"))
    await service.append_event(session, Event(id="same", invocation_id="b", author="agent"))
    stored = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert stored is not None
    assert [(e.id, e.author) for e in stored.events] == [("same", "user"), ("same", "agent")]


async def test_events_parley_cannot_hold_natively_are_kept_whole(
    service: ParleySessionService,
) -> None:
    session = await service.create_session(app_name="app", user_id="u")
    call = types.FunctionCall(name=None, args={"x": "\x00"})
    for event in (
        _event("a" * 300, content=types.Content(role="user", parts=[types.Part(text="\x00")])),
        _event(content=types.Content(role="model", parts=[types.Part(function_call=call)])),
    ):
        await service.append_event(session, event)
    stored = await service.get_session(app_name="app", user_id="u", session_id=session.id)
    assert stored is not None
    assert stored.events == session.events
