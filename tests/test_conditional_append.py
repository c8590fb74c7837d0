"""Conditional appends (expected_last_seq): the append lands only where its caller expected the
session to be, atomically, or nothing is written and the caller learns where the session is."""

from __future__ import annotations

import asyncio

import pytest

from parley_client import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
    new_message,
)
from tests.factories import a_session, new_id


async def _seqs(client: ParleyClient, session_id: str) -> list[int]:
    return [m.seq async for m in client.stream_messages(session_id)]


async def test_an_append_lands_only_at_the_expected_last_seq(client: ParleyClient) -> None:
    _, session = await a_session(client)
    first = await client.append_message(
        session.id, role="user", content="first", expected_last_seq=0
    )
    assert first.seq == 1
    with pytest.raises(AbortedError) as stale:
        await client.append_message(session.id, role="user", content="late", expected_last_seq=0)
    assert stale.value.reason == "LAST_SEQ_MISMATCH"
    assert stale.value.metadata["lastSeq"] == "1"
    assert "last seq is 1, not the expected 0" in stale.value.message
    batch = await client.batch_append_messages(
        session.id,
        [new_message(role="assistant", content=f"b{n}") for n in range(3)],
        expected_last_seq=1,
    )
    assert [m.seq for m in batch] == [2, 3, 4]
    with pytest.raises(AbortedError):  # the whole batch or nothing
        await client.batch_append_messages(
            session.id,
            [new_message(role="user", content="x") for _ in range(2)],
            expected_last_seq=3,
        )
    assert await _seqs(client, session.id) == [1, 2, 3, 4]
    assert (await client.get_session(session.id)).message_count == 4


async def test_of_concurrent_appends_at_one_seq_exactly_one_lands(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.append_message(session.id, role="user", content="start")
    outcomes = await asyncio.gather(
        *(
            client.append_message(
                session.id, role="assistant", content=f"candidate {n}", expected_last_seq=1
            )
            for n in range(20)
        ),
        return_exceptions=True,
    )
    landed = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, AbortedError)]
    assert len(landed) == 1
    assert len(refused) == 19
    assert await _seqs(client, session.id) == [1, 2]


async def test_a_retried_conditional_append_that_landed_returns_the_stored_message(
    client: ParleyClient,
) -> None:
    _, session = await a_session(client)
    message_id = new_id()
    stored = await client.append_message(
        session.id, id=message_id, role="user", content="once", expected_last_seq=0
    )
    again = await client.append_message(
        session.id, id=message_id, role="user", content="once", expected_last_seq=0
    )
    assert again == stored
    assert await _seqs(client, session.id) == [1]


async def test_a_conditional_append_to_a_closed_missing_or_bad_target(
    client: ParleyClient,
) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError, match="expected_last_seq"):
        await client.append_message(session.id, role="user", content="x", expected_last_seq=-1)
    with pytest.raises(NotFoundError):
        await client.append_message(new_id(), role="user", content="x", expected_last_seq=0)
    await client.close_session(session.id)
    with pytest.raises(FailedPreconditionError):
        await client.append_message(session.id, role="user", content="x", expected_last_seq=0)
