"""Retries with exponential backoff, on by default where repeating a call is safe."""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry a call that failed with a transient status.

    Attempt n (from 1) waits min(initial_interval * multiplier**(n-1), max_interval) seconds, spread
    by +/- jitter (a fraction) so many clients do not retry in lockstep.
    """

    initial_interval: float = 0.1
    multiplier: float = 2.0
    max_interval: float = 5.0
    max_attempts: int = 5
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0 or self.multiplier < 1:
            raise ValueError("intervals must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delays(self) -> Iterator[float]:
        """The waits before attempts 2, 3, ... max_attempts."""
        interval = self.initial_interval
        for _ in range(self.max_attempts - 1):
            capped = min(interval, self.max_interval)
            spread = capped * self.jitter
            yield max(0.0, capped + random.uniform(-spread, spread))
            interval *= self.multiplier


class Safety(enum.Enum):
    """What repeating a call can do."""

    READ = "read"  # nothing
    # The same state: updates, and creates and appends, which always carry an id (the server
    # answers a repeat of one that landed with the stored resource).
    IDEMPOTENT = "idempotent"
    UNSAFE = "unsafe"  # a different answer: a delete that did happen reports NOT_FOUND


# UNAVAILABLE: the server or database could not take the call (a restart, a blip).
# DEADLINE_EXCEEDED: the attempt ran out of time, whether or not the server acted on it.
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def retryable(safety: Safety, code: grpc.StatusCode) -> bool:
    return safety is not Safety.UNSAFE and code in RETRIED_CODES


DEFAULT_RETRY = RetryPolicy()
