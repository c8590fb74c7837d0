"""SyncParleyClient: the same methods, types and errors as ParleyClient, over grpc's sync API.
Its calls block, so each test runs them on a worker thread while the server serves on the loop."""

from __future__ import annotations

import asyncio
import inspect
import threading
from datetime import UTC, datetime

import pytest

from parley_client import (
    AbortedError,
    ClientClosedError,
    NotFoundError,
    ParleyClient,
    SyncParleyClient,
    UnavailableError,
    new_message,
    state_delta,
)
from tests.factories import new_id


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_the_same_methods_with_the_same_signatures() -> None:
    sync, aio = _public(SyncParleyClient), _public(ParleyClient)
    assert set(sync) == set(aio)
    for name, signature in aio.items():
        assert list(sync[name].parameters) == list(signature.parameters), name


def _conversation(target: str) -> None:
    with SyncParleyClient(target, default_timeout=20) as client:
        user = client.create_user(id=f"ada-{new_id()}", display_name="Ada")
        session = client.create_session(user_id=user.id, app="app", state={"k": 1})
        assert dict(session.state) == {"k": 1}
        first = client.append_message(
            session.id,
            role="user",
            content="hi",
            event_time=datetime(2030, 1, 1, tzinfo=UTC),
            state_delta=state_delta(user={"name": "Ada"}),
        )
        assert first.seq == 1
        client.batch_append_messages(
            session.id, [new_message(role="assistant", content=str(n)) for n in range(5)]
        )
        assert [m.seq for m in client.stream_messages(session.id)] == [1, 2, 3, 4, 5, 6]
        assert [m.seq for m in client.iter_messages(session.id, page_size=2)] == [1, 2, 3, 4, 5, 6]
        window = client.get_context_window(session.id, max_messages=2)
        assert [m.content for m in window.messages] == ["3", "4"]
        assert dict(window.session.user_state) == {"name": "Ada"}
        assert dict(client.get_user_state("app", user.id).state) == {"name": "Ada"}
        with pytest.raises(AbortedError) as stale:
            client.append_message(session.id, role="user", expected_last_seq=0)
        assert stale.value.metadata["lastSeq"] == "6"
        with pytest.raises(NotFoundError):
            client.get_session(new_id())
        popped = client.pop_message(session.id)
        assert popped is not None
        assert popped.seq == 6
        assert client.clear_messages(session.id) == 5
        assert [s.id for s in client.iter_sessions(app="app", user_id=user.id)] == [session.id]
        watch = client.watch_session(session.id)
        assert next(watch).WhichOneof("event") == "session"
        watch.close()
    with pytest.raises(ClientClosedError):
        client.get_user(user.id)


async def test_a_conversation_through_the_sync_client(target: str) -> None:
    await asyncio.to_thread(_conversation, target)


async def test_connect_waits_for_the_server_or_says_unavailable(target: str) -> None:
    def connect() -> None:
        with SyncParleyClient.connect(target) as client:
            assert client.list_users().users is not None
        with pytest.raises(UnavailableError):
            SyncParleyClient.connect("127.0.0.1:1", connect_timeout=0.2)

    await asyncio.to_thread(connect)


async def test_calls_from_many_threads_share_one_client(target: str) -> None:
    def appends(client: SyncParleyClient, session_id: str) -> None:
        for _ in range(20):
            client.append_message(session_id, role="user")

    def run() -> int:
        with SyncParleyClient(target) as client:
            session = client.create_session()
            threads = [
                threading.Thread(target=appends, args=(client, session.id)) for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return client.get_session(session.id).last_seq

    assert await asyncio.to_thread(run) == 160
