"""The face of grpc's asyncio API that ParleyClient is written against. _grpc_sync.py offers the
same names over grpc's synchronous API, so that SyncParleyClient is ParleyClient with async and
await taken out (scripts/gen_sync_client.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias, TypeVar

from grpc.aio import AioRpcError as RpcError
from grpc.aio import Channel, UnaryUnaryMultiCallable, insecure_channel, secure_channel

T = TypeVar("T")
# Fetches one page of a list: its items and the next page token.
Fetch: TypeAlias = Callable[[str], Awaitable[tuple[Sequence[T], str]]]

sleep = asyncio.sleep


def running_loop() -> object:
    """What a channel belongs to: the event loop it is used from."""
    return asyncio.get_running_loop()


def finished(loop: object) -> bool:
    """Whether the loop a channel belongs to is gone, and the channel with it."""
    return isinstance(loop, asyncio.AbstractEventLoop) and loop.is_closed()


async def wait_ready(channel: Channel, seconds: float) -> None:
    """TimeoutError unless the channel connects within `seconds`."""
    async with asyncio.timeout(seconds):
        await channel.channel_ready()


async def close(channel: Channel) -> None:
    """Close the channel; calls in flight are cancelled."""
    await channel.close(None)


__all__ = [
    "Channel",
    "Fetch",
    "RpcError",
    "UnaryUnaryMultiCallable",
    "close",
    "finished",
    "insecure_channel",
    "running_loop",
    "secure_channel",
    "sleep",
    "wait_ready",
]
