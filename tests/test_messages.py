"""Messages: append, batch append, get, list (order, filters, pagination, totals), delete, seqs."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import (
    AlreadyExistsError,
    Attachment,
    Citation,
    InvalidArgumentError,
    Message,
    NotFoundError,
    ParleyClient,
    Role,
    ToolCall,
    new_message,
)
from tests.factories import a_session, a_user, new_id, some_messages

# Tool-call arguments must come back byte for byte: odd spacing, key order, escapes, big numbers,
# non-ASCII, even JSON that does not parse (models emit it, and the history must show it).
ARGUMENTS = [
    '{"city": "San Francisco"}',
    '{ "b":1,"a" :2 }',
    '{"n": 12345678901234567890123, "f": 1.0, "e": 1e400}',
    '{"s": "tab\\there \\u00e9 \\ud83d\\ude00 \\"quoted\\""}',
    '{"emoji": "😀", "rtl": "שלום", "nul_escape": "\\u0000"}',
    "{'not': json,}",
    "",
    "[1, 2, 3]",
]


async def test_append_round_trips_every_field(client: ParleyClient) -> None:
    user, session = await a_session(client)
    earlier = await client.append_message(session.id, role="user", content="hi")
    chosen = new_id()
    message = await client.append_message(
        session.id,
        id=chosen,
        role=Role.ROLE_ASSISTANT,
        content="Here you go [1].",
        name="planner",
        tool_calls=[ToolCall(id="call_1", name="search", arguments='{"q": "x"}')],
        invocation_id="inv_123",
        thread_id="thread-a",
        reply_to=earlier.id,
        chapter="Chapter 2: Results",
        attachments=[
            Attachment(
                name="plot.png",
                mime_type="image/png",
                uri="s3://bucket/plot.png",
                size_bytes=20480,
            )
        ],
        citations=[
            Citation(
                uri="https://example.com/paper",
                title="A paper",
                snippet="the finding",
                start_index=10,
                end_index=14,
            )
        ],
        metadata={"model": "gpt-x", "tokens": {"prompt": 12, "completion": 34}},
        user_id=user.id,
    )
    assert message.id == chosen
    assert (message.session_id, message.seq) == (session.id, 2)
    assert message.HasField("create_time")
    assert await client.get_message(chosen) == message
    listed = (await client.list_messages(session.id)).messages
    assert list(listed) == [earlier, message]


@pytest.mark.parametrize("arguments", ARGUMENTS)
async def test_tool_call_arguments_round_trip_byte_for_byte(
    client: ParleyClient, arguments: str
) -> None:
    _, session = await a_session(client)
    call = ToolCall(id="call_9", name="f", arguments=arguments)
    appended = await client.append_message(session.id, role="assistant", tool_calls=[call])
    stored = await client.get_message(appended.id)
    assert stored.tool_calls[0].arguments.encode() == arguments.encode()
    assert appended.tool_calls[0].arguments == arguments


async def test_content_round_trips_exactly(client: ParleyClient) -> None:
    _, session = await a_session(client)
    texts = [
        "",
        "  leading and trailing spaces  ",
        "line\nbreaks\r\nand\ttabs\u2028separators",
        "emoji 👩‍👩‍👧 combining é RTL مرحبا CJK 漢字",
        "x" * 1_000_000,
    ]
    for text in texts:
        appended = await client.append_message(session.id, role="user", content=text)
        assert (await client.get_message(appended.id)).content == text


async def test_agent_turn_reads_back_identical_and_in_order(client: ParleyClient) -> None:
    user, session = await a_session(client)
    turn = [
        new_message(role="user", content="Weather in Paris and Rome?", invocation_id="inv_1"),
        new_message(
            role="assistant",
            invocation_id="inv_1",
            tool_calls=[
                ToolCall(id="call_paris", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="call_rome", name="get_weather", arguments='{"city":"Rome"}'),
            ],
        ),
        new_message(
            role="tool",
            name="get_weather",
            tool_call_id="call_paris",
            invocation_id="inv_1",
            content='{"temperature": 18, "condition": "cloudy"}',
        ),
        new_message(
            role="tool",
            name="get_weather",
            tool_call_id="call_rome",
            invocation_id="inv_1",
            content='{"temperature": 24, "condition": "sunny"}',
        ),
        new_message(
            role="assistant",
            invocation_id="inv_1",
            content="Paris: 18°C and cloudy. Rome: 24°C and sunny.",
        ),
    ]
    appended = [
        await client.append_message(
            session.id,
            id=m.id,
            role=m.role,
            content=m.content,
            name=m.name,
            tool_calls=m.tool_calls,
            tool_call_id=m.tool_call_id,
            invocation_id=m.invocation_id,
        )
        for m in turn
    ]
    history = [m async for m in client.iter_messages(session.id)]
    assert history == appended
    assert [m.seq for m in history] == [1, 2, 3, 4, 5]
    for sent, stored in zip(turn, history, strict=True):
        stored_as_sent = Message()
        stored_as_sent.CopyFrom(stored)
        for output_only in ("session_id", "seq", "create_time"):
            stored_as_sent.ClearField(output_only)
        assert stored_as_sent == sent
    by_invocation = await client.list_messages(session.id, invocation_id="inv_1")
    assert by_invocation.total_size == 5
    assert user.id


async def test_batch_append_is_ordered_and_consecutive(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.append_message(session.id, role="system", content="be brief")
    batch = [new_message(role="user", content=f"m{n}") for n in range(10)]
    appended = await client.batch_append_messages(session.id, batch)
    assert [m.seq for m in appended] == list(range(2, 12))
    assert [m.content for m in appended] == [f"m{n}" for n in range(10)]
    session = await client.get_session(session.id)
    assert (session.message_count, session.last_seq) == (11, 11)


async def _nothing_written(client: ParleyClient, session_id: str, count: int) -> None:
    session = await client.get_session(session_id)
    assert (session.message_count, session.last_seq) == (count, count)
    assert len((await client.list_messages(session_id)).messages) == count


async def test_batch_with_one_invalid_message_writes_nothing(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await some_messages(client, session.id, 2)
    batch = [new_message(role="user", content="fine") for _ in range(3)]
    batch.append(Message(content="no role"))
    batch.append(new_message(role="tool", content="answers nothing"))
    with pytest.raises(InvalidArgumentError) as caught:
        await client.batch_append_messages(session.id, batch)
    assert [v.field for v in caught.value.field_violations] == [
        "messages[3].role",
        "messages[4].tool_call_id",
    ]
    await _nothing_written(client, session.id, 2)


async def test_batch_with_a_taken_id_writes_nothing(client: ParleyClient) -> None:
    _, session = await a_session(client)
    (existing,) = await some_messages(client, session.id, 1)
    batch = [new_message(role="user", content="new"), new_message(role="user", id=existing.id)]
    with pytest.raises(AlreadyExistsError) as caught:
        await client.batch_append_messages(session.id, batch)
    assert caught.value.metadata["resourceId"] == existing.id
    await _nothing_written(client, session.id, 1)
    # The reserved seqs were rolled back too: the next append takes seq 2.
    assert (await client.append_message(session.id, role="user")).seq == 2


async def test_batch_with_a_missing_author_writes_nothing(client: ParleyClient) -> None:
    _, session = await a_session(client)
    ghost = new_id()
    batch = [new_message(role="user", content="a"), new_message(role="user", user_id=ghost)]
    with pytest.raises(NotFoundError) as caught:
        await client.batch_append_messages(session.id, batch)
    assert caught.value.metadata["resourceId"] == ghost
    await _nothing_written(client, session.id, 0)


async def test_batch_size_limits(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError):
        await client.batch_append_messages(session.id, [])
    too_many = [new_message(role="user", content="x")] * 1001
    with pytest.raises(InvalidArgumentError) as caught:
        await client.batch_append_messages(session.id, too_many)
    assert "1001" in caught.value.field_violations[0].description
    same = new_id()
    with pytest.raises(InvalidArgumentError):
        await client.batch_append_messages(
            session.id, [new_message(role="user", id=same), new_message(role="user", id=same)]
        )


async def test_fifty_concurrent_appends_get_seqs_one_to_fifty(client: ParleyClient) -> None:
    _, session = await a_session(client)
    appended = await asyncio.gather(
        *(client.append_message(session.id, role="user", content=f"c{n}") for n in range(50))
    )
    assert sorted(m.seq for m in appended) == list(range(1, 51))
    history = [m async for m in client.iter_messages(session.id, page_size=7)]
    assert [m.seq for m in history] == list(range(1, 51))
    assert {m.content for m in history} == {f"c{n}" for n in range(50)}
    assert (await client.get_session(session.id)).message_count == 50


async def test_concurrent_batches_stay_contiguous(client: ParleyClient) -> None:
    _, session = await a_session(client)
    batches = await asyncio.gather(
        *(
            client.batch_append_messages(
                session.id, [new_message(role="user", content=f"b{b}-{n}") for n in range(5)]
            )
            for b in range(10)
        )
    )
    for batch in batches:
        seqs = [m.seq for m in batch]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert sorted(m.seq for batch in batches for m in batch) == list(range(1, 51))


async def test_pagination_visits_every_message_exactly_once(client: ParleyClient) -> None:
    _, session = await a_session(client)
    appended = await client.batch_append_messages(
        session.id, [new_message(role="user", content=str(n)) for n in range(101)]
    )
    seen: list[Message] = []
    token = ""
    pages = 0
    while True:
        page = await client.list_messages(session.id, page_size=10, page_token=token)
        assert page.total_size == 101
        seen.extend(page.messages)
        pages += 1
        token = page.next_page_token
        if not token:
            break
        assert len(page.messages) == 10  # a token only while more follow
    assert pages == 11
    assert seen == appended


async def test_pages_survive_appends_in_between(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await some_messages(client, session.id, 5)
    first = await client.list_messages(session.id, page_size=3)
    await some_messages(client, session.id, 2)
    second = await client.list_messages(session.id, page_size=10, page_token=first.next_page_token)
    assert [m.seq for m in first.messages] + [m.seq for m in second.messages] == list(range(1, 8))


async def test_filters_and_their_totals(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(
        session.id,
        [
            new_message(role="system", content="rules", chapter="intro"),
            new_message(role="user", content="q1", chapter="intro", thread_id="t1"),
            new_message(role="assistant", content="a1", chapter="intro", thread_id="t1"),
            new_message(role="user", content="q2", chapter="body", thread_id="t2"),
            new_message(role="assistant", content="a2", chapter="body", thread_id="t2"),
            new_message(role="user", content="q3", chapter="body", thread_id="t1"),
        ],
    )

    async def contents(**filters: object) -> tuple[list[str], int]:
        response = await client.list_messages(session.id, **filters)  # type: ignore[arg-type]
        return [m.content for m in response.messages], response.total_size

    assert await contents(chapter="intro") == (["rules", "q1", "a1"], 3)
    assert await contents(thread_id="t1") == (["q1", "a1", "q3"], 3)
    assert await contents(role="user") == (["q1", "q2", "q3"], 3)
    assert await contents(role=Role.ROLE_ASSISTANT, chapter="body") == (["a2"], 1)
    assert await contents(after_seq=4) == (["a2", "q3"], 2)
    assert await contents(chapter="nothing") == ([], 0)
    assert await contents() == (["rules", "q1", "a1", "q2", "a2", "q3"], 6)


async def test_filtered_pagination(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(
        session.id,
        [new_message(role="user" if n % 3 else "assistant", content=str(n)) for n in range(30)],
    )
    users = [m async for m in client.iter_messages(session.id, role="user", page_size=4)]
    assert [m.content for m in users] == [str(n) for n in range(30) if n % 3]


async def test_list_of_a_missing_session_is_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.list_messages(new_id())


async def test_delete_message_never_reuses_its_seq(client: ParleyClient) -> None:
    user, session = await a_session(client)
    one, two, three = await some_messages(client, session.id, 3)
    await client.rate_message(three.id, user_id=user.id, value=2)
    await client.delete_message(three.id)
    with pytest.raises(NotFoundError):
        await client.get_message(three.id)
    assert (await client.get_rating_summary(session_id=session.id)).count == 0
    assert (await client.append_message(session.id, role="user")).seq == 4
    session = await client.get_session(session.id)
    assert (session.message_count, session.last_seq) == (3, 4)
    listing = await client.list_messages(session.id)
    assert [m.seq for m in listing.messages] == [1, 2, 4]
    assert listing.total_size == 3
    assert (one.seq, two.seq) == (1, 2)


async def test_delete_missing_message(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(NotFoundError):
        await client.delete_message(new_id())
    await client.delete_message(new_id(), allow_missing=True)
    assert (await client.get_session(session.id)).message_count == 0


async def test_append_to_a_missing_session_is_not_found(client: ParleyClient) -> None:
    missing = new_id()
    with pytest.raises(NotFoundError) as caught:
        await client.append_message(missing, role="user", content="hi")
    assert caught.value.reason == "SESSION_NOT_FOUND"


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"role": Role.ROLE_UNSPECIFIED}, "message.role"),
        ({"role": 17}, "message.role"),
        ({"role": "tool"}, "message.tool_call_id"),
        ({"role": "user", "tool_call_id": "call_1"}, "message.tool_call_id"),
        (
            {"role": "user", "tool_calls": [ToolCall(id="c", name="f", arguments="{}")]},
            "message.tool_calls",
        ),
        (
            {"role": "assistant", "tool_calls": [ToolCall(id="c", arguments="{}")]},
            "message.tool_calls[0].name",
        ),
        (
            {
                "role": "assistant",
                "tool_calls": [ToolCall(id="c", name="f"), ToolCall(id="c", name="g")],
            },
            "message.tool_calls[1].id",
        ),
        ({"role": "user", "chapter": "c" * 257}, "message.chapter"),
        ({"role": "user", "reply_to": "yesterday"}, "message.reply_to"),
        ({"role": "user", "user_id": "bob smith"}, "message.user_id"),
        ({"role": "user", "id": "m-1"}, "message.id"),
        ({"role": "user", "content": "bad\x00byte"}, "message.content"),
        ({"role": "user", "metadata": {"score": float("nan")}}, "message.metadata"),
        (
            {"role": "user", "citations": [Citation(start_index=5, end_index=2)]},
            "message.citations[0]",
        ),
        (
            {"role": "user", "attachments": [Attachment(size_bytes=-1)]},
            "message.attachments[0].size_bytes",
        ),
    ],
)
async def test_invalid_message_is_rejected_and_nothing_written(
    client: ParleyClient, fields: dict[str, object], bad_field: str
) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append_message(session.id, **fields)  # type: ignore[arg-type]
    assert caught.value.field_violations[0].field.startswith(bad_field)
    await _nothing_written(client, session.id, 0)


async def test_bad_session_id_is_invalid_argument(client: ParleyClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append_message("not an id", role="user")
    assert caught.value.field_violations[0].field == "session_id"


async def test_message_session_id_must_match_the_request(client: ParleyClient) -> None:
    _, session = await a_session(client)
    _, other = await a_session(client)
    message = new_message(role="user")
    message.session_id = other.id
    with pytest.raises(InvalidArgumentError) as caught:
        await client.batch_append_messages(session.id, [message])
    assert caught.value.field_violations[0].field == "messages[0].session_id"


async def test_list_rejects_bad_filters(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError):
        await client.list_messages(session.id, after_seq=-1)
    with pytest.raises(InvalidArgumentError):
        await client.list_messages(session.id, role=42)  # type: ignore[arg-type]  # deliberately bad


async def test_author_must_exist(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(NotFoundError):
        await client.append_message(session.id, role="user", user_id=new_id())
    author = await a_user(client)
    stored = await client.append_message(session.id, role="user", user_id=author.id)
    assert stored.user_id == author.id


async def test_concurrent_appends_fail_alone(client: ParleyClient) -> None:
    """Appends that arrive together may share a statement (group commit); each still succeeds or
    fails on its own."""
    user = await a_user(client)
    sessions = [await client.create_session(user_id=user.id) for _ in range(6)]
    closed = sessions[4]
    await client.close_session(closed.id)
    (taken,) = await some_messages(client, sessions[5].id, 1)

    results = await asyncio.gather(
        *(
            client.append_message(s.id, role="user", content=f"{s.id}-{n}")
            for n in range(5)
            for s in sessions[:4]
        ),
        client.append_message(closed.id, role="user"),
        client.append_message(sessions[5].id, role="user", id=taken.id),
        client.append_message(sessions[5].id, role="user", user_id=new_id()),
        return_exceptions=True,
    )
    appended, failures = results[:20], results[20:]
    assert all(isinstance(m, Message) for m in appended)
    for session in sessions[:4]:
        seqs = [m.seq for m in appended if isinstance(m, Message) and m.session_id == session.id]
        assert sorted(seqs) == [1, 2, 3, 4, 5]
    assert [type(f).__name__ for f in failures] == [
        "FailedPreconditionError",
        "AlreadyExistsError",
        "NotFoundError",
    ]
    assert (await client.get_session(sessions[5].id)).message_count == 1
