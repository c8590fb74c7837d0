"""ParleyClient behaviour that needs no database: lifecycle, retries, metadata, role names.

A fake ParleyService that fails on cue stands in for the server, over real gRPC on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from parley_client import (
    ClientClosedError,
    NotFoundError,
    ParleyClient,
    RetryPolicy,
    Role,
    UnavailableError,
    new_message,
    to_role,
)
from parley_client._gen.parley.v1 import message_pb2, user_pb2
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.parley_service_pb2_grpc import (
    ParleyServiceServicer,
    add_ParleyServiceServicer_to_server,
)

FAST = RetryPolicy(initial_interval=0.001, max_interval=0.01, max_attempts=4)
Context = grpc.aio.ServicerContext[Any, Any]


class FlakyService(ParleyServiceServicer):
    """Fails the first `failures` calls of each method with `code`, then answers."""

    def __init__(self) -> None:
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.attempts: dict[str, int] = {}
        self.metadata: list[dict[str, str]] = []

    async def _attempt(self, method: str, context: Context) -> None:
        self.attempts[method] = self.attempts.get(method, 0) + 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]
        if self.attempts[method] <= self.failures:
            await context.abort(self.code, "try again")

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> user_pb2.User:
        await self._attempt("GetUser", context)
        return user_pb2.User(id=request.id)

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Context) -> user_pb2.User:
        await self._attempt("UpdateUser", context)
        return request.user

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> user_pb2.User:
        await self._attempt("CreateUser", context)
        return request.user

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Context) -> Any:
        await self._attempt("DeleteUser", context)
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such user")


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyService, str]]:
    service = FlakyService()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED for the rest
    server = grpc.aio.server()
    add_ParleyServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_reads_retry_unavailable_until_they_succeed(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    service.failures = 2
    async with ParleyClient(target) as client:
        user = await client.get_user("u1", retry=FAST)
    assert user.id == "u1"
    assert service.attempts["GetUser"] == 3


async def test_retries_stop_at_max_attempts(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    service.failures = 10
    async with ParleyClient(target) as client:
        with pytest.raises(UnavailableError):
            await client.get_user("u1", retry=FAST)
    assert service.attempts["GetUser"] == FAST.max_attempts


async def test_safe_calls_retry_by_default(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    service.failures = 1
    async with ParleyClient(target) as client:
        await client.get_user("u1")
        await client.update_user("u1", display_name="x")
        await client.create_user(display_name="no id given")
    assert service.attempts == {"GetUser": 2, "UpdateUser": 2, "CreateUser": 2}


async def test_retry_false_makes_one_attempt(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    service.failures = 1
    async with ParleyClient(target) as client:
        with pytest.raises(UnavailableError):
            await client.get_user("u1", retry=False)
    assert service.attempts["GetUser"] == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
async def test_reads_and_idempotent_writes_retry(
    flaky: tuple[FlakyService, str], code: grpc.StatusCode
) -> None:
    service, target = flaky
    service.failures, service.code = 1, code
    async with ParleyClient(target) as client:
        assert (await client.get_user("u1", retry=FAST)).id == "u1"
        await client.update_user("u1", display_name="x", retry=FAST)
        await client.create_user(id="4b5a1c36-cc0b-4d54-9f5e-0e8a2d0b7a10", retry=FAST)
    assert service.attempts == {"GetUser": 2, "UpdateUser": 2, "CreateUser": 2}


async def test_creates_carry_an_id_so_a_repeat_is_recognised(
    flaky: tuple[FlakyService, str],
) -> None:
    service, target = flaky
    service.failures = 1
    async with ParleyClient(target) as client:
        user = await client.create_user(display_name="no id given")
    assert user.id  # FlakyService echoes the request: the client chose one
    assert new_message(role="user").id != new_message(role="user").id


async def test_a_delete_that_may_have_landed_refuses_retry(
    flaky: tuple[FlakyService, str],
) -> None:
    service, target = flaky
    service.failures = 1
    async with ParleyClient(target) as client:
        with pytest.raises(ValueError, match="allow_missing"):
            await client.delete_user("u1", retry=FAST)
        with pytest.raises(UnavailableError):  # and by default makes one attempt
            await client.delete_user("u1")
    assert service.attempts == {"DeleteUser": 1}


async def test_other_errors_are_never_retried(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    async with ParleyClient(target) as client:
        with pytest.raises(NotFoundError):
            await client.delete_user("u1", allow_missing=True, retry=FAST)
    assert service.attempts["DeleteUser"] == 1


async def test_metadata_reaches_the_server(flaky: tuple[FlakyService, str]) -> None:
    service, target = flaky
    async with ParleyClient(target, metadata={"X-Api-Key": "k1"}) as client:
        await client.get_user("u1", call_metadata={"x-request-id": "r-7"})
    assert service.metadata[0]["x-api-key"] == "k1"
    assert service.metadata[0]["x-request-id"] == "r-7"


async def test_a_closed_client_refuses_reuse(flaky: tuple[FlakyService, str]) -> None:
    _, target = flaky
    client = await ParleyClient.connect(target)
    assert (await client.get_user("u1")).id == "u1"
    await client.close()
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.get_user("u1")
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    await client.close()  # closing twice is harmless

    async with ParleyClient(target) as scoped:
        await scoped.get_user("u1")
    with pytest.raises(ClientClosedError):
        await scoped.get_user("u1")


async def test_connect_to_nothing_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="no parley server answered"):
        await ParleyClient.connect("127.0.0.1:1", connect_timeout=0.5)


def test_retry_policy_backs_off_within_bounds() -> None:
    policy = RetryPolicy(initial_interval=0.1, multiplier=2, max_interval=0.3, max_attempts=5)
    delays = list(policy.delays())
    assert len(delays) == 4
    for delay, nominal in zip(delays, [0.1, 0.2, 0.3, 0.3], strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("user", Role.ROLE_USER),
        ("Assistant", Role.ROLE_ASSISTANT),
        ("ROLE_TOOL", Role.ROLE_TOOL),
        (Role.ROLE_SYSTEM, Role.ROLE_SYSTEM),
    ],
)
def test_role_names(name: Any, expected: int) -> None:
    assert to_role(name) == expected
    assert new_message(role=name).role == expected


def test_unknown_role_name() -> None:
    with pytest.raises(ValueError, match="system, user, assistant, tool"):
        to_role("robot")


class CutStream(ParleyServiceServicer):
    """Streams seqs 1..10, but the first call is cut with UNAVAILABLE after seq 4."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    async def StreamMessages(
        self, request: pb.StreamMessagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamMessagesResponse]:
        self.requests.append(request.after_seq)
        for seq in range(request.after_seq + 1, 11):
            yield pb.StreamMessagesResponse(messages=[message_pb2.Message(seq=seq)])
            if len(self.requests) == 1 and seq == 4:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")


