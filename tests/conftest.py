"""Test harness: each test taking `client` talks to a real parley server on a free loopback port,
over a fresh database of its own, once on SQLite and once on the real PostgreSQL.

Fresh databases are cheap copies of a template that Alembic migrated at the start of the run (so the
migrations are exercised every time): a file copy on SQLite, CREATE DATABASE ... TEMPLATE on
PostgreSQL. PostgreSQL comes from PARLEY_TEST_POSTGRES_URL (default: the local server's `test`
database). When it cannot be reached the PostgreSQL half is skipped, loudly, unless
PARLEY_REQUIRE_POSTGRES=1, which turns the skip into a failure (CI sets it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.message import Message as ProtoMessage
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import make_url

from parley_client import ParleyClient
from parley_client._errors import from_rpc_error
from parley_client._gen.parley.v1.parley_service_pb2_grpc import ParleyServiceStub
from parley_server import app
from parley_server.config import Settings
from parley_server.server import RunningServer
from parley_server.store import Database, Store
from parley_server.store import migrate as migrations
from parley_server.store.database import create_engine

POSTGRES_URL = os.environ.get(
    "PARLEY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("PARLEY_REQUIRE_POSTGRES", "") not in ("", "0", "false")
_SKIP_BANNER = "PostgreSQL tests were SKIPPED"


def property_settings(examples: int) -> settings:
    """The settings of this suite's hypothesis tests: no deadline (they run through a real server
    on shared cores), no example database, and in CI (CI set) a fixed seed."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: runs against the real PostgreSQL server")
    config.addinivalue_line("markers", "chaos: kills processes or restarts a database")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for backend in ("sqlite", "postgres"):
        outcomes = {
            outcome: sum(
                f"[{backend}" in report.nodeid or f"-{backend}" in report.nodeid
                for report in terminalreporter.stats.get(outcome, [])
                if report.when == "call" or outcome == "skipped"
            )
            for outcome in ("passed", "failed", "skipped")
        }
        where = make_url(POSTGRES_URL).render_as_string() if backend == "postgres" else "SQLite"
        terminalreporter.write_line(
            f"{backend} backend ({where}): {outcomes['passed']} passed, "
            f"{outcomes['failed']} failed, {outcomes['skipped']} skipped"
        )
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if _SKIP_BANNER in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.section("POSTGRESQL NOT TESTED", sep="!", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL tests were skipped: {POSTGRES_URL} did not answer."
            " Only the SQLite half of the suite ran. Set PARLEY_TEST_POSTGRES_URL, or"
            " PARLEY_REQUIRE_POSTGRES=1 to make this a failure.",
            red=True,
            bold=True,
        )


# --- databases ------------------------------------------------------------------------------------


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrations.upgrade(engine)
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class PostgresTemplate:
    name: str | None
    problem: str = ""


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "parley.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate]:
    name = f"parley_template_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        yield PostgresTemplate(None, f"{type(error).__name__}: {error}")
        return
    try:
        asyncio.run(_migrate(make_url(POSTGRES_URL).set(database=name).render_as_string(False)))
        yield PostgresTemplate(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_template: PostgresTemplate,
) -> AsyncIterator[str]:
    """A fresh, migrated, empty database of this test's own."""
    if backend == "sqlite":
        path = tmp_path / "parley.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if postgres_template.name is None:
        _skip_or_fail_postgres(postgres_template)
    async with _postgres_database("parley_test", f'TEMPLATE "{postgres_template.name}"') as url:
        yield url


@pytest.fixture
async def empty_database_url(
    backend: str, tmp_path: Path, postgres_template: PostgresTemplate
) -> AsyncIterator[str]:
    """A database with no schema at all (not even Alembic's version table)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    if postgres_template.name is None:
        _skip_or_fail_postgres(postgres_template)
    async with _postgres_database("parley_empty") as url:
        yield url


@asynccontextmanager
async def _postgres_database(prefix: str, options: str = "") -> AsyncIterator[str]:
    """The URL of a new PostgreSQL database of its own (CREATE DATABASE options), dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    await _admin(f'CREATE DATABASE "{name}" {options}')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _skip_or_fail_postgres(template: PostgresTemplate) -> None:
    message = f"{_SKIP_BANNER}: {POSTGRES_URL} unreachable ({template.problem})"
    if REQUIRE_POSTGRES:
        pytest.fail(f"PARLEY_REQUIRE_POSTGRES is set but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(create_engine(database_url))
    yield db
    await db.dispose()


@pytest.fixture
def store(database: Database) -> Store:
    return app.open_store(Settings(), database)


# --- server and client ----------------------------------------------------------------------------


@pytest.fixture
async def running_server(store: Store) -> AsyncIterator[RunningServer]:
    running = await app.start(store, address="127.0.0.1:0")
    yield running
    await running.stop(None, quiet=0)


@pytest.fixture
def target(running_server: RunningServer) -> str:
    return f"127.0.0.1:{running_server.port}"


@pytest.fixture
async def client(target: str) -> AsyncIterator[ParleyClient]:
    async with ParleyClient(target, default_timeout=20) as parley:
        yield parley


RawCall = Callable[[str, ProtoMessage], Awaitable[Any]]


@pytest.fixture
async def raw(target: str) -> AsyncIterator[RawCall]:
    """Call an RPC with a hand-built request through the bare generated stub, as a client in any
    language could, e.g. `await raw("UpdateUser", request)`; errors still arrive as parley_client
    exceptions."""
    channel = grpc.aio.insecure_channel(target)
    stub = ParleyServiceStub(channel)

    async def call(method: str, request: ProtoMessage) -> Any:
        """The response, or for a server stream the list of its responses."""
        try:
            rpc = getattr(stub, method)(request, timeout=20)
            if isinstance(rpc, grpc.aio.UnaryStreamCall):
                return [response async for response in rpc]
            return await rpc
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    yield call
    await channel.close(None)
