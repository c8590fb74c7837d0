"""Faults with a checked history (`make chaos`): the server killed with SIGKILL under concurrent
appenders that retry, and a database restarted under load. Afterwards every acknowledged append
is stored exactly once, every session's seqs run 1..n without a gap, clients saw no error but
UNAVAILABLE, and the server healed by itself.

The database restart runs a private PostgreSQL cluster of its own (initdb as an unprivileged
user when run as root), never the shared one."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from parley_client import ParleyClient, RetryPolicy, UnavailableError, state_delta
from tests.factories import a_session, new_id
from tests.serving import PARLEY, parley_serve

pytestmark = pytest.mark.chaos

# Patient enough to ride out a restart of either process (about 20 s in all).
PATIENT = RetryPolicy(initial_interval=0.05, max_interval=0.5, max_attempts=60)
APPENDERS = 16
SESSIONS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class History:
    """What the appenders were told: each acknowledged message id with its session."""

    def __init__(self) -> None:
        self.acknowledged: dict[str, str] = {}
        self.errors: list[str] = []
        self.changed = asyncio.Condition()

    async def until(self, acknowledged: int) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(self.acknowledged) >= acknowledged), 60
            )

    async def appender(
        self,
        client: ParleyClient,
        sessions: list[str],
        n: int,
        stop: asyncio.Event,
        *,
        with_state: bool = False,
    ) -> None:
        """with_state: each append also sets its message id as a key of the session's and the
        user's state."""
        turn = 0
        while not stop.is_set():
            session_id = sessions[(n + turn) % len(sessions)]
            message_id = new_id()
            delta = state_delta({message_id: turn}, {message_id: turn}) if with_state else None
            try:
                await client.append_message(
                    session_id,
                    id=message_id,
                    role="user",
                    content=f"{n}:{turn}",
                    state_delta=delta,
                    retry=PATIENT,
                )
                self.acknowledged[message_id] = session_id
                async with self.changed:
                    self.changed.notify_all()
            except Exception as error:  # counted, and the test fails on any
                self.errors.append(repr(error))
            turn += 1

    async def check(self, client: ParleyClient, sessions: list[str]) -> int:
        """Assert exactly-once and gap-free seqs; return how many messages are stored."""
        stored = 0
        for session_id in sessions:
            messages = [m async for m in client.iter_messages(session_id, page_size=1000)]
            ids = [m.id for m in messages]
            assert len(ids) == len(set(ids)), "a message is stored twice"
            assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
            mine = {i for i, s in self.acknowledged.items() if s == session_id}
            assert mine <= set(ids), f"{len(mine - set(ids))} acknowledged appends are lost"
            stored += len(messages)
        return stored


async def test_kill_9_under_concurrent_appenders_loses_and_repeats_nothing(
    database_url: str,
) -> None:
    port = _free_port()
    history = History()
    stop = asyncio.Event()
    async with parley_serve(database_url, port=port) as first:
        client = ParleyClient(first.target)
        sessions = [(await a_session(client))[1].id for _ in range(SESSIONS)]
        appenders = [
            asyncio.create_task(history.appender(client, sessions, n, stop))
            for n in range(APPENDERS)
        ]
        await history.until(300)
        acknowledged_before = len(history.acknowledged)
        assert await first.stop(9) == -9  # SIGKILL, mid-append
    async with parley_serve(database_url, port=port) as second:
        await history.until(acknowledged_before + 300)
        stop.set()
        await asyncio.gather(*appenders)
        stored = await history.check(client, sessions)
        await client.close()
        assert await second.stop() == 0
    print(f"kill -9: {len(history.acknowledged)} appends acknowledged, {stored} stored")
    assert history.errors == []
    assert stored >= len(history.acknowledged)


async def test_kill_9_never_separates_a_message_from_its_state_delta(database_url: str) -> None:
    """Appends that carry state deltas, the server killed mid-append: for every session, the
    stored messages and the keys of its state (and of its user's) are the same set."""
    port = _free_port()
    history = History()
    stop = asyncio.Event()
    async with parley_serve(database_url, port=port) as first:
        client = ParleyClient(first.target)
        sessions = [(await a_session(client))[1].id for _ in range(SESSIONS)]
        appenders = [
            asyncio.create_task(history.appender(client, sessions, n, stop, with_state=True))
            for n in range(APPENDERS)
        ]
        await history.until(200)
        assert await first.stop(9) == -9  # SIGKILL, mid-append
    async with parley_serve(database_url, port=port) as second:
        stop.set()
        await asyncio.gather(*appenders)
        await history.check(client, sessions)
        for session_id in sessions:
            ids = {m.id async for m in client.iter_messages(session_id, page_size=1000)}
            session = await client.get_session(session_id)
            assert set(session.state) == ids
            assert set(session.user_state) == ids
        await client.close()
        assert await second.stop() == 0
    assert history.errors == []


