"""make bench: parley's throughput and latency, measured against this machine's own ceilings.

For each backend (PostgreSQL, SQLite) a real `parley serve` process runs over a fresh database, and
this process drives it over gRPC on loopback with closed-loop clients (each sends its next request
when the previous one is answered) at several concurrencies. In the same run it measures ceilings
at the same concurrencies, so every figure reads as a ratio, not as a machine-dependent absolute:

  ceiling 1  the database alone: the same message rows inserted into the same table by raw asyncpg
             (aiosqlite on SQLite) with the same durability, one autocommit INSERT per operation;
  ceiling 2  gRPC alone: a no-op unary RPC (the standard health Check) on the same server process,
             through the same interceptor and options;
  ceiling_read_list, ceiling_read_window, ceiling_stream, ceiling_append (PostgreSQL): a minimal
             gRPC server doing only the database work of each workload, with replies encoded
             beforehand (bench/ceiling_server.py);
  ceiling_stream_from_rows, ceiling_append_parley_path (PostgreSQL; no target's): the same
             server building each stream batch from the rows it reads, under parley's byte
             budget, and appending through parley's own write path (group commit, write lane,
             statement): how much of the stream ceiling and of the append ceilings a server that
             does that work, and nothing of parley's RPC layer, can reach.

Workloads: append, batch_append_10, list_last_50, stream_1000, context_window, and agent_turn (an
append, then the context window of the session just written to: an agent's turn, with no ceiling). A
read's "fraction of ceiling" is its operations per second over its own ceiling's; an append's, over
the smaller of ceilings 1 and 2. Each cell runs in rounds (--rounds), each beside its ceilings, and
the fraction is the median of the rounds'. Open loop: appends and list-last-50 sent at Poisson times
at half the closed loop's capacity, each timed from when it was due. Growth: append and list-last-50
latency at session sizes of 1k, 10k and 100k messages, and the server's memory while streaming the
largest. Live history: commit-to-delivery latency of WatchSession with 1, 10 and 100 watchers on a
session that a writer appends to, and what 1,000 idle watchers cost the server (its memory, its
database connections, and appends beside them, against appends without them in the same run).
Frameworks: each adapter's append and read against the framework's own PostgreSQL store
(bench/frameworks.py). Results go to bench/results/*.json and bench/results/chart.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import grpc
from ceiling_server import CeilingSettings, keep_session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from parley_client import ParleyClient, new_message
from parley_client._gen.parley.v1 import parley_service_pb2, parley_service_pb2_grpc
from parley_server.api import convert

RESULTS = Path(__file__).resolve().parent / "results"
CEILING_SERVER = Path(__file__).resolve().parent / "ceiling_server.py"
POSTGRES_URL = os.environ.get(
    "PARLEY_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
CONTENT = "The quick brown fox jumps over the lazy dog. " * 6  # ~270 characters, a typical turn
SERVICE = "parley.v1.ParleyService"
console = Console(width=max(120, Console().width))

Operation = Callable[[int], Awaitable[None]]


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One workload at one concurrency on one backend."""

    backend: str
    workload: str
    clients: int
    ops_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    operations: int
    errors: int
    # The median over rounds of this workload's ops/s over its ceiling's, both measured in the
    # round: the host drifts between rounds, less within one.
    fraction_of_ceiling: float | None = None
    round_fractions: list[float] = field(default_factory=list)
    # The median over rounds of this p50 over its ceiling's p50 in the same round.
    p50_over_ceiling: float | None = None
    # CPU time per operation, microseconds: where the machine's two cores went.
    cpu_us_per_op: dict[str, float] = field(default_factory=dict)
    # The share of all the machine's cores those processes kept busy. Near 1, more clients only
    # queue for CPU: latency grows with their number, and throughput does not.
    machine_busy: float = 0.0

    @classmethod
    def of(
        cls,
        backend: str,
        workload: str,
        clients: int,
        latencies: list[float],
        elapsed: float,
        errors: int,
        **measured: Any,
    ) -> Cell:
        """The cell of `latencies` (seconds, of the operations answered in `elapsed`)."""
        latencies.sort()
        return cls(
            backend=backend,
            workload=workload,
            clients=clients,
            ops_per_second=len(latencies) / elapsed,
            p50_ms=_percentile(latencies, 0.50) * 1000,
            p95_ms=_percentile(latencies, 0.95) * 1000,
            p99_ms=_percentile(latencies, 0.99) * 1000,
            operations=len(latencies),
            errors=errors,
            **measured,
        )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


_TICKS = os.sysconf("SC_CLK_TCK")
CPU_WATCH: dict[str, Callable[[], list[int]]] = {}  # name -> pids whose CPU time to report


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """Each living process's CPU time so far."""
    used: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    return used


def _cpu_used(before: dict[int, float], pids: list[int]) -> float:
    """CPU time `pids` used since `before`: by each process alive at both ends, and all of it by
    those started since (a database backend whose connection closed meanwhile takes its time with
    it, rather than counting negative)."""
    now = _cpu_seconds(pids)
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items())


def _postgres_pids() -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _read(p / "comm") == "postgres"
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def closed_loop(
    backend: str, workload: str, operation: Operation, clients: int, seconds: float, warmup: float
) -> Cell:
    """`clients` workers, each repeating operation(worker) back to back; latencies after warmup."""
    cpu_before: dict[str, dict[int, float]] = {}

    async def start_cpu_clock() -> None:
        await asyncio.sleep(warmup)
        for name, pids in CPU_WATCH.items():
            cpu_before[name] = _cpu_seconds(pids())

    clock = asyncio.create_task(start_cpu_clock())
    latencies: list[float] = []
    errors: list[BaseException] = []
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    finished_at = measure_from

    async def worker(index: int) -> None:
        nonlocal finished_at
        # Past stop_at only while nothing was measured (an operation begun in the warmup can
        # outlast a short window on a busy machine): every cell has at least one latency or error.
        while (now := time.perf_counter()) < stop_at or not (latencies or errors):
            try:
                await operation(index)
            except Exception as error:
                errors.append(error)
                continue
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)
                finished_at = max(finished_at, done)

    await asyncio.gather(*(worker(i) for i in range(clients)))
    await clock
    used = {name: _cpu_used(cpu_before[name], pids()) for name, pids in CPU_WATCH.items()}
    if errors:
        console.print(f"[red]{workload}@{clients}: {len(errors)} errors, e.g. {errors[0]!r}")
    elapsed = max(finished_at - measure_from, 1e-9)
    return Cell.of(
        backend,
        workload,
        clients,
        latencies,
        elapsed,
        len(errors),
        cpu_us_per_op={
            name: round(seconds_used / max(len(latencies), 1) * 1e6, 1)
            for name, seconds_used in used.items()
        },
        machine_busy=sum(used.values()) / elapsed / (os.cpu_count() or 1),
    )


# --- databases and the server -----------------------------------------------------------------


def _asyncpg_dsn(database_url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy PostgreSQL URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


@asynccontextmanager
async def fresh_database(backend: str) -> AsyncIterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="parley-bench-") as directory:
            yield f"sqlite+aiosqlite:///{directory}/parley.db"
        return
    admin = _asyncpg_dsn(POSTGRES_URL)
    name = f"parley_bench_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(False)
    finally:
        connection = await asyncpg.connect(admin)
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


