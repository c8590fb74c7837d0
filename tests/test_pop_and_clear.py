"""PopMessage and ClearMessages: atomic removal of the newest message, and of the whole history
with the session kept; both reach watchers as deletions."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import NotFoundError, ParleyClient, new_message
from tests.factories import a_session, new_id


async def test_pop_removes_and_returns_the_newest_message(client: ParleyClient) -> None:
    _, session = await a_session(client)
    stored = await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(3)]
    )
    await client.rate_message(stored[2].id, user_id=session.user_id, value=5)
    popped = await client.pop_message(session.id)
    assert popped == stored[2]
    assert [m.seq async for m in client.stream_messages(session.id)] == [1, 2]
    assert (await client.get_session(session.id)).message_count == 2
    assert not (await client.list_ratings(session_id=session.id)).ratings
    assert (await client.pop_message(session.id)) == stored[1]
    assert (await client.pop_message(session.id)) == stored[0]
    assert await client.pop_message(session.id) is None  # empty: no message, no error
    appended = await client.append_message(session.id, role="user", content="after")
    assert appended.seq == 4  # seqs are never reused


async def test_concurrent_pops_never_return_the_same_message(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(30)]
    )
    popped = await asyncio.gather(*(client.pop_message(session.id) for _ in range(40)))
    seqs = [m.seq for m in popped if m is not None]
    assert sorted(seqs) == list(range(1, 31))
    assert popped.count(None) == 10
    assert (await client.get_session(session.id)).message_count == 0


async def test_clear_deletes_the_history_and_keeps_the_session(client: ParleyClient) -> None:
    _, session = await a_session(client, title="kept")
    await client.create_context(session.id, type="system", content="be brief")
    await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(5)]
    )
    assert await client.clear_messages(session.id) == 5
    assert await client.clear_messages(session.id) == 0
    kept = await client.get_session(session.id)
    assert (kept.title, kept.message_count, kept.last_seq) == ("kept", 0, 5)
    assert len((await client.list_contexts(session.id)).contexts) == 1
    assert [m async for m in client.stream_messages(session.id)] == []
    assert (await client.append_message(session.id, role="user", content="new")).seq == 6


async def test_pop_and_clear_reach_a_watcher_as_deletions(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(
        session.id, [new_message(role="user", content=f"m{n}") for n in range(4)]
    )
    events = client.watch_session(session.id)
    assert (await anext(events)).WhichOneof("event") == "session"
    assert len((await anext(events)).messages.messages) == 4
    await client.pop_message(session.id)
    await client.clear_messages(session.id)
    deleted = [(await anext(events)).deleted_message.seq for _ in range(4)]
    assert deleted == [4, 1, 2, 3]
    await events.aclose()


async def test_pop_and_clear_of_a_missing_session_are_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.pop_message(new_id())
    with pytest.raises(NotFoundError):
        await client.clear_messages(new_id())
