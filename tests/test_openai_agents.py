"""The OpenAI Agents SDK adapter against the real server: the Session protocol's promises."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import SessionSettings

from parley_client import ParleyClient, Role
from parley_client.integrations.openai_agents import ParleySession
from tests.factories import new_id


def _items(*contents: str) -> list[TResponseInputItem]:
    roles = ("user", "assistant")
    return [
        cast(TResponseInputItem, {"role": roles[n % 2], "content": text})
        for n, text in enumerate(contents)
    ]


async def test_add_get_pop_clear(client: ParleyClient) -> None:
    session = ParleySession(f"conversation {new_id()}", client)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([])
    await session.add_items(_items("1", "2", "3", "4"))
    assert await session.get_items() == _items("1", "2", "3", "4")
    assert await session.get_items(limit=2) == _items("1", "2", "3", "4")[2:]
    assert await session.get_items(limit=10) == _items("1", "2", "3", "4")
    assert await session.pop_item() == _items("1", "2", "3", "4")[3]
    assert await session.get_items() == _items("1", "2", "3")
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None


async def test_session_settings_limit_and_isolation(client: ParleyClient) -> None:
    limited = ParleySession(new_id(), client, session_settings=SessionSettings(limit=1))
    other = ParleySession(new_id(), client)
    await limited.add_items(_items("a", "b"))
    await other.add_items(_items("x"))
    assert await limited.get_items() == _items("a", "b")[1:]
    assert await limited.get_items(limit=2) == _items("a", "b")
    assert await other.get_items() == _items("x")


async def test_items_come_back_equal(client: ParleyClient) -> None:
    items = cast(
        list[TResponseInputItem],
        [
            {"role": "user", "content": [{"type": "input_text", "text": "héllo ✓"}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "lookup",
                "arguments": '{"q": 1}',
                "id": "fc_1",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "id": "r1", "summary": [], "extra": {"nested": [1, 2.5, None]}},
            {"role": "assistant", "content": "done"},
        ],
    )
    session = ParleySession(new_id(), client)
    await session.add_items(items)
    assert await session.get_items() == items
    # Any parley client reads it as a transcript.
    messages = (await client.list_messages(session.session_id)).messages
    assert [(m.role, m.content) for m in messages] == [
        (Role.ROLE_USER, "héllo ✓"),
        (Role.ROLE_ASSISTANT, ""),
        (Role.ROLE_TOOL, "42"),
        (Role.ROLE_ASSISTANT, ""),
        (Role.ROLE_ASSISTANT, "done"),
    ]
    assert messages[1].tool_calls[0].name == "lookup"
    assert messages[2].tool_call_id == "c1"


async def test_concurrent_pops_return_distinct_items(client: ParleyClient) -> None:
    session = ParleySession(new_id(), client)
    await session.add_items(_items(*(str(n) for n in range(100))))
    popped = await asyncio.gather(*(session.pop_item() for _ in range(100)))
    contents = [cast(dict[str, Any], item)["content"] for item in popped if item is not None]
    assert sorted(contents, key=int) == [str(n) for n in range(100)]
    assert await session.get_items() == []


async def test_items_parley_cannot_hold_natively_are_kept_whole(client: ParleyClient) -> None:
    """NUL characters, names past parley's 256, tool calls without a name or id: the transcript
    fields leave them out, and the item still comes back exactly."""
    items = cast(
        list[TResponseInputItem],
        [
            {"role": "user", "content": "nul \x00 inside"},
            {"type": "function_call", "call_id": "", "name": "", "arguments": "{}"},
            {"type": "function_call", "call_id": "c" * 300, "name": "n" * 300, "arguments": ""},
            {"type": "function_call_output", "call_id": "c" * 300, "output": "\x00"},
        ],
    )
    session = ParleySession(new_id(), client)
    await session.add_items(items)
    assert await session.get_items() == items


async def test_concurrent_add_items_land_whole_and_in_order(client: ParleyClient) -> None:
    """add_items is one atomic append: calls at once never interleave their items."""
    session = ParleySession(new_id(), client)
    await session.add_items(_items("first"))
    batches = [[f"{b}:{n}" for n in range(20)] for b in range(8)]
    await asyncio.gather(*(session.add_items(_items(*batch)) for batch in batches))
    contents = [cast(dict[str, Any], item)["content"] for item in await session.get_items()]
    assert contents[0] == "first"
    runs = [contents[1 + 20 * k : 21 + 20 * k] for k in range(8)]
    assert sorted(runs) == sorted(batches)