async def test_a_watch_follows_writers_on_another_process_across_a_kill_9(
    database_url: str, backend: str
) -> None:
    """The watcher on process 1, the writers on process 2, over one PostgreSQL; process 1 is
    killed mid-watch and started again: the watch resumes and still sees 1..N once each."""
    if backend != "postgres":
        pytest.skip("several server processes share PostgreSQL only")
    total = 600
    port = _free_port()
    async with (
        parley_serve(database_url) as writers_process,
        ParleyClient(writers_process.target) as writer,
    ):
        _, session = await a_session(writer)
        seqs: list[int] = []
        got = asyncio.Condition()

        async def watch() -> None:
            async with ParleyClient(f"127.0.0.1:{port}") as watcher:
                async for event in watcher.watch_session(session.id, retry=PATIENT):
                    async with got:
                        seqs.extend(m.seq for m in event.messages.messages)
                        got.notify_all()
                    if len(seqs) >= total:
                        return

        async def write(n: int) -> None:
            for turn in range(total // 3):
                await writer.append_message(
                    session.id, id=new_id(), role="user", content=f"{n}:{turn}", retry=PATIENT
                )

        async with parley_serve(database_url, port=port) as first:
            watching = asyncio.create_task(watch())
            writing = asyncio.gather(*(write(n) for n in range(3)))
            async with got:
                await asyncio.wait_for(got.wait_for(lambda: len(seqs) >= 100), 60)
            assert await first.stop(9) == -9  # SIGKILL, mid-watch
        async with parley_serve(database_url, port=port):
            await asyncio.wait_for(writing, 120)
            await asyncio.wait_for(watching, 60)
    print(f"watch across kill -9: {len(seqs)} messages delivered")
    assert seqs == list(range(1, total + 1))


# --- a private PostgreSQL cluster -----------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    return found[-1].parent


def _cluster_owner() -> str | None:
    """initdb refuses root: run the cluster as an unprivileged user, made if missing."""
    if os.geteuid() != 0:
        return None
    name = "parley-test-pg"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
    return name


class Cluster:
    def __init__(self, directory: Path, port: int, owner: str | None) -> None:
        self.directory, self.port, self.owner = directory, port, owner
        self.bin = _postgres_bin()

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def pg_ctl(self, *arguments: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-o", options,
                 "-l", str(self.directory / "log"), "-w", *arguments)  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/parley"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # Not under pytest's tmp_path: its parents are root's own (0700), closed to the owner.
    directory = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    owner = _cluster_owner()
    if owner:
        shutil.chown(directory, owner)
    cluster = Cluster(directory, _free_port(), owner)
    cluster.run(str(cluster.bin / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
                "-A", "trust", "--no-sync")  # fmt: skip
    cluster.pg_ctl("start")
    try:
        yield cluster
    finally:
        cluster.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def _migrated(cluster: Cluster) -> AsyncIterator[str]:
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres")
    await admin.execute("CREATE DATABASE parley")
    await admin.close()
    migrate = await asyncio.create_subprocess_exec(
        PARLEY, "--database-url", cluster.url, "migrate", stderr=subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(migrate.communicate(), 60)
    assert migrate.returncode == 0, stderr.decode()
    yield cluster.url


async def test_a_database_restart_is_unavailable_and_heals(cluster: Cluster) -> None:
    async with (
        _migrated(cluster) as url,
        parley_serve(url, env={"PARLEY_DB_POOL_TIMEOUT_SECONDS": "2"}) as server,
        ParleyClient(server.target) as client,
    ):
        _, session = await a_session(client)
        codes: dict[str, int] = {}
        stop, answered = asyncio.Event(), asyncio.Condition()

        async def count(outcome: str) -> None:
            codes[outcome] = codes.get(outcome, 0) + 1
            async with answered:
                answered.notify_all()

        async def until_ok(total: int) -> None:
            async with answered:
                await asyncio.wait_for(answered.wait_for(lambda: codes.get("OK", 0) >= total), 30)

        async def load() -> None:
            while not stop.is_set():
                try:
                    await client.append_message(session.id, role="user", content="x", retry=False)
                    await client.get_context_window(session.id, max_messages=20, retry=False)
                    await count("OK")
                except UnavailableError:
                    await count("UNAVAILABLE")
                    await asyncio.sleep(0.01)  # a client backing off
                except Exception as error:
                    await count(repr(error))

        workers = [asyncio.create_task(load()) for _ in range(8)]
        await until_ok(50)
        await asyncio.to_thread(cluster.pg_ctl, "restart", "-m", "fast")
        ok_at_restart = codes.get("OK", 0)
        await until_ok(ok_at_restart + 50)  # it heals by itself: calls succeed again
        stop.set()
        await asyncio.gather(*workers)
        print(f"database restart: answers {codes}")
        unexpected = [line for line in server.log if "failed unexpectedly" in line]
        assert set(codes) <= {"OK", "UNAVAILABLE"}, (codes, unexpected)
        assert codes.get("UNAVAILABLE", 0) > 0  # the restart was seen
        assert (await client.get_session(session.id)).message_count >= ok_at_restart + 50
        assert await server.stop() == 0