async def test_a_cut_stream_resumes_where_it_stopped() -> None:
    service = CutStream()  # type: ignore[abstract]  # the base answers UNIMPLEMENTED for the rest
    server = grpc.aio.server()
    add_ParleyServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ParleyClient(f"127.0.0.1:{port}") as client:
            seqs = [m.seq async for m in client.stream_messages("s", retry=FAST)]
            assert seqs == list(range(1, 11))
            assert service.requests == [0, 4]
            service.requests.clear()
            with pytest.raises(UnavailableError):
                _ = [m async for m in client.stream_messages("s", retry=False)]  # the cut surfaces
    finally:
        await server.stop(None)


async def test_one_client_serves_successive_event_loops(target: str) -> None:
    """Frameworks run agents in loops of their own (asyncio.run, run_sync): a client made once
    must keep working in each, though an asyncio channel serves only the loop it was made in."""
    parley = ParleyClient(target)

    async def one_call() -> str:
        return (await parley.create_session()).id

    def three_loops() -> list[str]:
        return [asyncio.run(one_call()) for _ in range(3)]

    assert len(set(await asyncio.to_thread(three_loops))) == 3
    await parley.close()


async def test_one_client_serves_threads_with_loops_of_their_own(target: str) -> None:
    """Threads that each run their own event loop (a sync web app calling run_sync) share one
    client at once: each loop gets its own channel, none steals another's mid-call."""
    parley = ParleyClient(target)
    session = await parley.create_session()

    async def append() -> None:
        await parley.append_message(session.id, role="user")

    def worker() -> None:
        for _ in range(10):  # a loop per call: channels are opened and dropped all the time
            asyncio.run(append())

    def five_threads() -> None:
        threads = [threading.Thread(target=worker) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    await asyncio.to_thread(five_threads)
    assert (await parley.get_session(session.id)).last_seq == 50
    await parley.close()
