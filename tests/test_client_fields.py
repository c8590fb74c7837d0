"""What a client brings of its own to a message: event_time (its time of the event, beside the
server's create_time, kept to the microsecond and filtered on by reads) and an opaque payload
(its own form of the item, with a media type, kept byte for byte)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from parley_client import InvalidArgumentError, Message, ParleyClient, new_message
from parley_client._gen.parley.v1 import message_pb2
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from tests.conftest import RawCall
from tests.factories import a_session

EARLY = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _event_time(message: Message) -> datetime | None:
    if not message.HasField("event_time"):
        return None
    return message.event_time.ToDatetime(tzinfo=UTC)


async def test_event_time_is_stored_as_given_and_apart_from_create_time(
    client: ParleyClient,
) -> None:
    _, session = await a_session(client)
    with_time = await client.append_message(
        session.id, role="user", content="then", event_time=EARLY
    )
    without = await client.append_message(session.id, role="user", content="now")
    assert _event_time(with_time) == EARLY
    assert with_time.create_time.ToDatetime(tzinfo=UTC) > EARLY + timedelta(days=100)
    assert _event_time(without) is None
    stored = [m async for m in client.stream_messages(session.id)]
    assert [_event_time(m) for m in stored] == [EARLY, None]
    again = await client.append_message(  # a retry that landed: the same message, not a conflict
        session.id, id=with_time.id, role="user", content="then", event_time=EARLY
    )
    assert again == with_time


async def test_reads_filter_by_event_time(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(
        session.id,
        [
            new_message(role="user", content=f"t{n}", event_time=EARLY + timedelta(minutes=n))
            for n in range(5)
        ]
        + [new_message(role="user", content="untimed")],
    )
    since = EARLY + timedelta(minutes=2)
    listed = await client.list_messages(session.id, min_event_time=since, page_size=2)
    assert [m.content for m in listed.messages] == ["t2", "t3"]
    assert listed.total_size == 3
    rest = await client.list_messages(
        session.id, min_event_time=since, page_size=2, page_token=listed.next_page_token
    )
    assert [m.content for m in rest.messages] == ["t4"]
    streamed = [m.content async for m in client.stream_messages(session.id, min_event_time=since)]
    assert streamed == ["t2", "t3", "t4"]
    newest = await client.list_messages(
        session.id, min_event_time=since, newest_first=True, page_size=1
    )
    assert [m.content for m in newest.messages] == ["t4"]


async def test_an_impossible_event_time_is_invalid(client: ParleyClient, raw: RawCall) -> None:
    _, session = await a_session(client)
    message = message_pb2.Message(role=message_pb2.ROLE_USER, content="x")
    message.event_time.seconds = 10**12  # far past the year 9999
    with pytest.raises(InvalidArgumentError) as caught:
        await raw("AppendMessage", pb.AppendMessageRequest(session_id=session.id, message=message))
    assert [v.field for v in caught.value.field_violations] == ["message.event_time"]
    request = pb.ListMessagesRequest(session_id=session.id)
    request.min_event_time.nanos = -1
    with pytest.raises(InvalidArgumentError):
        await raw("ListMessages", request)


async def test_a_payload_comes_back_byte_for_byte(client: ParleyClient) -> None:
    _, session = await a_session(client)
    item = b'{"type": "message", "role": "user", "content": [{"text": "h\\u00e9"}], "x": 1.0}'
    binary = bytes(range(256))
    stored = await client.batch_append_messages(
        session.id,
        [
            new_message(role="user", content="hé", payload=item, payload_type="application/json"),
            new_message(
                role="tool", tool_call_id="c", payload=binary, payload_type="application/x-raw"
            ),
            new_message(role="user", content="plain"),
        ],
    )
    read = [m async for m in client.stream_messages(session.id)]
    assert [(m.payload, m.payload_type) for m in read] == [
        (item, "application/json"),
        (binary, "application/x-raw"),
        (b"", ""),
    ]
    assert read == stored
    window = await client.get_context_window(session.id)
    assert window.messages[0].payload == item


async def test_a_payload_needs_its_media_type(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.append_message(session.id, role="user", payload=b"{}")
    assert [v.field for v in caught.value.field_violations] == ["message.payload_type"]
    with pytest.raises(InvalidArgumentError):
        await client.append_message(session.id, role="user", content="x", payload_type="a/b")
