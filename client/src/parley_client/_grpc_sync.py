"""The names of _grpc_aio.py over grpc's synchronous API, for SyncParleyClient."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

import grpc
from grpc import Channel, RpcError, UnaryUnaryMultiCallable, insecure_channel, secure_channel

T = TypeVar("T")
Fetch: TypeAlias = Callable[[str], tuple[Sequence[T], str]]

sleep = time.sleep


def running_loop() -> object:
    """A sync channel belongs to no event loop: one serves every thread."""
    return None


def finished(loop: object) -> bool:
    return False


def wait_ready(channel: Channel, seconds: float) -> None:
    """TimeoutError unless the channel connects within `seconds`."""
    try:
        grpc.channel_ready_future(channel).result(seconds)
    except grpc.FutureTimeoutError:
        raise TimeoutError from None


def close(channel: Channel) -> None:
    """Close the channel; calls in flight are cancelled."""
    channel.close()


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
