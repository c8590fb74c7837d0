"""What agent frameworks need of sessions: callers' own ids, an app namespace, state at three
scopes changed atomically (also with an append), and the client's clock of the last event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from parley_client import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
    new_message,
    state_delta,
)
from tests.factories import new_id


async def test_callers_own_ids_for_users_and_sessions(client: ParleyClient) -> None:
    user = await client.create_user(id="alice@example.com", display_name="Alice")
    session = await client.create_session(id="support-bot:alice:s~1", user_id=user.id)
    assert (user.id, session.id) == ("alice@example.com", "support-bot:alice:s~1")
    await client.append_message(session.id, role="user", content="hi")
    assert (await client.get_session(session.id)).last_seq == 1
    assert [s.id for s in (await client.list_sessions(user_id=user.id)).sessions] == [session.id]
    # A UUID keeps its canonical lower-case form, whatever case it was sent in.
    upper = new_id().upper()
    assert (await client.create_session(id=upper)).id == upper.lower()
    assert (await client.get_session(upper)).id == upper.lower()


@pytest.mark.parametrize(
    "bad", ["has space", "slash/inside", "é", "x" * 256, "new\nline", "quote'"]
)
async def test_ids_outside_the_safe_set_are_invalid_argument(
    client: ParleyClient, bad: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_session(id=bad)
    assert caught.value.field_violations[0].field == "session.id"
    assert "letters, digits" in caught.value.field_violations[0].description


async def test_state_at_three_scopes_is_read_with_the_session(client: ParleyClient) -> None:
    alice = await client.create_user(id="alice")
    bob = await client.create_user(id="bob")
    first = await client.create_session(
        user_id=alice.id,
        app="travel",
        state={"step": 1},
        state_delta=state_delta(user={"name": "Alice"}, app={"version": "v2"}),
    )
    assert dict(first.state) == {"step": 1}
    assert dict(first.user_state) == {"name": "Alice"}
    assert dict(first.app_state) == {"version": "v2"}

    second = await client.create_session(user_id=alice.id, app="travel")
    assert (dict(second.state), dict(second.user_state)) == ({}, {"name": "Alice"})
    assert dict(second.app_state) == {"version": "v2"}
    other_user = await client.create_session(user_id=bob.id, app="travel")
    assert (dict(other_user.user_state), dict(other_user.app_state)) == ({}, {"version": "v2"})
    other_app = await client.create_session(user_id=alice.id, app="mail")
    assert (dict(other_app.user_state), dict(other_app.app_state)) == ({}, {})

    await client.append_message(
        first.id,
        role="user",
        content="book it",
        state_delta=state_delta(
            {"step": 2, "note": None}, {"city": "Oslo"}, remove_app=["version"]
        ),
    )
    got = await client.get_session(first.id)
    assert dict(got.state) == {"step": 2, "note": None}
    assert dict(got.user_state) == {"name": "Alice", "city": "Oslo"}
    assert dict(got.app_state) == {}
    assert dict((await client.get_session(second.id)).user_state)["city"] == "Oslo"
    window = await client.get_context_window(second.id)
    assert dict(window.session.user_state)["city"] == "Oslo"

    state = await client.get_user_state("travel", alice.id)
    assert (state.app, state.user_id, dict(state.state)) == (
        "travel",
        "alice",
        {"name": "Alice", "city": "Oslo"},
    )
    assert dict((await client.get_user_state("mail", alice.id)).state) == {}
    with pytest.raises(NotFoundError):
        await client.get_user_state("travel", "nobody")


async def test_update_session_state_is_conditional_and_atomic(client: ParleyClient) -> None:
    user = await client.create_user(id=new_id())
    session = await client.create_session(user_id=user.id, app="a")
    await client.append_message(session.id, role="user", content="x")
    updated = await client.update_session_state(
        session.id, state_delta({"k": 1}, {"u": 1}, {"a": 1}), expected_last_seq=1
    )
    assert (dict(updated.state), dict(updated.user_state)) == ({"k": 1}, {"u": 1})
    with pytest.raises(AbortedError) as stale:
        await client.update_session_state(
            session.id, state_delta({"k": 2}, {"u": 2}, {"a": 2}), expected_last_seq=0
        )
    assert stale.value.metadata["lastSeq"] == "1"
    unchanged = await client.get_session(session.id)
    assert (dict(unchanged.state), dict(unchanged.user_state)) == ({"k": 1}, {"u": 1})
    assert dict(unchanged.app_state) == {"a": 1}


async def test_a_refused_append_changes_no_state(client: ParleyClient) -> None:
    user = await client.create_user(id=new_id())
    session = await client.create_session(user_id=user.id, app="a")
    await client.append_message(session.id, role="user", content="first")
    with pytest.raises(AbortedError):
        await client.append_message(
            session.id,
            role="user",
            content="stale",
            expected_last_seq=0,
            state_delta=state_delta({"k": 1}, {"u": 1}, {"a": 1}),
        )
    nobody = await client.create_session(app="a")
    with pytest.raises(FailedPreconditionError) as no_user:
        await client.append_message(
            nobody.id, role="user", state_delta=state_delta({"k": 1}, {"u": 1})
        )
    assert no_user.value.reason == "SESSION_HAS_NO_USER"
    for stored in (await client.get_session(session.id), await client.get_session(nobody.id)):
        assert (dict(stored.state), dict(stored.user_state), dict(stored.app_state)) == (
            {},
            {},
            {},
        )
    assert (await client.get_session(nobody.id)).last_seq == 0


async def test_concurrent_deltas_to_shared_state_all_land(client: ParleyClient) -> None:
    """Each delta is a read-modify-write of the shared row under its lock: none is lost."""
    user = await client.create_user(id=new_id())
    sessions = [await client.create_session(user_id=user.id, app="counter") for _ in range(4)]
    await asyncio.gather(
        *(
            client.append_message(
                sessions[n % 4].id,
                role="user",
                state_delta=state_delta(user={f"u{n}": n}, app={f"a{n}": n}),
            )
            for n in range(24)
        )
    )
    final = await client.get_session(sessions[0].id)
    assert set(final.user_state) == {f"u{n}" for n in range(24)}
    assert set(final.app_state) == {f"a{n}" for n in range(24)}


async def test_state_delta_rules(client: ParleyClient) -> None:
    session = await client.create_session()
    with pytest.raises(InvalidArgumentError) as caught:
        await client.update_session_state(
            session.id, state_delta({"k": 1, "": 2}, remove_session=["k"])
        )
    fields = {v.field for v in caught.value.field_violations}
    assert fields == {"state_delta.session.set", "state_delta.session"}


async def test_sessions_list_by_app_with_or_without_a_user(client: ParleyClient) -> None:
    app = f"app-{new_id()}"
    users = [await client.create_user(id=new_id()) for _ in range(2)]
    made = [await client.create_session(user_id=u.id, app=app) for u in users for _ in range(2)]
    await client.create_session(user_id=users[0].id, app=f"{app}-other")
    everyone = [s.id async for s in client.iter_sessions(app=app, page_size=1)]
    assert everyone == [s.id for s in reversed(made)]
    mine = (await client.list_sessions(app=app, user_id=users[0].id)).sessions
    assert [s.id for s in mine] == [s.id for s in reversed(made[:2])]
    assert (await client.list_sessions(app=app)).total_size == 4
    no_app = await client.create_session()
    assert no_app.id in {s.id async for s in client.iter_sessions(app="")}


async def test_last_event_time_follows_the_newest_event(client: ParleyClient) -> None:
    session = await client.create_session()
    assert not session.HasField("last_event_time")
    base = datetime(2030, 1, 1, tzinfo=UTC)
    await client.append_message(session.id, role="user", event_time=base)
    await client.append_message(session.id, role="user")  # without one: unchanged
    stored = await client.get_session(session.id)
    assert stored.last_event_time.ToDatetime(UTC) == base
    later = base + timedelta(seconds=10, microseconds=123456)
    await client.batch_append_messages(
        session.id,
        [new_message(role="user", event_time=later), new_message(role="assistant")],
        expected_last_seq=2,
    )
    assert (await client.get_session(session.id)).last_event_time.ToDatetime(UTC) == later


async def test_context_window_from_an_event_time(client: ParleyClient) -> None:
    session = await client.create_session()
    base = datetime(2030, 1, 1, tzinfo=UTC)
    await client.batch_append_messages(
        session.id,
        [
            new_message(role="user", content=str(n), event_time=base + timedelta(seconds=n))
            for n in range(1, 6)
        ],
    )
    window = await client.get_context_window(
        session.id, max_messages=3, min_event_time=base + timedelta(seconds=4)
    )
    assert [m.content for m in window.messages] == ["4", "5"]
    assert not window.has_earlier_messages
    window = await client.get_context_window(session.id, max_messages=3)
    assert [m.content for m in window.messages] == ["3", "4", "5"]
