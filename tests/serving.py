"""`parley serve` in a child process, for tests that crash, signal or kill the server; and what
such tests check afterwards."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

PARLEY = str(Path(sys.executable).parent / "parley")
_SERVING = re.compile(r"serving \S+ on [^ ]+:(\d+)")


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)  # every stderr line so far
    logged: asyncio.Condition = field(default_factory=asyncio.Condition)  # notified per line
    _reader: asyncio.Task[None] | None = None

    async def wait_for_log(self, text: str) -> None:
        """Wait until a line of the server's log contains `text`."""
        async with self.logged:
            await asyncio.wait_for(
                self.logged.wait_for(lambda: any(text in line for line in self.log)), 30
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send signum and wait for the exit code (negative: the signal that ended it)."""
        if self.alive:
            self.process.send_signal(signum)
        code = await asyncio.wait_for(self.process.wait(), 30)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 30)
        return code

    def text(self) -> str:
        return "".join(self.log)


@asynccontextmanager
async def parley_serve(
    database_url: str, *, env: Mapping[str, str] | None = None, port: int = 0
) -> AsyncIterator[ServerProcess]:
    """A running `parley serve` on 127.0.0.1; killed on the way out if it is still up."""
    process = await asyncio.create_subprocess_exec(
        PARLEY, "--database-url", database_url, "serve", "--address", f"127.0.0.1:{port}",
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        assert line, f"parley serve exited before serving:\n{''.join(log)}"
        log.append(line)
        if found := _SERVING.search(line):
            break
    server = ServerProcess(process, int(found.group(1)), log)
    server._reader = asyncio.create_task(_keep_reading(process.stderr, server))
    try:
        yield server
    finally:
        if server.alive:
            process.kill()
            await process.wait()
        await asyncio.wait_for(server._reader, 30)


async def _keep_reading(stream: asyncio.StreamReader, server: ServerProcess) -> None:
    """Drain stderr so the child never blocks on a full pipe."""
    while line := await stream.readline():
        async with server.logged:
            server.log.append(line.decode(errors="replace"))
            server.logged.notify_all()


async def idle_in_transaction(database_url: str) -> int:
    """Connections to this PostgreSQL database left inside a transaction (after giving a
    cancelled call's rollback up to 5 s to finish)."""
    url = make_url(database_url)
    connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        for _ in range(50):
            count: int = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
                url.database,
            )
            if count == 0:
                return 0
            await asyncio.sleep(0.1)  # the server is another process: poll its sessions
        return count
    finally:
        await connection.close()