async def analyze(database_url: str) -> None:
    """Statistics for the rows just written, as autovacuum keeps them on a production database
    (the CI machine's PostgreSQL runs without it). Without them the planner sizes the tables from
    how they were when their indexes were made, empty, and may scan every session of a tenant to
    find one."""
    if make_url(database_url).get_backend_name() != "postgresql":
        return
    connection = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Server:
    address: str
    pid: int


@asynccontextmanager
async def parley_server(database_url: str, extra_env: dict[str, str]) -> AsyncIterator[Server]:
    """A `parley serve` process over database_url (migrated first)."""
    parley = [sys.executable, "-m", "parley_server.cli", "--database-url", database_url]
    migrate = await asyncio.create_subprocess_exec(*parley, "migrate", stderr=subprocess.PIPE)
    _, stderr = await migrate.communicate()
    if migrate.returncode != 0:
        raise SystemExit(f"parley migrate failed: {stderr.decode()}")
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PARLEY_LOG_LEVEL": "WARNING", **extra_env}
    process = await asyncio.create_subprocess_exec(*parley, "serve", "--address", address, env=env)
    try:
        probe = await ParleyClient.connect(address, connect_timeout=30)
        await probe.close()
        CPU_WATCH["server"] = lambda: [process.pid]
        try:
            yield Server(address, process.pid)
        finally:
            CPU_WATCH.pop("server", None)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


# --- workloads --------------------------------------------------------------------------------


@dataclass
class Fixtures:
    """What the workloads read and write, created once per backend."""

    append_sessions: list[str]
    ceiling_sessions: list[str]
    list_session: str
    stream_session: str
    window_session: str


async def _fill(client: ParleyClient, session_id: str, count: int) -> None:
    for start in range(0, count, 1000):
        await client.batch_append_messages(
            session_id,
            [
                new_message(role="user" if n % 2 else "assistant", content=CONTENT)
                for n in range(start, min(start + 1000, count))
            ],
            timeout=120,
        )


async def prepare(client: ParleyClient, max_clients: int) -> Fixtures:
    user = await client.create_user(display_name="bench")

    async def sessions(count: int) -> list[str]:
        return [(await client.create_session(user_id=user.id)).id for _ in range(count)]

    append_sessions, ceiling_sessions = await sessions(max_clients), await sessions(max_clients)
    list_session, stream_session, window_session = await sessions(3)
    await _fill(client, list_session, 1000)
    await _fill(client, stream_session, 1000)
    for kind in ("system", "user", "file"):
        await client.create_context(window_session, type=kind, content=CONTENT)
    await _fill(client, window_session, 500)
    return Fixtures(append_sessions, ceiling_sessions, list_session, stream_session, window_session)


def workloads(clients: list[ParleyClient], fixtures: Fixtures) -> dict[str, Operation]:

    async def append(i: int) -> None:
        await clients[i].append_message(fixtures.append_sessions[i], role="user", content=CONTENT)

    async def batch_append(i: int) -> None:
        batch = [new_message(role="user", content=CONTENT) for _ in range(10)]  # fresh ids
        await clients[i].batch_append_messages(fixtures.append_sessions[i], batch)

    async def list_last_50(i: int) -> None:
        page = await clients[i].list_messages(
            fixtures.list_session, page_size=50, newest_first=True
        )
        assert len(page.messages) == 50

    async def stream_1000(i: int) -> None:
        count = 0
        async for _ in clients[i].stream_messages(fixtures.stream_session):
            count += 1
        assert count == 1000

    async def context_window(i: int) -> None:
        window = await clients[i].get_context_window(fixtures.window_session, max_messages=50)
        assert len(window.messages) == 50

    async def agent_turn(i: int) -> None:
        # An agent's turn: it appends what was said, then rebuilds its window from the session it
        # just wrote to, so the read is never one the history cache has kept.
        said = await clients[i].append_message(
            fixtures.append_sessions[i], role="user", content=CONTENT
        )
        window = await clients[i].get_context_window(fixtures.append_sessions[i], max_messages=50)
        assert window.messages[-1].id == said.id

    return {
        "append": append,
        "batch_append_10": batch_append,
        "list_last_50": list_last_50,
        "stream_1000": stream_1000,
        "context_window": context_window,
        "agent_turn": agent_turn,
    }


# --- ceilings ---------------------------------------------------------------------------------


def _message_row(session_id: str, seq: int) -> tuple[Any, ...]:
    return (str(uuid.uuid4()), session_id, seq, "user", CONTENT, datetime.now(UTC))


_CEILING_SEQS = itertools.count(10_000_000)  # far above what parley assigns these sessions
_INSERT_COLUMNS = (
    "tenant_id, id, session_id, seq, role, content, create_time, name, tool_call_id,"
    " invocation_id,"
    " thread_id, chapter"
)


async def database_ceiling(
    backend: str,
    database_url: str,
    sessions: list[str],
    clients: int,
    seconds: float,
    warmup: float,
) -> Cell:
    """Ceiling 1: the same rows into the same table, one autocommit INSERT each, no gRPC."""
    if make_url(database_url).get_backend_name() == "postgresql":
        pool = await asyncpg.create_pool(
            _asyncpg_dsn(database_url), min_size=clients, max_size=clients, reset=keep_session
        )
        sql = (
            f"INSERT INTO messages ({_INSERT_COLUMNS})"
            " VALUES ('default', $1, $2, $3, $4, $5, $6, '', '', '', '', '')"
        )

        async def insert(i: int) -> None:
            async with pool.acquire() as connection:
                await connection.execute(sql, *_message_row(sessions[i], next(_CEILING_SEQS)))

        try:
            return await closed_loop(
                backend, "ceiling_1_database", insert, clients, seconds, warmup
            )
        finally:
            await pool.close()

    path = str(make_url(database_url).database)
    connections = [await aiosqlite.connect(path, isolation_level=None) for _ in range(clients)]
    for connection in connections:  # the same durability and waiting as parley's own connections
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000"):
            await connection.execute(f"PRAGMA {pragma}")
    sql = (
        f"INSERT INTO messages ({_INSERT_COLUMNS})"
        " VALUES ('default', ?, ?, ?, ?, ?, ?, '', '', '', '', '')"
    )

    async def insert_sqlite(i: int) -> None:
        # Session ids are kept as given (UUIDs hyphenated); message ids as 32 hex digits.
        row = _message_row(sessions[i], next(_CEILING_SEQS))
        row = (row[0].replace("-", ""), *row[1:5], row[5].replace(tzinfo=None).isoformat(" "))
        await connections[i].execute("BEGIN IMMEDIATE")
        await connections[i].execute(sql, row)
        await connections[i].execute("COMMIT")

    try:
        return await closed_loop(
            backend, "ceiling_1_database", insert_sqlite, clients, seconds, warmup
        )
    finally:
        for connection in connections:
            await connection.close()


async def grpc_ceiling(
    backend: str, clients: list[ParleyClient], count: int, seconds: float, warmup: float
) -> Cell:
    """Ceiling 2: a no-op unary RPC (health Check) on the same server, same channels."""
    stubs = [health_pb2_grpc.HealthStub(client._open()[0]) for client in clients]
    request = health_pb2.HealthCheckRequest(service=SERVICE)

    async def check(i: int) -> None:
        await stubs[i].Check(request, timeout=30)

    return await closed_loop(backend, "ceiling_2_grpc", check, count, seconds, warmup)


