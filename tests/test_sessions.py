"""Sessions: create, get, list, update, close, delete (cascading), get-or-create, latest."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import text, update

from parley_client import (
    AlreadyExistsError,
    ClientInfo,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
    new_message,
)
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1 import session_pb2
from parley_server.store.database import Database
from parley_server.store.tables import sessions
from tests.conftest import RawCall
from tests.factories import a_session, a_user, new_id


async def test_create_and_get_round_trip(client: ParleyClient) -> None:
    user = await a_user(client)
    info = ClientInfo(ip_address="2001:db8::1", user_agent="agent/1.0", device="pixel 9")
    created = await client.create_session(
        user_id=user.id,
        title="Trip planning",
        metadata={"channel": "web", "tags": ["travel", "eu"], "priority": 2},
        client_info=info,
    )
    assert created.user_id == user.id
    assert created.title == "Trip planning"
    assert created.client_info == info
    assert created.metadata["tags"] == ["travel", "eu"]
    assert created.message_count == 0
    assert created.last_seq == 0
    assert not created.HasField("end_time")
    assert not created.HasField("last_message_time")
    assert await client.get_session(created.id) == created


async def test_session_without_a_user(client: ParleyClient) -> None:
    created = await client.create_session(title="anonymous")
    assert created.user_id == ""
    assert (await client.get_session(created.id)).title == "anonymous"


async def test_create_for_a_missing_user_is_not_found(client: ParleyClient) -> None:
    missing = new_id()
    with pytest.raises(NotFoundError) as caught:
        await client.create_session(user_id=missing)
    assert caught.value.metadata["resourceId"] == missing


async def test_duplicate_session_id_is_already_exists(client: ParleyClient) -> None:
    chosen = new_id()
    await client.create_session(id=chosen)
    with pytest.raises(AlreadyExistsError):
        await client.create_session(id=chosen, title="another")


async def test_bad_ip_address_is_invalid_argument(client: ParleyClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_session(client_info=ClientInfo(ip_address="10.0.0.300"))
    assert caught.value.field_violations[0].field == "session.client_info.ip_address"


async def test_get_missing_and_malformed(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_session(new_id())
    with pytest.raises(InvalidArgumentError):
        await client.get_session("session 1")


async def test_list_by_user_newest_first(client: ParleyClient) -> None:
    user, other = await a_user(client), await a_user(client)
    mine = [await client.create_session(user_id=user.id, title=f"s{n}") for n in range(4)]
    await client.create_session(user_id=other.id)
    response = await client.list_sessions(user_id=user.id)
    assert [s.id for s in response.sessions] == [s.id for s in reversed(mine)]
    assert response.total_size == 4
    assert response.next_page_token == ""


async def test_list_sessions_of_a_missing_user_is_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.list_sessions(user_id=new_id())


async def test_list_every_session(client: ParleyClient) -> None:
    created = [await client.create_session(title=f"s{n}") for n in range(3)]
    listed = [s.id async for s in client.iter_sessions(page_size=2)]
    assert listed == [s.id for s in reversed(created)]


async def test_update_title_and_metadata(client: ParleyClient) -> None:
    _, session = await a_session(client)
    updated = await client.update_session(session.id, title="renamed", metadata={"k": "v"})
    assert (updated.title, dict(updated.metadata)) == ("renamed", {"k": "v"})
    assert updated.update_time.ToDatetime() > session.update_time.ToDatetime()
    assert (
        await client.update_session(session.id, metadata={})
    ).metadata == updated.metadata.__class__()


async def test_user_id_cannot_change(client: ParleyClient, raw: RawCall) -> None:
    _, session = await a_session(client)
    request = pb.UpdateSessionRequest(
        session=session_pb2.Session(id=session.id, user_id=new_id()),
        update_mask=FieldMask(paths=["user_id"]),
    )
    with pytest.raises(InvalidArgumentError) as caught:
        await raw("UpdateSession", request)
    assert "cannot be changed" in caught.value.field_violations[0].description


async def test_close_then_append_is_failed_precondition(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.append_message(session.id, role="user", content="before")
    closed = await client.close_session(session.id)
    assert closed.HasField("end_time")

    with pytest.raises(FailedPreconditionError) as caught:
        await client.append_message(session.id, role="user", content="after")
    assert caught.value.reason == "SESSION_CLOSED"
    with pytest.raises(FailedPreconditionError):
        await client.batch_append_messages(session.id, [new_message(role="user", content="after")])
    after = await client.get_session(session.id)
    assert (after.message_count, after.last_seq) == (1, 1)  # nothing half-written

    # Closing again is harmless and keeps the first end_time.
    assert (await client.close_session(session.id)).end_time == closed.end_time


async def test_close_missing_is_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.close_session(new_id())


async def test_delete_cascades_to_messages_contexts_and_ratings(client: ParleyClient) -> None:
    user, session = await a_session(client)
    message = await client.append_message(session.id, role="assistant", content="hello")
    context = await client.create_context(session.id, type="system", content="be brief")
    rating = await client.rate_message(message.id, user_id=user.id, value=5)

    await client.delete_session(session.id)

    with pytest.raises(NotFoundError):
        await client.get_session(session.id)
    with pytest.raises(NotFoundError):
        await client.get_message(message.id)
    with pytest.raises(NotFoundError):
        await client.get_context(context.id)
    assert [r async for r in client.iter_ratings(user_id=user.id)] == []
    with pytest.raises(NotFoundError):
        await client.delete_rating(rating.id)
    assert (await client.get_user(user.id)).id == user.id  # the owner stays


async def test_delete_missing_session(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.delete_session(new_id())
    await client.delete_session(new_id(), allow_missing=True)


async def test_get_or_create_open_session(client: ParleyClient) -> None:
    user = await a_user(client)
    first = await client.get_or_create_open_session(user.id, title="fresh", metadata={"a": 1})
    assert first.created
    assert (first.session.title, first.session.user_id) == ("fresh", user.id)

    again = await client.get_or_create_open_session(user.id, title="ignored")
    assert (again.created, again.session.id) == (False, first.session.id)

    await client.close_session(first.session.id)
    replacement = await client.get_or_create_open_session(user.id)
    assert replacement.created
    assert replacement.session.id != first.session.id


async def test_get_or_create_with_a_template_id_already_taken(
    client: ParleyClient, raw: RawCall
) -> None:
    """The template names a session id another session has: ALREADY_EXISTS, not INTERNAL."""
    _, taken = await a_session(client)
    user = await a_user(client)  # no open session yet, so one is to be made
    request = pb.GetOrCreateOpenSessionRequest(
        user_id=user.id, session_template=session_pb2.Session(id=taken.id)
    )
    with pytest.raises(AlreadyExistsError):
        await raw("GetOrCreateOpenSession", request)


async def test_get_or_create_is_race_free(client: ParleyClient) -> None:
    user = await a_user(client)
    results = await asyncio.gather(*(client.get_or_create_open_session(user.id) for _ in range(20)))
    assert len({r.session.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert (await client.list_sessions(user_id=user.id)).total_size == 1


async def test_get_or_create_for_a_missing_user(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_or_create_open_session(new_id())
    with pytest.raises(InvalidArgumentError):
        await client.get_or_create_open_session("")


async def test_latest_session_is_the_most_recently_active(client: ParleyClient) -> None:
    user = await a_user(client)
    older = await client.create_session(user_id=user.id, title="older")
    newer = await client.create_session(user_id=user.id, title="newer")
    assert (await client.get_latest_session(user.id)).id == newer.id
    await client.append_message(older.id, role="user", content="back to this one")
    assert (await client.get_latest_session(user.id)).id == older.id


async def test_latest_session_orders_by_the_exact_update_time_across_and_within_minutes(
    client: ParleyClient, database: Database
) -> None:
    user = await a_user(client)
    first = (await client.create_session(user_id=user.id)).id
    second = (await client.create_session(user_id=user.id)).id

    async def updated_at(session_id: str, time: datetime) -> None:
        async with database.write() as session:
            await session.execute(
                update(sessions).where(sessions.c.id == session_id).values(update_time=time)
            )

    minute = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    await updated_at(first, minute + timedelta(seconds=59, microseconds=999_999))
    await updated_at(second, minute + timedelta(minutes=1))
    assert (await client.get_latest_session(user.id)).id == second
    await updated_at(first, minute + timedelta(minutes=1, microseconds=1))
    assert (await client.get_latest_session(user.id)).id == first


async def test_appends_update_their_session_row_in_place(
    client: ParleyClient, backend: str, database: Database
) -> None:
    """Every append updates its session's row (last_seq, message_count, update_time, ...).
    PostgreSQL writes the new version beside the old one without touching the table's indexes (a
    HOT update) only if no indexed column changes; otherwise each append adds an entry to every
    index of sessions, which bloats them and costs the database CPU on every append."""
    if backend != "postgres":
        pytest.skip("HOT updates are PostgreSQL's")
    _, session = await a_session(client)
    appends = 20
    for turn in range(appends):
        await client.append_message(session.id, role="user", content=f"turn {turn}")
    updated, in_place = await _session_updates(database, at_least=appends)
    # A minute boundary crossed between two appends changes the indexed minute once.
    assert in_place >= updated - 1, f"{updated - in_place} of {updated} updates rewrote indexes"


async def _session_updates(database: Database, *, at_least: int) -> tuple[int, int]:
    """(updates, of which HOT) of sessions, once the server's connections have reported at least
    `at_least` updates (each reports within about a second of going idle)."""
    async with asyncio.timeout(15):
        while True:
            async with database.read() as session:
                updated, in_place = (
                    await session.execute(
                        text(
                            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                            " WHERE relname = 'sessions'"
                        )
                    )
                ).one()
            if updated >= at_least:
                return int(updated), int(in_place)
            await asyncio.sleep(0.1)  # another process's statistics: poll them


async def test_latest_session_of_a_user_without_any(client: ParleyClient) -> None:
    user = await a_user(client)
    with pytest.raises(NotFoundError) as caught:
        await client.get_latest_session(user.id)
    assert caught.value.reason == "SESSION_NOT_FOUND"
    with pytest.raises(NotFoundError) as missing:
        await client.get_latest_session(new_id())
    assert missing.value.reason == "USER_NOT_FOUND"
