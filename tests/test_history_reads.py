"""Reading history the way agents do: newest first, as a stream, and as a context window."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley_client import InvalidArgumentError, Message, ParleyClient, new_message
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_server.domain import MessageFilter, NewMessage, NewSession, NewUser, Role
from parley_server.identity import ANONYMOUS
from parley_server.services.messages import STREAM_BATCH, MessageService
from parley_server.services.sessions import SessionService
from parley_server.store import Store
from tests.conftest import RawCall
from tests.factories import a_session, as_the_api_sends, new_id
from tests.probes import count_calls, count_statements

SCOPE = ANONYMOUS.scope


async def _history(client: ParleyClient, session_id: str, count: int) -> list[Message]:
    appended: list[Message] = []
    for start in range(0, count, 1000):
        appended += await client.batch_append_messages(
            session_id,
            [
                new_message(
                    role="user" if n % 2 else "assistant", content=str(n), chapter=f"c{n % 3}"
                )
                for n in range(start, min(start + 1000, count))
            ],
        )
    return appended


async def test_last_fifty_newest_first(client: ParleyClient) -> None:
    _, session = await a_session(client)
    appended = await _history(client, session.id, 120)
    last = await client.list_messages(session.id, page_size=50, newest_first=True)
    assert [m.seq for m in last.messages] == list(range(120, 70, -1))
    assert last.total_size == 120
    walked = [m.seq async for m in client.iter_messages(session.id, newest_first=True, page_size=7)]
    assert walked == [m.seq for m in reversed(appended)]


async def test_newest_first_with_filters(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await _history(client, session.id, 30)
    response = await client.list_messages(
        session.id, chapter="c0", role="assistant", after_seq=10, newest_first=True
    )
    expected = [n + 1 for n in range(29, 9, -1) if n % 3 == 0 and n % 2 == 0]
    assert [m.seq for m in response.messages] == expected
    assert response.total_size == len(expected)


async def test_order_by_is_checked(client: ParleyClient, raw: RawCall) -> None:
    _, session = await a_session(client)
    await _history(client, session.id, 3)
    with pytest.raises(InvalidArgumentError) as caught:
        await raw("ListMessages", pb.ListMessagesRequest(session_id=session.id, order_by="content"))
    assert caught.value.field_violations[0].field == "order_by"
    assert await raw(
        "ListMessages", pb.ListMessagesRequest(session_id=session.id, order_by=" SEQ  DESC ")
    )
    first = await client.list_messages(session.id, page_size=1, newest_first=True)
    with pytest.raises(InvalidArgumentError):
        await client.list_messages(session.id, page_size=1, page_token=first.next_page_token)


async def test_stream_sends_the_whole_history_in_batches(
    client: ParleyClient, raw: RawCall
) -> None:
    _, session = await a_session(client)
    appended = await _history(client, session.id, 1201)
    streamed = [m async for m in client.stream_messages(session.id)]
    assert streamed == appended
    batches = await raw("StreamMessages", pb.StreamMessagesRequest(session_id=session.id))
    assert [len(b.messages) for b in batches] == [500, 500, 201]


async def test_a_stream_reads_its_next_batch_while_it_hands_out_the_one_before(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream read a batch only once the one before was handed out, so the database's time
    for each batch added to the client's wait instead of passing while the server sent."""
    session_id = await _a_session(store)
    news = [NewMessage(id=None, role=Role.USER, content=str(n)) for n in range(STREAM_BATCH * 2)]
    await store.messages.append(SCOPE, session_id, news)
    reads = count_calls(store, monkeypatch, "fetch")
    messages = MessageService(store, SessionService(store), response_budget_bytes=1 << 20)
    batches = messages.stream(ANONYMOUS, session_id, MessageFilter())
    try:
        first = await anext(batches)
        handed_out = reads[0]
        async with asyncio.timeout(10):
            while reads[0] == handed_out:  # noqa: ASYNC110  # the next read runs in a task of its own
                await asyncio.sleep(0.001)
        assert [m.seq for m in first] == list(range(1, STREAM_BATCH + 1))
        assert [m.seq for m in await anext(batches)][-1] == STREAM_BATCH * 2
    finally:
        await batches.aclose()