APPENDS = ("append", "batch_append_10")
# The ceiling server (bench/ceiling_server.py) stands in for parley in these workloads.
FITTING_CEILING = {
    "list_last_50": "ceiling_read_list",
    "context_window": "ceiling_read_window",
    "stream_1000": "ceiling_stream",
    "append": "ceiling_append",
}
STREAM_FROM_ROWS = "ceiling_stream_from_rows"
APPEND_PARLEY_PATH = "ceiling_append_parley_path"
# The same server doing a workload's work the way parley must (no target's ceiling).
_PARLEY_PATH = "a minimal server appending through parley's own write path"
MINIMAL_SERVER = {"stream_1000": STREAM_FROM_ROWS, "append": APPEND_PARLEY_PATH}
RESPONSE_BUDGET_BYTES = 3 * 1024 * 1024  # parley's default


async def ceiling_settings(
    client: ParleyClient,
    fixtures: Fixtures,
    database_url: str,
    address: str,
) -> CeilingSettings:
    """The ceiling server's settings: parley's own replies to the workloads' requests."""

    def encoded(message: Any) -> str:
        return base64.b64encode(message.SerializeToString()).decode()

    listed = await client.list_messages(fixtures.list_session, page_size=50, newest_first=True)
    window = await client.get_context_window(fixtures.window_session, max_messages=50)
    stub = parley_service_pb2_grpc.ParleyServiceStub(client._open()[0])
    batches = [
        batch
        async for batch in stub.StreamMessages(
            parley_service_pb2.StreamMessagesRequest(session_id=fixtures.stream_session)
        )
    ]
    appended = await client.append_message(
        fixtures.ceiling_sessions[0], role="user", content=CONTENT
    )
    unnumbered = type(appended)()
    unnumbered.CopyFrom(appended)
    unnumbered.ClearField("seq")
    body = type(appended)()  # what the API hands the store: all but the fields parley assigns
    body.CopyFrom(unnumbered)
    for assigned in ("id", "session_id", "create_time"):
        body.ClearField(assigned)
    return CeilingSettings(
        dsn=_asyncpg_dsn(database_url),
        address=address,
        tenant="default",
        list_session=fixtures.list_session,
        window_session=fixtures.window_session,
        stream_session=fixtures.stream_session,
        append_sessions=fixtures.ceiling_sessions,
        content=CONTENT,
        list_reply=encoded(listed),
        window_reply=encoded(window),
        stream_replies=[encoded(batch) for batch in batches],
        stream_batch_sizes=[len(batch.messages) for batch in batches],
        append_reply=encoded(appended),
        append_entry=base64.b64encode(
            convert.message_entry(unnumbered.SerializeToString(), appended.seq)
        ).decode(),
        append_encoded=base64.b64encode(body.SerializeToString()).decode(),
        database_url=database_url,
    )


@asynccontextmanager
async def ceiling_server(
    client: ParleyClient,
    fixtures: Fixtures,
    database_url: str,
    channels: int,
    clients: int,
    *,
    stream_budget: int = 0,
    parley_appends: bool = False,
) -> AsyncIterator[tuple[list[ParleyClient], int]]:
    """The ceiling server over parley's database, its pid, and `clients` clients of it sharing
    `channels` connections, as parley's do. With stream_budget, its streams build their batches
    from the rows they read under that byte budget, instead of sending parley's; with
    parley_appends, its appends go through parley's own write path."""
    address = f"127.0.0.1:{_free_port()}"
    settings = replace(
        await ceiling_settings(client, fixtures, database_url, address),
        stream_budget=stream_budget,
        parley_appends=parley_appends,
    )
    with tempfile.TemporaryDirectory(prefix="parley-ceiling-") as directory:
        settings_path = Path(directory) / "settings.json"
        settings.write(settings_path)
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(CEILING_SERVER), str(settings_path)
        )
        opened: list[ParleyClient] = []
        try:
            async with grpc.aio.insecure_channel(address) as probe:
                await asyncio.wait_for(probe.channel_ready(), 30)
            opened = [ParleyClient(address, default_timeout=60) for _ in range(channels)]
            yield [opened[i % channels] for i in range(clients)], process.pid
        finally:
            for each in opened:
                await each.close()
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


# --- growth -----------------------------------------------------------------------------------


@dataclass
class GrowthPoint:
    """One session size. The p50s are medians over rounds of each round's p50. The ratios compare
    this size with the smallest one measured in the same round (the median over rounds), so that
    the machine's drift between rounds cancels out."""

    backend: str
    session_size: int
    append_p50_ms: float
    list_last_50_p50_ms: float
    append_ratio: float
    list_last_50_ratio: float


async def growth(
    backend: str,
    database_url: str,
    client: ParleyClient,
    sizes: list[int],
    seconds: float,
    rounds: int = 8,
) -> tuple[list[GrowthPoint], dict[int, str]]:
    """Append and list-last-50 latency (one client) in sessions of each size, over many short
    rounds; each round measures every size back to back, in alternating order. Also returns the
    sessions, by size."""
    user = await client.create_user(display_name="growth")
    sessions = {}
    for size in sizes:
        sessions[size] = (await client.create_session(user_id=user.id)).id
        await _fill(client, sessions[size], size)
    await analyze(database_url)
    workloads = ("append", "list_last_50")
    p50s: dict[tuple[int, str], list[float]] = {(size, w): [] for size in sizes for w in workloads}
    for round_number in range(rounds):
        for size in sizes if round_number % 2 == 0 else reversed(sizes):
            session = sessions[size]

            async def append(_: int, session: str = session) -> None:
                await client.append_message(session, role="user", content=CONTENT)

            async def last_50(_: int, session: str = session) -> None:
                await client.list_messages(session, page_size=50, newest_first=True)

            for name, operation in zip(workloads, (append, last_50), strict=True):
                cell = await closed_loop(
                    backend, "growth", operation, 1, seconds / rounds, warmup=0.05
                )
                p50s[(size, name)].append(cell.p50_ms)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def ratio(size: int, name: str) -> float:
        base = p50s[(sizes[0], name)]
        return median([value / base[i] for i, value in enumerate(p50s[(size, name)])])

    points = []
    for size in sizes:
        point = GrowthPoint(
            backend,
            size,
            append_p50_ms=median(p50s[(size, "append")]),
            list_last_50_p50_ms=median(p50s[(size, "list_last_50")]),
            append_ratio=ratio(size, "append"),
            list_last_50_ratio=ratio(size, "list_last_50"),
        )
        points.append(point)
        console.print(
            f"  growth {size:>7} messages: append p50 {point.append_p50_ms:.2f} ms"
            f" (x{point.append_ratio:.2f}), list-last-50 p50 {point.list_last_50_p50_ms:.2f} ms"
            f" (x{point.list_last_50_ratio:.2f})"
        )
    return points, sessions


@dataclass
class StreamMemory:
    """The server's resident memory while one client streams a whole session: sampled every
    10 ms, from just before the stream to its end."""

    messages: int
    streamed_mb: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float


