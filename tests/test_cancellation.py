"""Cancellation everywhere: every RPC, cut at random points by deadlines from 1 ms up and by
clients that leave streams early, against `parley serve` at its default log level. Afterwards
the process is alive, PostgreSQL holds no connection of parley's inside a transaction, and
normal calls succeed."""

from __future__ import annotations

import asyncio
import math
import random

import grpc
from google.protobuf.message import Message as ProtoMessage

from parley_client import ParleyClient
from tests.rpcs import METHODS, STREAMING, World, a_world, rpc, valid_requests
from tests.serving import idle_in_transaction, parley_serve

CUTS_PER_METHOD = 30


def test_every_rpc_has_a_valid_request() -> None:
    requests = valid_requests(World("u", "s", ["m"], "c", "r"), random.Random(0))
    assert sorted(requests) == METHODS


async def test_every_rpc_survives_cancellation_at_any_point(
    database_url: str, backend: str
) -> None:
    rng = random.Random(11)
    async with parley_serve(database_url) as server:
        async with ParleyClient(server.target) as client:
            world = await a_world(client)
        makers = valid_requests(world, rng)
        outcomes: dict[str, int] = {}
        async with grpc.aio.insecure_channel(server.target) as channel:

            async def cut(method: str, request: ProtoMessage) -> None:
                # Deadlines spread evenly on a log scale from 1 ms to 100 ms.
                deadline = math.exp(rng.uniform(math.log(0.001), math.log(0.1)))
                call = rpc(channel, method)(request, timeout=deadline)
                try:
                    if method in STREAMING:
                        async for _ in call:
                            if rng.random() < 0.5:
                                call.cancel()  # a client that leaves the stream early
                                break
                    else:
                        await call
                    outcome = "OK"
                except grpc.aio.AioRpcError as error:
                    outcome = error.code().name
                except asyncio.CancelledError:
                    outcome = "CANCELLED"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

            for method in METHODS:
                await asyncio.gather(
                    *(cut(method, makers[method]()) for _ in range(CUTS_PER_METHOD))
                )
                assert server.alive, server.text()[-3000:]
        assert sum(outcomes.values()) == CUTS_PER_METHOD * len(METHODS)
        assert not {"INTERNAL", "UNKNOWN"} & set(outcomes), outcomes

        async with ParleyClient(server.target) as client:
            appended = await asyncio.gather(
                *(
                    client.append_message(world.session_id, role="user", content="after")
                    for _ in range(20)
                )
            )
            assert len({m.seq for m in appended}) == 20
            window = await client.get_context_window(world.session_id, max_messages=10)
            assert window.messages[-1].content == "after"
            assert (await client.get_user(world.user_id)).id == world.user_id
        if backend == "postgres":
            assert await idle_in_transaction(database_url) == 0
        assert server.alive
        assert await server.stop() == 0, server.text()[-3000:]
