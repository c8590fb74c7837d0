"""Operating the server: health, reflection, graceful shutdown, SIGTERM, ports, schema checks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from parley_client import ParleyClient, UnavailableError
from parley_server import app
from parley_server.config import Settings
from parley_server.server import SERVICE_NAME, RunningServer
from parley_server.store import Store
from tests.factories import a_session

PARLEY = str(Path(sys.executable).parent / "parley")


async def test_health_reports_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lets_grpcurl_call_the_api(target: str) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    listed = await _run(grpcurl, "-plaintext", target, "list")
    assert SERVICE_NAME in listed.split()
    assert "grpc.health.v1.Health" in listed.split()
    created = await _run(
        grpcurl, "-plaintext", "-d", '{"user": {"display_name": "from grpcurl"}}',
        target, f"{SERVICE_NAME}/CreateUser",
    )  # fmt: skip
    assert '"display_name": "from grpcurl"' in created


async def _run(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@contextlib.asynccontextmanager
async def _session_row_locked(database_url: str, session_id: str) -> AsyncIterator[None]:
    """Hold the lock an append needs, so an append RPC waits (deterministically) until released."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(url.database), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    pg = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    transaction = pg.transaction()
    await transaction.start()
    await pg.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
    try:
        yield
    finally:
        await transaction.rollback()
        await pg.close()


async def test_graceful_stop_lets_in_flight_rpcs_finish(
    client: ParleyClient, running_server: RunningServer, database_url: str
) -> None:
    _, session = await a_session(client)
    async with _session_row_locked(database_url, session.id):
        in_flight = asyncio.create_task(
            client.append_message(session.id, role="user", content="in flight")
        )
        # The append is now inside the server, waiting for the lock.
        await asyncio.wait_for(running_server.lifecycle.busy.wait(), 10)
        stopping = asyncio.create_task(running_server.stop(grace=20))
        with pytest.raises(UnavailableError):
            await client.get_session(session.id, retry=False)  # new RPCs are refused meanwhile
        assert not in_flight.done()
        assert not stopping.done()  # stop waits for the in-flight RPC
    message = await asyncio.wait_for(in_flight, 15)  # acknowledged after commit
    assert message.seq == 1
    await asyncio.wait_for(stopping, 15)


async def test_a_taken_port_is_refused(running_server: RunningServer, store: Store) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        await app.start(store, address=f"127.0.0.1:{running_server.port}")


async def test_parley_serve_migrates_sqlite_and_stops_on_sigterm(tmp_path: Path) -> None:
    database = tmp_path / "data" / "parley.db"
    process = await asyncio.create_subprocess_exec(
        PARLEY, "--database-url", f"sqlite+aiosqlite:///{database}",
        "serve", "--address", "127.0.0.1:0",
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        port = None
        while port is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "parley serve exited before serving"
            if found := re.search(r"on 127\.0\.0\.1:(\d+)", line):
                port = int(found.group(1))
        async with ParleyClient(f"127.0.0.1:{port}") as client:
            user = await client.create_user(display_name="first run")
            assert (await client.get_user(user.id)).display_name == "first run"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        rest = (await process.stderr.read()).decode()
        assert "stopped" in rest
        # One log line per RPC: method, status and duration.
        assert re.search(r"/parley\.v1\.ParleyService/CreateUser OK [\d.]+ms", rest), rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert database.exists()


async def test_serving_an_unmigrated_database_needs_parley_migrate(
    empty_database_url: str,
) -> None:
    settings = Settings(database_url=empty_database_url, auto_migrate=False)
    with pytest.raises(SystemExit, match="run `parley migrate`"):
        await app.open_database(settings)

    migrate = await asyncio.create_subprocess_exec(
        PARLEY, "--database-url", empty_database_url, "migrate", stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(migrate.communicate(), 60)
    assert migrate.returncode == 0, stderr.decode()

    database = await app.open_database(settings)
    await database.dispose()
