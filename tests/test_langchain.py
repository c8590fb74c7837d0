"""The LangChain adapter against the real server: BaseChatMessageHistory's promises, through the
sync client (on a worker thread, as the server serves on the loop) and the async one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from parley_client import ParleyClient, Role, SyncParleyClient
from parley_client.integrations.langchain import ParleyChatMessageHistory
from tests.factories import new_id

# BaseChatMessageHistory is deprecated in langchain-core 1.6.4+, still the interface it serves.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONVERSATION: list[BaseMessage] = [
    SystemMessage(content="Be brief.", id="m-1"),
    HumanMessage(content="Weather in Oslo?", additional_kwargs={"lang": "en"}, id="m-2"),
    AIMessage(
        content="",
        tool_calls=[{"id": "c1", "name": "weather", "args": {"city": "Oslo"}}],
        response_metadata={"model": "m", "tokens": 12},
        id="m-3",
    ),
    ToolMessage(content="4°C, rain", tool_call_id="c1", id="m-4"),
    AIMessage(content=[{"type": "text", "text": "4°C and rain."}], id="m-5"),
]


@pytest.fixture
def sync_client(target: str) -> Iterator[SyncParleyClient]:
    with SyncParleyClient(target, default_timeout=20) as client:
        yield client


async def test_async_add_get_clear(client: ParleyClient) -> None:
    history = ParleyChatMessageHistory(f"chat {new_id()}", async_client=client)
    assert await history.aget_messages() == []
    await history.aadd_messages(CONVERSATION[:2])
    await history.aadd_messages(CONVERSATION[2:])
    assert await history.aget_messages() == CONVERSATION
    reopened = ParleyChatMessageHistory(history.session_id, async_client=client)
    assert await reopened.aget_messages() == CONVERSATION
    await reopened.aclear()
    assert await history.aget_messages() == []
    other = ParleyChatMessageHistory(new_id(), async_client=client)
    await other.aclear()
    assert await other.aget_messages() == []


async def test_sync_add_get_clear(sync_client: SyncParleyClient) -> None:
    def run() -> None:
        history = ParleyChatMessageHistory(new_id(), client=sync_client)
        assert history.messages == []
        history.add_messages(CONVERSATION)
        history.add_message(HumanMessage(content="thanks"))
        assert history.messages == [*CONVERSATION, HumanMessage(content="thanks")]
        history.clear()
        assert history.messages == []

    await asyncio.to_thread(run)


async def test_a_history_reads_as_a_transcript(client: ParleyClient) -> None:
    history = ParleyChatMessageHistory(new_id(), async_client=client)
    await history.aadd_messages(CONVERSATION)
    messages = (await client.list_messages(history.session_id)).messages
    assert [(m.role, m.content) for m in messages] == [
        (Role.ROLE_SYSTEM, "Be brief."),
        (Role.ROLE_USER, "Weather in Oslo?"),
        (Role.ROLE_ASSISTANT, ""),
        (Role.ROLE_TOOL, "4°C, rain"),
        (Role.ROLE_ASSISTANT, "4°C and rain."),
    ]
    assert (messages[2].tool_calls[0].name, messages[3].tool_call_id) == ("weather", "c1")


async def test_more_than_one_batch(client: ParleyClient) -> None:
    history = ParleyChatMessageHistory(new_id(), async_client=client)
    many = [HumanMessage(content=str(n)) for n in range(1001)]
    await history.aadd_messages(many)
    assert await history.aget_messages() == many


def test_a_history_needs_a_client() -> None:
    with pytest.raises(ValueError, match="give client"):
        ParleyChatMessageHistory("x")


async def test_messages_parley_cannot_hold_natively_are_kept_whole(client: ParleyClient) -> None:
    history = ParleyChatMessageHistory(new_id(), async_client=client)
    awkward: list[BaseMessage] = [
        HumanMessage(content="nul \x00 inside", name="n" * 300),
        AIMessage(content="", tool_calls=[{"id": "", "name": "", "args": {}}]),
        ToolMessage(content="\x00", tool_call_id="c" * 300),
    ]
    await history.aadd_messages(awkward)
    assert await history.aget_messages() == awkward