async def stream_memory(client: ParleyClient, server_pid: int, session_id: str) -> StreamMemory:
    before = peak = _rss_mb(server_pid)
    streamed = messages = 0

    async def read() -> None:
        nonlocal streamed, messages
        async for message in client.stream_messages(session_id, timeout=600):
            streamed += message.ByteSize()
            messages += 1

    reading = asyncio.create_task(read())
    while not reading.done():
        peak = max(peak, _rss_mb(server_pid))
        await asyncio.wait([reading], timeout=0.01)
    await reading
    point = StreamMemory(
        messages=messages,
        streamed_mb=round(streamed / 2**20, 1),
        rss_before_mb=round(before, 1),
        rss_peak_mb=round(peak, 1),
        rss_after_mb=round(_rss_mb(server_pid), 1),
    )
    console.print(
        f"  streaming {messages:,} messages ({point.streamed_mb} MB): server RSS"
        f" {point.rss_before_mb} MB before, {point.rss_peak_mb} MB at most,"
        f" {point.rss_after_mb} MB after"
    )
    return point


# --- one backend ------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    cells: list[Cell] = field(default_factory=list)
    ceilings: list[Cell] = field(default_factory=list)
    growth: list[GrowthPoint] = field(default_factory=list)
    delivery: list[DeliveryPoint] = field(default_factory=list)
    idle_watchers: IdleWatchers | None = None
    frameworks: list[FrameworkCell] = field(default_factory=list)
    open_loop: list[OpenLoopCell] = field(default_factory=list)
    stream_memory: StreamMemory | None = None


@dataclass
class FrameworkCell:
    """One workload through a framework's interface: parley's adapter and the framework's own
    PostgreSQL store, measured one after the other in the same run."""

    framework: str
    workload: str
    clients: int
    parley: Cell
    native: Cell

    @property
    def speedup(self) -> float:
        return self.parley.ops_per_second / self.native.ops_per_second


async def bench_frameworks(args: argparse.Namespace) -> list[FrameworkCell]:
    import frameworks  # the frameworks load only when measured

    found: list[FrameworkCell] = []
    async with (
        fresh_database("postgres") as parley_url,
        parley_server(parley_url, {}) as server,
        fresh_database("postgres") as native_url,
    ):
        for framework in args.frameworks:
            for count in args.framework_clients:
                async with (
                    frameworks.over_parley(framework, server.address, count) as ours,
                    frameworks.native(framework, native_url, count) as theirs,
                ):
                    for workload in ("append", "read"):
                        cells = [
                            await closed_loop(
                                "postgres",
                                f"{framework} {workload} ({store})",
                                getattr(workloads_of, workload),
                                count,
                                args.seconds,
                                args.warmup,
                            )
                            for store, workloads_of in (("parley", ours), ("native", theirs))
                        ]
                        cell = FrameworkCell(framework, workload, count, *cells)
                        found.append(cell)
                        console.print(
                            f"  {framework:<14} {workload:<7} {count:>3} clients: parley"
                            f" {cell.parley.ops_per_second:>7.0f} ops/s p50"
                            f" {cell.parley.p50_ms:6.2f} ms, own store"
                            f" {cell.native.ops_per_second:>7.0f} ops/s p50"
                            f" {cell.native.p50_ms:6.2f} ms: x{cell.speedup:.2f}"
                        )
    return found


def frameworks_table(cells: list[FrameworkCell]) -> Table:
    grid = Table(title="Adapters against each framework's own PostgreSQL store (ops/s, p50 ms)")
    for column in ("framework", "workload", "clients", "parley", "own store", "parley / own"):
        grid.add_column(column, justify="right" if column != "framework" else "left")
    for cell in cells:
        grid.add_row(
            cell.framework,
            cell.workload,
            str(cell.clients),
            f"{cell.parley.ops_per_second:.0f} / {cell.parley.p50_ms:.2f}",
            f"{cell.native.ops_per_second:.0f} / {cell.native.p50_ms:.2f}",
            f"x{cell.speedup:.2f}",
        )
    return grid


# --- live history -----------------------------------------------------------------------------


@dataclass
class DeliveryPoint:
    """Commit-to-delivery latency: from a message's create_time (taken in the statement that
    commits it) to its arrival at each watcher, while one writer appends every 20 ms."""

    watchers: int
    deliveries: int
    p50_ms: float
    p99_ms: float
    missing: int  # deliveries that did not arrive (should be 0)


async def delivery_latency(
    address: str, session_id: str, writer: ParleyClient, watchers: int, seconds: float
) -> DeliveryPoint:
    channels = [ParleyClient(address) for _ in range(min(watchers, 10))]
    latencies: list[float] = []
    ready = 0
    all_ready = asyncio.Event()
    appended = asyncio.Event()
    complete = asyncio.Event()
    expected: list[int] = []

    async def watch(index: int) -> None:
        nonlocal ready
        stream = channels[index % len(channels)].watch_session(session_id, after_seq=1)
        async for event in stream:
            now = time.time()
            if event.WhichOneof("event") == "session":
                ready += 1
                if ready == watchers:
                    all_ready.set()
            for message in event.messages.messages:
                stamp = message.create_time
                latencies.append(now - (stamp.seconds + stamp.nanos / 1e9))
            if appended.is_set() and len(latencies) >= len(expected) * watchers:
                complete.set()

    tasks = [asyncio.create_task(watch(i)) for i in range(watchers)]
    await asyncio.wait_for(all_ready.wait(), 60)
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        message = await writer.append_message(session_id, role="user", content=CONTENT)
        expected.append(message.seq)
        await asyncio.sleep(0.02)
    appended.set()
    if len(latencies) >= len(expected) * watchers:
        complete.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(complete.wait(), 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    latencies.sort()
    return DeliveryPoint(
        watchers=watchers,
        deliveries=len(latencies),
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        missing=len(expected) * watchers - len(latencies),
    )


@dataclass
class IdleWatchers:
    """1,000 watchers, each on a quiet session of its own: what they cost the server. Memory and
    connections are measured with a tenth of them open ("before") and with all ("after")."""

    watchers: int
    rss_before_mb: float
    rss_after_mb: float
    kib_per_watcher: float
    db_connections_before: int | None  # PostgreSQL: parley's connections to its database
    db_connections_after: int | None
    # The pool's size and overflow, the write lanes' own connections and the history listener.
    db_connections_ceiling: int
    append_without: list[Cell]  # rounds without watchers, alternating with those with them
    append_with: list[Cell]
    append_ratio: float  # mean ops per second with them / without them


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _db_connections(database_url: str) -> int | None:
    if not database_url.startswith("postgresql"):
        return None
    connection = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            make_url(database_url).database,
        )
        return count
    finally:
        await connection.close()


class _IdleWatchers:
    """Watchers of quiet sessions, one each, over 10 connections."""

    def __init__(self, address: str, sessions: list[str]) -> None:
        self._channels = [ParleyClient(address) for _ in range(10)]
        self._sessions = sessions
        self._tasks: list[asyncio.Task[None]] = []
        self._opened = 0

    async def _watch(self, index: int) -> None:
        channel = self._channels[index % len(self._channels)]
        async for _ in channel.watch_session(self._sessions[index]):
            self._opened += 1

    async def open(self, total: int) -> None:
        """Watchers up to `total`, each past its first event (and a second to settle)."""
        start = len(self._tasks)
        self._tasks += [asyncio.create_task(self._watch(i)) for i in range(start, total)]
        async with asyncio.timeout(120):
            while self._opened < total:  # noqa: ASYNC110  # counts the tasks' first events
                await asyncio.sleep(0.05)
        await asyncio.sleep(1)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close()


