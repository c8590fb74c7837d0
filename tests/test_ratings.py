"""Ratings: rate, re-rate, list, delete, and the per-message and per-session summary."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import InvalidArgumentError, NotFoundError, ParleyClient
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from tests.conftest import RawCall
from tests.factories import a_session, a_user, new_id, some_messages


async def test_rate_and_re_rate_replaces(client: ParleyClient) -> None:
    user, session = await a_session(client)
    (message,) = await some_messages(client, session.id, 1)
    first = await client.rate_message(message.id, user_id=user.id, value=2, comment="meh")
    assert (first.value, first.comment, first.session_id) == (2, "meh", session.id)

    again = await client.rate_message(message.id, user_id=user.id, value=5, comment="great")
    assert again.id == first.id  # the same rating, replaced
    assert (again.value, again.comment) == (5, "great")
    assert again.create_time == first.create_time
    assert again.update_time.ToDatetime() > first.update_time.ToDatetime()

    listed = [r async for r in client.iter_ratings(message_id=message.id)]
    assert listed == [again]


async def test_concurrent_re_rating_keeps_one_rating(client: ParleyClient) -> None:
    user, session = await a_session(client)
    (message,) = await some_messages(client, session.id, 1)
    await asyncio.gather(
        *(client.rate_message(message.id, user_id=user.id, value=1 + n % 5) for n in range(10))
    )
    assert (await client.get_rating_summary(message_id=message.id)).count == 1


async def test_summaries(client: ParleyClient) -> None:
    owner, session = await a_session(client)
    raters = [owner, *[await a_user(client) for _ in range(2)]]
    first, second, unrated = await some_messages(client, session.id, 3)
    for rater, value in zip(raters, (5, 4, 2), strict=True):
        await client.rate_message(first.id, user_id=rater.id, value=value)
    await client.rate_message(second.id, user_id=owner.id, value=1)

    one = await client.get_rating_summary(message_id=first.id)
    assert one.count == 3
    assert one.mean == pytest.approx(11 / 3)
    whole = await client.get_rating_summary(session_id=session.id)
    assert whole.count == 4
    assert whole.mean == pytest.approx(3.0)
    none = await client.get_rating_summary(message_id=unrated.id)
    assert (none.count, none.mean) == (0, 0.0)


async def test_list_filters(client: ParleyClient) -> None:
    owner, session = await a_session(client)
    other = await a_user(client)
    first, second = await some_messages(client, session.id, 2)
    a = await client.rate_message(first.id, user_id=owner.id, value=3)
    b = await client.rate_message(first.id, user_id=other.id, value=4)
    c = await client.rate_message(second.id, user_id=other.id, value=5)
    assert [r.id async for r in client.iter_ratings(session_id=session.id)] == [a.id, b.id, c.id]
    assert [r.id async for r in client.iter_ratings(user_id=other.id)] == [b.id, c.id]
    both = client.iter_ratings(user_id=other.id, message_id=first.id)
    assert [r.id async for r in both] == [b.id]
    paged = client.iter_ratings(session_id=session.id, page_size=1)
    assert [r.id async for r in paged] == [a.id, b.id, c.id]


@pytest.mark.parametrize("value", [0, 6, -1, 100])
async def test_value_outside_one_to_five_is_invalid(client: ParleyClient, value: int) -> None:
    user, session = await a_session(client)
    (message,) = await some_messages(client, session.id, 1)
    with pytest.raises(InvalidArgumentError) as caught:
        await client.rate_message(message.id, user_id=user.id, value=value)
    assert caught.value.field_violations[0].field == "value"
    assert (await client.get_rating_summary(message_id=message.id)).count == 0


async def test_rating_errors(client: ParleyClient) -> None:
    user, session = await a_session(client)
    (message,) = await some_messages(client, session.id, 1)
    with pytest.raises(NotFoundError) as missing_message:
        await client.rate_message(new_id(), user_id=user.id, value=3)
    assert missing_message.value.reason == "MESSAGE_NOT_FOUND"
    with pytest.raises(NotFoundError) as missing_user:
        await client.rate_message(message.id, user_id=new_id(), value=3)
    assert missing_user.value.reason == "USER_NOT_FOUND"
    with pytest.raises(InvalidArgumentError):
        await client.rate_message(message.id, user_id="", value=3)
    with pytest.raises(NotFoundError):
        await client.get_rating_summary(session_id=new_id())
    with pytest.raises(NotFoundError):
        await client.list_ratings(message_id=new_id())
    with pytest.raises(ValueError, match="exactly one"):
        await client.get_rating_summary()


async def test_summary_needs_a_scope(raw: RawCall) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await raw("GetRatingSummary", pb.GetRatingSummaryRequest())
    assert caught.value.field_violations[0].field == "scope"


async def test_delete_rating(client: ParleyClient) -> None:
    user, session = await a_session(client)
    (message,) = await some_messages(client, session.id, 1)
    rating = await client.rate_message(message.id, user_id=user.id, value=4)
    await client.delete_rating(rating.id)
    assert (await client.get_rating_summary(message_id=message.id)).count == 0
    with pytest.raises(NotFoundError):
        await client.delete_rating(rating.id)
    await client.delete_rating(rating.id, allow_missing=True)