async def test_stream_filters_and_resumes_after_a_seq(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await _history(client, session.id, 40)
    by_chapter = [m.seq async for m in client.stream_messages(session.id, chapter="c1")]
    assert by_chapter == [n + 1 for n in range(40) if n % 3 == 1]
    resumed = [m.seq async for m in client.stream_messages(session.id, after_seq=35)]
    assert resumed == [36, 37, 38, 39, 40]


async def test_stream_of_an_empty_session(client: ParleyClient) -> None:
    _, session = await a_session(client)
    assert [m async for m in client.stream_messages(session.id)] == []


async def test_context_window(client: ParleyClient) -> None:
    _, session = await a_session(client)
    system = await client.create_context(session.id, type="system", content="be brief")
    profile = await client.create_context(session.id, type="user", content="likes tea")
    appended = await _history(client, session.id, 30)

    window = await client.get_context_window(session.id, max_messages=10)
    assert window.session.id == session.id
    assert window.session.message_count == 30
    assert list(window.contexts) == [system, profile]
    assert list(window.messages) == appended[-10:]
    assert window.has_earlier_messages

    everything = await client.get_context_window(session.id)  # 0 means 100
    assert list(everything.messages) == appended
    assert not everything.has_earlier_messages


async def test_context_window_of_a_new_session(client: ParleyClient) -> None:
    _, session = await a_session(client)
    window = await client.get_context_window(session.id)
    assert (list(window.contexts), list(window.messages)) == ([], [])
    assert not window.has_earlier_messages
    with pytest.raises(InvalidArgumentError):
        await client.get_context_window(session.id, max_messages=-5)


async def _a_session(store: Store) -> str:
    user_id = new_id()
    await store.users.create(SCOPE, NewUser(id=user_id, display_name="u"))
    return (await store.sessions.create(SCOPE, NewSession(id=None, user_id=user_id))).id


async def _first_under(store: Store, session_id: str, max_bytes: int) -> list[list[int]]:
    """The seqs of the first page oldest first, newest first, and of the context window, each of
    10 messages at most and max_bytes, read from the database; each says that more exist."""
    read = []
    for newest_first in (False, True):
        page = await store.messages.list(
            SCOPE,
            session_id,
            MessageFilter(),
            position=0,
            limit=10,
            max_bytes=max_bytes,
            newest_first=newest_first,
            cached=False,
        )
        assert page.has_more
        read.append([m.seq for m in page.items])
    window = await store.messages.context_window(SCOPE, session_id, 10, max_bytes=max_bytes)
    assert window.has_earlier_messages
    return [*read, [m.seq for m in window.messages]]


async def test_a_page_that_fills_the_budget_exactly_still_says_more_follow(store: Store) -> None:
    """A page whose messages' sizes summed to exactly the byte budget said that no more
    followed (the row after it started at the budget, and only rows starting below it were
    read): a client listing page by page stopped there and never saw the rest."""
    session_id = await _a_session(store)
    news = [NewMessage(id=None, role=Role.USER, content=str(n), size_bytes=100) for n in range(4)]
    await store.messages.append(SCOPE, session_id, news)
    assert await _first_under(store, session_id, 200) == [[1, 2], [4, 3], [3, 4]]


@pytest.mark.parametrize("path", ["one row", "several rows", "in a transaction of its own"])
async def test_every_append_records_its_largest_message_for_the_budget(
    store: Store, path: str
) -> None:
    """A read skips summing its rows' sizes when even the session's largest message, that many
    times over, fits the budget: an append path that did not record a large message would have
    the next read hand out more than the budget."""
    session_id = await _a_session(store)

    def sized(size: int) -> NewMessage:
        return NewMessage(id=None, role=Role.USER, content=str(size), size_bytes=size)

    await store.messages.append(SCOPE, session_id, [sized(10)])
    if path == "one row":
        await store.messages.append(SCOPE, session_id, [sized(5000)])
        await store.messages.append(SCOPE, session_id, [sized(10)])
    elif path == "several rows":
        await store.messages.append(SCOPE, session_id, [sized(5000), sized(10)])
    else:
        await store.messages.append(
            SCOPE, session_id, [sized(5000), sized(10)], expected_last_seq=1
        )
    assert await _first_under(store, session_id, 1000) == [[1], [3], [3]]


async def test_reads_in_one_snapshot_run_only_the_statements_the_session_row_leaves_open(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context window and a watch step read the session's row first, in the same snapshot,
    and it tells which history statement can answer: none when no message can follow, the
    plain one, or the summing one when the session's largest message could pass the budget;
    and no deletions statement when none followed. Each ran the plain statement, then the
    summing one when the plain one found nothing, and the deletions statement every time: an
    agent's first window of a new session, a window of a session holding a large file and a
    watch step woken with nothing new each cost one to three statements more."""
    statements = count_statements(monkeypatch)
    empty = await _a_session(store)
    window = await store.messages.context_window(SCOPE, empty, 10, max_bytes=1000)
    assert (list(window.messages), statements[0]) == ([], 2)  # the session, its contexts

    holding_a_file = await _a_session(store)
    files = [NewMessage(id=None, role=Role.USER, content=f"{n}" * 5000) for n in range(2)]
    await store.messages.append(SCOPE, holding_a_file, [as_the_api_sends(f) for f in files])
    statements[0] = 0
    window = await store.messages.context_window(SCOPE, holding_a_file, 10, max_bytes=1000)
    assert ([m.seq for m in window.messages], statements[0]) == ([2], 3)  # and the summing one

    statements[0] = 0
    step = await store.messages.history_step(
        SCOPE, holding_a_file, MessageFilter(), position=2, after_deletion=0, limit=10,
        max_bytes=1000,
    )  # fmt: skip
    assert (list(step.messages), step.deletions, statements[0]) == ([], [], 1)  # the session

    statements[0] = 0
    step = await store.messages.history_step(
        SCOPE, holding_a_file, MessageFilter(), position=0, after_deletion=0, limit=10,
        max_bytes=1000,
    )  # fmt: skip
    assert ([m.seq for m in step.messages], statements[0]) == ([1], 2)


async def test_a_filtered_page_counts_its_matches_without_asking_for_the_session(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered page with its total asked for the session's counters (to tell an empty session
    from a missing one) also when it had read rows, which say that the session exists, and then
    counted its matches; one from the start that read no row counted them too, though none
    match."""
    statements = count_statements(monkeypatch)
    session_id = await _a_session(store)
    tools = MessageFilter(role=Role.TOOL)

    async def page() -> list[Any]:
        statements[0] = 0
        read = await store.messages.list(
            SCOPE, session_id, tools, position=0, limit=10, max_bytes=1 << 20, cached=False
        )
        return [[m.seq for m in read.items], read.total_size, statements[0]]

    # The page (its plain statement, then the summing one), then the counters.
    assert await page() == [[], 0, 3]
    message = as_the_api_sends(NewMessage(id=None, role=Role.TOOL, content="x"))
    await store.messages.append(SCOPE, session_id, [message])
    assert await page() == [[1], 1, 2]  # the page, then the count
