"""Work that must not be cut short by its caller's cancellation."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

# The tasks run_to_end started, until they end: the event loop holds tasks only weakly.
_running: set[asyncio.Task[None]] = set()


def run_to_end(
    work: Coroutine[Any, Any, T],
    *,
    finished: Callable[[BaseException | None, bool], None] | None = None,
) -> asyncio.Future[T]:
    """`work`'s result, to await. If the awaiting caller is cancelled, `work` still runs to its
    end and only its result is dropped: an await cut short inside a transaction can leave the
    connection (and on SQLite the write lock) held. `finished(error, abandoned)` is called when
    it ends; an abandoned failure is passed to it, never left unretrieved."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    async def run() -> None:
        # The task sets the answer itself, rather than a callback once it is done (as
        # asyncio.shield would): the caller wakes one turn of the event loop sooner.
        error: BaseException | None = None
        try:
            result = await work
        except asyncio.CancelledError:  # the task itself was cancelled, as at shutdown
            answer.cancel()
            raise
        except BaseException as failure:
            error = failure
            if not answer.done():
                answer.set_exception(failure)
            if not isinstance(failure, Exception):
                raise
        else:
            if not answer.done():
                answer.set_result(result)
        finally:
            _running.discard(task)
            if finished is not None:
                finished(error, answer.cancelled())

    task = loop.create_task(run())
    _running.add(task)
    return answer


def abandon(answer: asyncio.Future[Any]) -> None:
    """Drop a run_to_end answer that nobody will await: its work still runs to its end, and a
    failure is neither raised nor reported as never retrieved."""
    if not answer.cancel() and not answer.cancelled():
        answer.exception()


class SingleFlight(Generic[K, T]):
    """One run of a piece of work per key at a time: callers that ask for the key while it runs
    share its result (or its failure). It runs in a task of its own, so a caller that is
    cancelled leaves it running for the others."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[T]] = {}

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = self._running[key] = asyncio.create_task(work())
            task.add_done_callback(functools.partial(self._ended, key))
        return await asyncio.shield(task)

    def _ended(self, key: K, task: asyncio.Task[T]) -> None:
        del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have left before it ended
