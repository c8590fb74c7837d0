"""A create or append repeated with the same client-chosen id: the stored resource when the
content is the same (a retry whose first attempt landed), ALREADY_EXISTS when it differs."""

from __future__ import annotations

import pytest

from parley_client import AlreadyExistsError, ParleyClient, ToolCall, new_message
from tests.factories import a_session, new_id


async def test_a_repeated_create_user_returns_the_stored_user(client: ParleyClient) -> None:
    user_id = new_id()
    first = await client.create_user(id=user_id, display_name="Ada", email="ada@example.com")
    again = await client.create_user(id=user_id, display_name="Ada", email="ada@example.com")
    assert again == first
    with pytest.raises(AlreadyExistsError):
        await client.create_user(id=user_id, display_name="Grace", email="ada@example.com")


async def test_a_repeated_create_session_returns_the_stored_session(client: ParleyClient) -> None:
    user = await client.create_user(display_name="Ada")
    session_id = new_id()
    first = await client.create_session(
        id=session_id, user_id=user.id, title="t", metadata={"k": [1, "x"]}
    )
    again = await client.create_session(
        id=session_id, user_id=user.id, title="t", metadata={"k": [1, "x"]}
    )
    assert again == first
    with pytest.raises(AlreadyExistsError):
        await client.create_session(id=session_id, user_id=user.id, title="other")


async def test_a_repeated_create_context_returns_the_stored_context(client: ParleyClient) -> None:
    _, session = await a_session(client)
    context_id = new_id()
    first = await client.create_context(session.id, id=context_id, type="system", content="be")
    await client.close_session(session.id)  # the retry comes after the session closed
    again = await client.create_context(session.id, id=context_id, type="system", content="be")
    assert again == first
    with pytest.raises(AlreadyExistsError):
        await client.create_context(session.id, id=context_id, type="system", content="other")


async def test_a_repeated_append_is_stored_once(client: ParleyClient) -> None:
    _, session = await a_session(client)
    message_id = new_id()
    call = ToolCall(id="c1", name="lookup", arguments='{"q": 1}')
    first = await client.append_message(
        session.id, id=message_id, role="assistant", content="hm", tool_calls=[call]
    )
    again = await client.append_message(
        session.id, id=message_id, role="assistant", content="hm", tool_calls=[call]
    )
    assert again == first
    assert (await client.get_session(session.id)).message_count == 1
    with pytest.raises(AlreadyExistsError):
        await client.append_message(session.id, id=message_id, role="assistant", content="no")
    _, other = await a_session(client)
    with pytest.raises(AlreadyExistsError):  # the same id in another session is another message
        await client.append_message(
            other.id, id=message_id, role="assistant", content="hm", tool_calls=[call]
        )


async def test_a_repeated_batch_is_stored_once(client: ParleyClient) -> None:
    _, session = await a_session(client)
    batch = [
        new_message(id=new_id(), role="user", content="q", metadata={"n": 1}),
        new_message(id=new_id(), role="assistant", content="a"),
    ]
    first = await client.batch_append_messages(session.id, batch)
    await client.close_session(session.id)
    again = await client.batch_append_messages(session.id, batch)
    assert again == first
    assert (await client.get_session(session.id)).message_count == 2
    changed = [batch[0], new_message(id=batch[1].id, role="assistant", content="changed")]
    with pytest.raises(AlreadyExistsError):
        await client.batch_append_messages(session.id, changed)
