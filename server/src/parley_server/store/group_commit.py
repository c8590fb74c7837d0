"""Group commit: appends that arrive while another is being written go to the database together.

Agents append on every turn, and each append alone pays a round trip, a statement and a commit.
Under load the writer coalesces: the appends that queued while one statement ran are written by
the next statement, in one round trip and one commit, which costs the database a fraction of the
CPU per append. Nothing waits on purpose, so a lone client sees no extra latency.

Appends are spread over lanes by session id. A lane runs one statement at a time, so a session's
appends are written in the order they arrived, and two statements in flight never touch the same
session (so they cannot deadlock each other). Every caller is answered only after the statement
carrying its append has committed. A statement that failed in a way that wrote nothing (a taken
id, a missing author, a value the database or its driver refused: anything but a lost connection)
is split in halves and retried until the error reaches only the appends that caused it, so one
caller's bad append never fails another's. A failure after which the statement may or may not
have committed (a lost connection) reaches every append of the statement as it is.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Row = dict[str, Any]
W = TypeVar("W")
# Writes the rows of several appends in one statement with the writer (a connection); returns each
# row's seq by (tenant_id, id), with no entry for the rows of a session that is closed or missing.
WriteBatch = Callable[[W, list[Row]], Awaitable[dict[tuple[str, str], int]]]

MAX_ROWS_PER_STATEMENT = 2000


@dataclass(eq=False)
class _Append:
    rows: list[Row]
    done: asyncio.Future[list[int] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit(Generic[W]):
    def __init__(
        self,
        open_writer: Callable[[int], AbstractAsyncContextManager[W]],
        write_batch: WriteBatch[W],
        *,
        lanes: int,
        wrote_nothing: Callable[[Exception], bool],
    ) -> None:
        """open_writer: the lane's connection for a run of statements (while the lane is busy).
        wrote_nothing: whether a statement that raised this wrote nothing (and can be split up)."""
        self._open_writer = open_writer
        self._write_batch = write_batch
        self._wrote_nothing = wrote_nothing
        self._queues: list[deque[_Append]] = [deque() for _ in range(lanes)]
        self._drains: list[asyncio.Task[None] | None] = [None] * lanes

    async def append(self, session_id: str, rows: list[Row]) -> list[int] | None:
        """Write rows (all of session_id) atomically; their seqs, or None if the session is closed
        or missing. Raises what writing them alone raised."""
        lane = zlib.crc32(session_id.encode()) % len(self._queues)
        pending = _Append(rows)
        self._queues[lane].append(pending)
        if self._drains[lane] is None:
            # The drain runs in a task of its own: cancelling one caller never strands the others.
            self._drains[lane] = asyncio.create_task(self._drain(lane))
        return await pending.done

    async def _drain(self, lane: int) -> None:
        queue = self._queues[lane]
        try:
            while queue:
                batch = _next_batch(queue)
                try:
                    async with self._open_writer(lane) as writer:
                        while batch:
                            await self._write(writer, batch)
                            batch = _next_batch(queue)
                except Exception as error:
                    # No writer to be had, or it broke (and was discarded on the way out): fail what
                    # was taken and go on with a new one for the rest.
                    for pending in batch:
                        _settle(pending, error=error)
        finally:
            self._drains[lane] = None

    async def _write(self, writer: W, batch: list[_Append]) -> None:
        try:
            seqs = await self._write_batch(
                writer, [row for pending in batch for row in pending.rows]
            )
        except Exception as error:
            if not self._wrote_nothing(error):
                for pending in batch:
                    _settle(pending, error=error)
                raise  # so the writer's context sees it, and discards a broken connection
            if len(batch) == 1:
                _settle(batch[0], error=error)
                return
            middle = len(batch) // 2  # nothing was written: find the appends at fault
            await self._write(writer, batch[:middle])
            await self._write(writer, batch[middle:])
            return
        for pending in batch:
            found = [seqs.get((row["tenant_id"], row["id"])) for row in pending.rows]
            _settle(pending, result=None if None in found else [s for s in found if s is not None])


def _next_batch(queue: deque[_Append]) -> list[_Append]:
    """The oldest waiting appends, up to MAX_ROWS_PER_STATEMENT rows (at least one append)."""
    batch: list[_Append] = []
    size = 0
    while queue and (not batch or size + len(queue[0].rows) <= MAX_ROWS_PER_STATEMENT):
        pending = queue.popleft()
        if not pending.done.cancelled():  # its caller is gone and it is not written yet
            batch.append(pending)
            size += len(pending.rows)
    return batch


def _settle(
    pending: _Append, *, result: list[int] | None = None, error: BaseException | None = None
) -> None:
    if pending.done.done():  # the caller gave up meanwhile
        return
    if error is not None:
        pending.done.set_exception(error)
    else:
        pending.done.set_result(result)