async def idle_watchers(
    backend: str,
    server: Server,
    database_url: str,
    client: ParleyClient,
    append: Operation,
    count: int,
    args: argparse.Namespace,
) -> IdleWatchers:
    clients = min(16, max(args.clients))
    user = await client.create_user(display_name="watched")
    sessions = [(await client.create_session(user_id=user.id)).id for _ in range(count)]
    # The sessions are made first: the churn of making them slows the database for a while, and
    # would be charged to the watchers.
    await asyncio.sleep(2)
    measured: dict[str, Any] = {}
    without: list[Cell] = []
    with_them: list[Cell] = []

    async def appends(label: str) -> Cell:
        return await closed_loop(backend, label, append, clients, args.seconds, args.warmup)

    for round_number in range(2):  # without, with, without, with, without: the host drifts
        without.append(await appends("append (no watchers)"))
        watchers = _IdleWatchers(server.address, sessions)
        if round_number == 0:
            await watchers.open(count // 10)
            measured["rss_before"] = _rss_mb(server.pid)
            measured["connections_before"] = await _db_connections(database_url)
        await watchers.open(count)
        if round_number == 0:
            measured["rss_after"] = _rss_mb(server.pid)
            measured["connections_after"] = await _db_connections(database_url)
        with_them.append(await appends(f"append ({count} idle watchers)"))
        await watchers.close()
    without.append(await appends("append (no watchers)"))
    server_env = dict(args.server_env)
    pool = int(server_env.get("PARLEY_DB_POOL_SIZE", 16))
    overflow = int(server_env.get("PARLEY_DB_MAX_OVERFLOW", 0))
    lanes = int(server_env.get("PARLEY_WRITE_LANES", 1))

    def mean(cells: list[Cell]) -> float:
        return sum(cell.ops_per_second for cell in cells) / len(cells)

    return IdleWatchers(
        watchers=count,
        rss_before_mb=round(measured["rss_before"], 1),
        rss_after_mb=round(measured["rss_after"], 1),
        kib_per_watcher=round(
            (measured["rss_after"] - measured["rss_before"]) * 1024 / (count - count // 10), 1
        ),
        db_connections_before=measured["connections_before"],
        db_connections_after=measured["connections_after"],
        db_connections_ceiling=pool + overflow + lanes + 1,
        append_without=without,
        append_with=with_them,
        append_ratio=round(mean(with_them) / mean(without), 3),
    )


async def bench_watch(
    backend: str,
    server: Server,
    database_url: str,
    client: ParleyClient,
    append: Operation,
    result: BackendResult,
    args: argparse.Namespace,
) -> None:
    user = await client.create_user(display_name="watch")
    for watchers in args.watchers:
        session = await client.create_session(user_id=user.id)
        await client.append_message(session.id, role="user", content=CONTENT)
        point = await delivery_latency(
            server.address, session.id, client, watchers, args.watch_seconds
        )
        result.delivery.append(point)
        console.print(
            f"  {backend:<8} watch delivery {watchers:>3} watchers: p50 {point.p50_ms:6.2f}"
            f" p99 {point.p99_ms:6.2f} ms over {point.deliveries} deliveries"
            f" ({point.missing} missing)"
        )
    if args.idle_watchers:
        idle = await idle_watchers(
            backend, server, database_url, client, append, args.idle_watchers, args
        )
        result.idle_watchers = idle
        with_them = " / ".join(f"{c.ops_per_second:.0f}" for c in idle.append_with)
        without = " / ".join(f"{c.ops_per_second:.0f}" for c in idle.append_without)
        console.print(
            f"  {backend:<8} {idle.watchers // 10} -> {idle.watchers} idle watchers: server RSS"
            f" {idle.rss_before_mb} -> {idle.rss_after_mb} MB ({idle.kib_per_watcher} KiB each);"
            f" database connections {idle.db_connections_before} ->"
            f" {idle.db_connections_after} (pool, write lanes and listener:"
            f" {idle.db_connections_ceiling});"
            f" appends at {idle.append_with[0].clients} clients {with_them} ops/s with them,"
            f" {without} without ({idle.append_ratio:.0%})"
        )


async def bench_backend(backend: str, args: argparse.Namespace) -> BackendResult:
    result = BackendResult(backend)
    max_clients = max(args.clients)
    extra_env = {"PARLEY_EVENT_LOOP": args.server_loop, **dict(args.server_env)}
    async with (
        fresh_database(backend) as url,
        parley_server(url, extra_env) as server,
        contextlib.AsyncExitStack() as stack,
    ):
        # Clients share args.channels connections (round robin), as threads of a service would.
        channels = [
            ParleyClient(server.address, default_timeout=60)
            for _ in range(min(args.channels, max_clients))
        ]
        clients = [channels[i % len(channels)] for i in range(max_clients)]
        fixtures = await prepare(clients[0], max_clients)
        await analyze(url)
        operations = workloads(clients, fixtures)
        ceiling_operations: dict[str, Operation] = {}
        ceiling_pid = 0
        if backend == "postgres" and not args.skip_ceilings:
            ceiling_clients, ceiling_pid = await stack.enter_async_context(
                ceiling_server(clients[0], fixtures, url, len(channels), max_clients)
            )
            ceiling_operations = workloads(ceiling_clients, fixtures)
        wanted = [name for name in operations if not args.workloads or name in args.workloads]
        # Not targets' ceilings: the ceiling server doing the work parley cannot leave out, as
        # parley must do it: stream batches built from the rows it reads under parley's byte
        # budget; appends through parley's own write path. How far is any server from the
        # ceilings?
        minimal: dict[str, Operation] = {}
        minimal_pid = 0
        if ceiling_operations and {"stream_1000", "append"} & set(wanted):
            minimal_clients, minimal_pid = await stack.enter_async_context(
                ceiling_server(
                    clients[0],
                    fixtures,
                    url,
                    len(channels),
                    max_clients,
                    stream_budget=int(
                        extra_env.get("PARLEY_RESPONSE_BUDGET_BYTES", RESPONSE_BUDGET_BYTES)
                    ),
                    parley_appends=True,
                )
            )
            minimal = workloads(minimal_clients, fixtures)
        for count in args.clients:
            rounds: list[tuple[dict[str, Cell], dict[str, Cell]]] = []  # (ceilings, parley's)
            for _ in range(args.rounds):
                ceilings: dict[str, Cell] = {}
                cells: dict[str, Cell] = {}
                if not args.skip_ceilings:
                    ceilings["ceiling_1_database"] = await database_ceiling(
                        backend, url, fixtures.ceiling_sessions, count, args.seconds, args.warmup
                    )
                    ceilings["ceiling_2_grpc"] = await grpc_ceiling(
                        backend, clients, count, args.seconds, args.warmup
                    )
                for name in wanted:
                    for names, served, pid in (
                        (FITTING_CEILING, ceiling_operations, ceiling_pid),
                        (MINIMAL_SERVER, minimal, minimal_pid),
                    ):
                        if (ceiling_name := names.get(name)) and served:
                            with _server_cpu(pid):
                                ceilings[ceiling_name] = await closed_loop(
                                    backend,
                                    ceiling_name,
                                    served[name],
                                    count,
                                    args.seconds,
                                    args.warmup,
                                )
                    measuring = closed_loop(
                        backend, name, operations[name], count, args.seconds, args.warmup
                    )
                    if args.profile:
                        label = f"{backend}-{name}-{count}"
                        cells[name] = await profiled(server.pid, label, measuring, args)
                    else:
                        cells[name] = await measuring
                rounds.append((ceilings, cells))
            for ceiling_name in rounds[0][0]:
                result.ceilings.append(_median_round([r[0][ceiling_name] for r in rounds]))
            for name in wanted:
                cell = summarize_rounds(name, rounds)
                result.cells.append(cell)
                cpu = ", ".join(f"{k} {v:.0f}" for k, v in cell.cpu_us_per_op.items())
                fraction = cell.fraction_of_ceiling
                console.print(
                    f"  {backend:<8} {name:<16} {count:>3} clients: {cell.ops_per_second:>8.0f}"
                    f" ops/s p50 {cell.p50_ms:6.2f} p99 {cell.p99_ms:6.2f} ms"
                    f" ({'-' if fraction is None else f'{fraction:.0%}'} of ceiling"
                    + (
                        f", rounds {' / '.join(f'{f:.0%}' for f in cell.round_fractions)}"
                        if len(cell.round_fractions) > 1
                        else ""
                    )
                    + f"); CPU us/op: {cpu}; machine {cell.machine_busy:.0%} busy"
                )
        if args.open_loop and not args.skip_ceilings:
            for name in ("append", "list_last_50"):
                if name in wanted:
                    point = await open_loop_cell(
                        backend, name, operations[name], result.cells, args
                    )
                    if ceiling_operations:
                        point.ceiling = await open_loop_cell(
                            backend,
                            FITTING_CEILING[name],
                            ceiling_operations[name],
                            result.ceilings,
                            args,
                        )
                    result.open_loop.append(point)
        # The ceiling server's connections would count as parley's below (idle watchers).
        await stack.aclose()
        if args.growth:
            result.growth, sized = await growth(
                backend, url, clients[0], args.growth, args.growth_seconds
            )
            largest = max(sized)
            result.stream_memory = await stream_memory(clients[0], server.pid, sized[largest])
        if args.watchers or args.idle_watchers:
            await bench_watch(backend, server, url, clients[0], operations["append"], result, args)
        for client in channels:
            await client.close()
    return result


def fraction_of_fitting_ceiling(cell: Cell, ceilings: dict[str, Cell]) -> float | None:
    """An append against the smaller of the database alone and gRPC alone (the single-append
    ceiling is for its latency, p50_over_ceiling); a read against the ceiling server doing the
    same reads."""
    if cell.workload in APPENDS:
        smaller = smaller_append_ceiling(ceilings)
        return None if smaller is None else cell.ops_per_second / smaller
    fitting = FITTING_CEILING.get(cell.workload)
    if fitting not in ceilings:
        return None
    return cell.ops_per_second / ceilings[fitting].ops_per_second


def smaller_append_ceiling(ceilings: dict[str, Cell]) -> float | None:
    """The ops/s of the smaller of ceilings 1 and 2 (the database alone, gRPC alone)."""
    if "ceiling_1_database" not in ceilings:
        return None
    return min(
        ceilings["ceiling_1_database"].ops_per_second, ceilings["ceiling_2_grpc"].ops_per_second
    )


@contextlib.contextmanager
def _server_cpu(pid: int) -> Iterator[None]:
    """Charge the server's CPU time of a cell to process `pid` (the ceiling server)."""
    parley = CPU_WATCH.get("server")
    CPU_WATCH["server"] = lambda: [pid]
    try:
        yield
    finally:
        if parley is None:
            CPU_WATCH.pop("server", None)
        else:
            CPU_WATCH["server"] = parley


def _median_round(cells: list[Cell]) -> Cell:
    """The cell of the round with the median throughput."""
    return sorted(cells, key=lambda cell: cell.ops_per_second)[len(cells) // 2]


def summarize_rounds(workload: str, rounds: list[tuple[dict[str, Cell], dict[str, Cell]]]) -> Cell:
    """The workload's cell of the median round, with its fraction of its ceiling (and p50 over
    the ceiling's) as the median of each round's."""
    cell = _median_round([cells[workload] for _, cells in rounds])
    fractions = [
        fraction_of_fitting_ceiling(cells[workload], ceilings) for ceilings, cells in rounds
    ]
    if all(fraction is not None for fraction in fractions):
        cell.round_fractions = [f for f in fractions if f is not None]
        cell.fraction_of_ceiling = statistics.median(cell.round_fractions)
    fitting = FITTING_CEILING.get(workload)
    if fitting and all(fitting in ceilings for ceilings, _ in rounds):
        cell.p50_over_ceiling = statistics.median(
            cells[workload].p50_ms / ceilings[fitting].p50_ms for ceilings, cells in rounds
        )
    return cell


@dataclass
class OpenLoopCell:
    """Requests sent at Poisson-distributed times, at `rate` per second (half the capacity the
    closed loop measured), each timed from when it was due to be sent: a stall of the server
    delays every request due during it, and they all count (no coordinated omission)."""

    workload: str
    rate: float
    capacity: float
    cell: Cell
    one_client_p50_ms: float
    # The same for the workload's ceiling server, at half of its own capacity: what the machine
    # allows an open loop at that utilization.
    ceiling: OpenLoopCell | None = None


async def open_loop(
    backend: str,
    workload: str,
    operation: Operation,
    slots: int,
    rate: float,
    seconds: float,
    warmup: float,
) -> Cell:
    """operation(i % slots) started at each arrival of a Poisson process, however many are still
    running; latency from each arrival's due time to its answer."""
    arrivals = random.Random(11)
    latencies: list[float] = []
    errors: list[BaseException] = []
    running: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    measure_from, stop_at = started + warmup, started + warmup + seconds

    async def send(due: float, index: int) -> None:
        try:
            await operation(index)
        except Exception as error:
            errors.append(error)
            return
        if due >= measure_from:
            latencies.append(time.perf_counter() - due)

    due, index = started, 0
    while (due := due + arrivals.expovariate(rate)) < stop_at:
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(send(due, index % slots))
        running.add(task)
        task.add_done_callback(running.discard)
        index += 1
    await asyncio.gather(*running)
    if errors:
        console.print(f"[red]{workload} open loop: {len(errors)} errors, e.g. {errors[0]!r}")
    return Cell.of(backend, f"{workload} (open loop)", 0, latencies, seconds, len(errors))


async def open_loop_cell(
    backend: str,
    workload: str,
    operation: Operation,
    closed_loop_cells: list[Cell],
    args: argparse.Namespace,
) -> OpenLoopCell:
    measured = [cell for cell in closed_loop_cells if cell.workload == workload]
    capacity = max(cell.ops_per_second for cell in measured)
    one_client = next(cell for cell in measured if cell.clients == min(args.clients))
    rate = capacity * args.open_loop
    cell = await open_loop(
        backend, workload, operation, max(args.clients), rate, args.open_loop_seconds, args.warmup
    )
    console.print(
        f"  {backend:<8} {workload} open loop at {rate:.0f}/s ({args.open_loop:.0%} of"
        f" {capacity:.0f}/s): p50 {cell.p50_ms:.2f} p99 {cell.p99_ms:.2f} ms"
        f" (c={one_client.clients} p50 {one_client.p50_ms:.2f} ms), {cell.errors} errors"
    )
    return OpenLoopCell(workload, rate, capacity, cell, one_client.p50_ms)


# --- profiling --------------------------------------------------------------------------------


async def profiled(
    pid: int, label: str, measuring: Awaitable[Cell], args: argparse.Namespace
) -> Cell:
    """Run a cell while py-spy samples the server, then print where the server spent its time."""
    raw = args.results / f"profile-{label}.raw"
    recorder = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--duration", str(int(args.seconds)), "--rate", "250", "--format", "raw",
        "--output", str(raw),
        # Native frames need the target paused for each sample; Python frames alone do not.
        *(["--native"] if args.native else ["--nonblocking"]),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cell = await measuring
    await recorder.wait()
    summarize_profile(raw, args.profile_top)
    return cell


def summarize_profile(raw: Path, top: int) -> None:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_samples: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        total += count
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        console.print(f"[yellow]no samples in {raw}")
        return
    console.print(f"[bold]{raw.name}: {total} samples")
    for title, counts in (("self", self_samples), ("inclusive", inclusive)):
        console.print(f"  top {title}:")
        for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:top]:
            console.print(f"    {count / total:6.1%}  {frame}")


# --- reporting --------------------------------------------------------------------------------


def table(results: list[BackendResult]) -> Table:
    out = Table(title="parley benchmark (closed-loop clients over gRPC on loopback)")
    for column in ("backend", "workload", "clients", "ops/s", "p50 ms", "p95 ms", "p99 ms"):
        out.add_column(column, justify="left" if column in ("backend", "workload") else "right")
    out.add_column("fraction of ceiling", justify="right")
    out.add_column("CPU busy", justify="right")
    for result in results:
        for cell in sorted(result.ceilings + result.cells, key=lambda c: (c.clients, c.workload)):
            fraction = (
                f"{cell.fraction_of_ceiling:.0%}" if cell.fraction_of_ceiling is not None else "-"
            )
            out.add_row(
                cell.backend,
                cell.workload,
                str(cell.clients),
                f"{cell.ops_per_second:,.0f}",
                f"{cell.p50_ms:.2f}",
                f"{cell.p95_ms:.2f}",
                f"{cell.p99_ms:.2f}",
                fraction,
                f"{cell.machine_busy:.0%}",
            )
        out.add_section()
    return out


@dataclass
class Check:
    target: str
    measured: str
    passed: bool


def watch_checks(result: BackendResult) -> list[Check]:
    found = [
        Check(
            f"{result.backend}: every watcher got every message ({point.watchers} watchers)",
            f"{point.deliveries} delivered, {point.missing} missing;"
            f" commit to delivery p50 {point.p50_ms:.1f} ms, p99 {point.p99_ms:.1f} ms",
            point.missing == 0,
        )
        for point in result.delivery
    ]
    idle = result.idle_watchers
    if idle is not None:
        found.append(
            Check(
                f"{result.backend}: {idle.watchers} idle watchers hold no database connection"
                " (at most the pool's, the write lanes' and the listener)",
                f"{idle.db_connections_before} -> {idle.db_connections_after} connections from"
                f" {idle.watchers // 10} to {idle.watchers} watchers (ceiling"
                f" {idle.db_connections_ceiling}); server RSS"
                f" +{idle.rss_after_mb - idle.rss_before_mb:.1f} MB"
                f" ({idle.kib_per_watcher} KiB per watcher)",
                (idle.db_connections_after or 0) <= idle.db_connections_ceiling,
            )
        )
        found.append(
            Check(
                f"{result.backend}: appends beside {idle.watchers} idle watchers no slower"
                " (>= 90% of without them, alternating rounds of one run)",
                f"{idle.append_ratio:.0%}",
                idle.append_ratio >= 0.90,
            )
        )
    return found


def checks(results: list[BackendResult]) -> list[Check]:
    found: list[Check] = []
    for result in results:
        found += watch_checks(result)
        if result.backend != "postgres":
            continue

        def cell(workload: str, clients: int, cells: list[Cell] = result.cells) -> Cell | None:
            return next((c for c in cells if c.workload == workload and c.clients == clients), None)

        def ceiling(
            workload: str, clients: int, ceilings: list[Cell] = result.ceilings
        ) -> Cell | None:
            return cell(workload, clients, ceilings)

        for workload in ("list_last_50", "context_window", "stream_1000"):
            for clients in (1, 16):
                read = cell(workload, clients)
                if read is None or read.fraction_of_ceiling is None:
                    continue
                fitting = ceiling(FITTING_CEILING[workload], clients)
                assert fitting is not None
                beside = ""
                if workload == "stream_1000" and (rows := ceiling(STREAM_FROM_ROWS, clients)):
                    beside = (
                        f"; {read.ops_per_second / rows.ops_per_second:.0%} of a minimal server"
                        f" that builds its batches from the rows it reads under the byte budget"
                        f" ({rows.ops_per_second:,.0f} ops/s, itself"
                        f" {rows.ops_per_second / fitting.ops_per_second:.0%} of the ceiling)"
                    )
                found.append(
                    Check(
                        f"PostgreSQL {workload} at {clients} clients >= 80% of its ceiling"
                        f" ({FITTING_CEILING[workload]})",
                        f"{read.fraction_of_ceiling:.0%} ({read.ops_per_second:,.0f} against"
                        f" {fitting.ops_per_second:,.0f} ops/s){beside}",
                        read.fraction_of_ceiling >= 0.80,
                    )
                )
        single, single_ceiling = cell("append", 1), ceiling("ceiling_append", 1)
        if single is not None and single_ceiling is not None and single.p50_over_ceiling:
            ratio = single.p50_over_ceiling
            beside = ""
            if path := ceiling(APPEND_PARLEY_PATH, 1):
                beside = (
                    f"; x{single.p50_ms / path.p50_ms:.2f} {_PARLEY_PATH} ({path.p50_ms:.2f} ms,"
                    f" itself x{path.p50_ms / single_ceiling.p50_ms:.2f} the ceiling's)"
                )
            found.append(
                Check(
                    "PostgreSQL single append at 1 client: p50 <= 1.3x the single-append"
                    " ceiling's (median of rounds)",
                    f"x{ratio:.2f} ({single.p50_ms:.2f} against {single_ceiling.p50_ms:.2f} ms)"
                    + beside,
                    ratio <= 1.3,
                )
            )
        most = max((c.clients for c in result.cells if c.workload == "append"), default=0)
        if (appends := cell("append", most)) is not None and appends.fraction_of_ceiling:
            beside = ""
            smaller = smaller_append_ceiling(
                {c.workload: c for c in result.ceilings if c.clients == most}
            )
            if smaller is not None and (path := ceiling(APPEND_PARLEY_PATH, most)):
                beside = (
                    f"; {appends.ops_per_second / path.ops_per_second:.0%} of {_PARLEY_PATH}"
                    f" ({path.ops_per_second:,.0f} ops/s, itself"
                    f" {path.ops_per_second / smaller:.0%} of the smaller ceiling)"
                )
            found.append(
                Check(
                    f"PostgreSQL appends at {most} clients >= 75% of the smaller append ceiling"
                    " (median of rounds)",
                    f"{appends.fraction_of_ceiling:.0%} (rounds: "
                    + " / ".join(f"{f:.0%}" for f in appends.round_fractions)
                    + f"){beside}",
                    appends.fraction_of_ceiling >= 0.75,
                )
            )
        for point in result.open_loop:
            limit = 3 * point.one_client_p50_ms
            reference = ""
            if (ceiling_point := point.ceiling) is not None:
                reference = (
                    f"; its ceiling server at half its capacity ({ceiling_point.rate:.0f}/s):"
                    f" p99 {ceiling_point.cell.p99_ms:.2f} ms, x"
                    f"{ceiling_point.cell.p99_ms / ceiling_point.one_client_p50_ms:.1f} its"
                    " 1-client p50"
                )
            found.append(
                Check(
                    f"PostgreSQL {point.workload} open loop at {point.rate:.0f}/s (half of"
                    f" {point.capacity:.0f}/s): p99 <= 3x the 1-client p50",
                    f"p99 {point.cell.p99_ms:.2f} ms against {limit:.2f} ms"
                    f" (p50 {point.cell.p50_ms:.2f} ms, {point.cell.errors} errors){reference}",
                    point.cell.p99_ms <= limit and point.cell.errors == 0,
                )
            )
        if (memory := result.stream_memory) is not None:
            grew = memory.rss_peak_mb - memory.rss_before_mb
            found.append(
                Check(
                    f"PostgreSQL server memory flat while streaming {memory.messages:,} messages"
                    " (grows by less than a quarter of what it streams: it never holds the whole"
                    " session)",
                    f"+{grew:.1f} MB at most, streaming {memory.streamed_mb} MB",
                    grew < memory.streamed_mb / 4,
                )
            )
        if result.growth:
            for key in ("append", "list_last_50"):
                name = key.replace("_", "-")
                ratios = [getattr(point, f"{key}_ratio") for point in result.growth]
                spread = max(ratios) / min(ratios) - 1
                found.append(
                    Check(
                        f"PostgreSQL {name} p50 flat from {result.growth[0].session_size:,} to"
                        f" {result.growth[-1].session_size:,} messages (within 20%)",
                        " / ".join(
                            f"{getattr(point, f'{key}_p50_ms'):.2f}" for point in result.growth
                        )
                        + " ms; paired ratios "
                        + " / ".join(f"{r:.2f}" for r in ratios)
                        + f" (spread {spread:.0%})",
                        spread <= 0.20,
                    )
                )
    return found


# A workload and the ceiling that fits it share a color (the ceiling dashed).
CHART_COLORS = {
    "append": "C0",
    "ceiling_append": "C0",
    "list_last_50": "C1",
    "ceiling_read_list": "C1",
    "context_window": "C2",
    "ceiling_read_window": "C2",
    "stream_1000": "C3",
    "ceiling_stream": "C3",
    STREAM_FROM_ROWS: "C6",
    APPEND_PARLEY_PATH: "C9",
    "batch_append_10": "C4",
    "agent_turn": "C8",
    "ceiling_1_database": "C7",
    "ceiling_2_grpc": "C5",
}


def chart(results: list[BackendResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(13, 4.6 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        throughput, latency = axes[row]
        for name in dict.fromkeys(c.workload for c in result.ceilings + result.cells):
            series = sorted(
                (c for c in result.ceilings + result.cells if c.workload == name),
                key=lambda c: c.clients,
            )
            style = "--" if name.startswith("ceiling") else "-"
            clients = [c.clients for c in series]
            color = CHART_COLORS.get(name)
            for axis, values in (
                (throughput, [c.ops_per_second for c in series]),
                (latency, [c.p99_ms for c in series]),
            ):
                axis.plot(clients, values, style, marker="o", label=name, color=color)
        for axis, label in ((throughput, "operations / second"), (latency, "p99 latency (ms)")):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(label)
            axis.set_title(f"{result.backend}: {label}")
            axis.grid(True, which="both", alpha=0.3)
        throughput.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Linux's autogroup schedules each session as one entity, and every PostgreSQL backend
        # starts a session of its own: tail latencies here depend on it (see the README).
        "sched_autogroup_enabled": _read(Path("/proc/sys/kernel/sched_autogroup_enabled")) or None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def measure(args: argparse.Namespace) -> list[BackendResult]:
    CPU_WATCH["load generator"] = lambda: [os.getpid()]
    CPU_WATCH["postgres"] = _postgres_pids
    results = []
    for backend in args.backends:
        console.rule(f"{backend}")
        results.append(await bench_backend(backend, args))
    if args.frameworks:
        console.rule("frameworks")
        cells = await bench_frameworks(args)
        postgres = next((r for r in results if r.backend == "postgres"), None)
        if postgres is None:
            postgres = BackendResult("postgres")
            results.append(postgres)
        postgres.frameworks = cells
    return results


def report(results: list[BackendResult], args: argparse.Namespace, seconds: float) -> None:
    """Print the table and the targets, write results/*.json and the chart."""
    console.print(table(results))
    for result in results:
        if result.frameworks:
            console.print(frameworks_table(result.frameworks))
    found = checks(results)
    for check in found:
        mark = "[green]PASS" if check.passed else "[red]FAIL"
        console.print(f"{mark}[/] {check.target}: {check.measured}")
    results_dir: Path = args.results
    results_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": round(seconds, 1),
        "checks": [asdict(c) for c in found],
    }
    for result in results:
        (results_dir / f"{result.backend}.json").write_text(
            json.dumps({**summary, **asdict(result)}, indent=2) + "\n"
        )
    if any(result.cells for result in results):
        chart(results, results_dir / "chart.png")
    console.print(f"wrote {results_dir}/*.json and chart.png in {seconds:.0f} s")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", type=lambda s: s.split(",") if s else [], default=["postgres", "sqlite"]
    )
    parser.add_argument(
        "--clients", type=lambda s: [int(n) for n in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument("--workloads", type=lambda s: s.split(","), default=[])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time per cell")
    parser.add_argument(
        "--growth",
        type=lambda s: [int(n) for n in s.split(",")] if s else [],
        default=[1_000, 10_000, 100_000],
        help="session sizes for the growth check; empty to skip",
    )
    parser.add_argument(
        "--growth-seconds", type=float, default=4.0, help="per size and workload, over 8 rounds"
    )
    parser.add_argument(
        "--watchers",
        type=lambda s: [int(n) for n in s.split(",")] if s else [],
        default=[1, 10, 100],
        help="watchers of one session for the delivery latency; empty to skip",
    )
    parser.add_argument(
        "--watch-seconds", type=float, default=4.0, help="appending time per watcher count"
    )
    parser.add_argument(
        "--idle-watchers", type=int, default=1000, help="idle watchers to open; 0 to skip"
    )
    parser.add_argument(
        "--frameworks",
        type=lambda s: s.split(",") if s else [],
        default=["adk", "openai_agents", "langchain"],
        help="adapters to measure against the frameworks' own PostgreSQL stores; empty to skip",
    )
    parser.add_argument(
        "--framework-clients", type=lambda s: [int(n) for n in s.split(",")], default=[1, 16]
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of each cell with its ceiling: fractions are the median of the rounds'",
    )
    parser.add_argument(
        "--open-loop",
        type=float,
        default=0.5,
        help="open-loop arrival rate as a fraction of the closed loop's capacity; 0 to skip",
    )
    parser.add_argument("--open-loop-seconds", type=float, default=6.0)
    parser.add_argument("--server-loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    parser.add_argument("--client-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument(
        "--channels", type=int, default=64, help="gRPC connections the clients share"
    )
    parser.add_argument("--skip-ceilings", action="store_true", help="for quick iteration only")
    parser.add_argument(
        "--server-env",
        action="append",
        type=lambda s: tuple(s.split("=", 1)),
        default=[],
        help="KEY=VALUE for the parley server, e.g. PARLEY_DB_POOL_SIZE=16 (repeatable)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server during cells")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="profile C frames too")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    loop_factory = None
    if arguments.client_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    arguments.results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        measured = runner.run(measure(arguments))
    report(measured, arguments, time.perf_counter() - started)
