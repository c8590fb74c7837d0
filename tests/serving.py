"""`parley serve` in a child process, for tests that crash, signal or kill the server."""

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
