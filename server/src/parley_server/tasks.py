"""Work that must not be cut short by its caller's cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

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
