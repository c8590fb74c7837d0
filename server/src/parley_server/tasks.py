"""Work that must not be cut short by its caller's cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_to_end(
    work: Coroutine[Any, Any, T],
    *,
    finished: Callable[[BaseException | None, bool], None] | None = None,
) -> asyncio.Future[T]:
    """`work`'s result, to await. If the awaiting caller is cancelled, `work` still runs to its
    end and only its result is dropped: an await cut short inside a transaction can leave the
    connection (and on SQLite the write lock) held. `finished(error, abandoned)` is called when
    it ends; the error is retrieved either way, so an abandoned failure is never reported as
    unretrieved."""
    task = asyncio.ensure_future(work)
    answer = asyncio.shield(task)

    def done(ended: asyncio.Future[T]) -> None:
        error = None if ended.cancelled() else ended.exception()
        if finished is not None:
            finished(error, answer.cancelled())

    task.add_done_callback(done)
    return answer
