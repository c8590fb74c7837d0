"""The composition root: settings in, a serving parley out.

Only this module (and the command line that makes the settings) reads configuration; everything it
builds (store, services, interceptors, the gRPC server) takes plain values, so each can be built
on its own in a test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from parley_server.api.auth import AuthInterceptor
from parley_server.api.interceptors import (
    ErrorInterceptor,
    LifecycleInterceptor,
    LoggingInterceptor,
)
from parley_server.api.pagination import PageTokens
from parley_server.api.servicer import ParleyServicer
from parley_server.config import Settings
from parley_server.server import SERVICE_NAME, RunningServer, create_server
from parley_server.services import Services
from parley_server.store import Database, Store
from parley_server.store import migrate as migrations
from parley_server.store.database import create_engine

log = logging.getLogger("parley")


def open_engine(settings: Settings) -> AsyncEngine:
    return create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


async def open_database(settings: Settings) -> Database:
    """The database for settings, its schema at the newest migration (or an error saying how)."""
    engine = open_engine(settings)
    try:
        if settings.should_auto_migrate:
            await migrations.upgrade(engine)
        else:
            behind = await migrations.pending_revision(engine)
            if behind is not None:
                raise SystemExit(
                    f"the database schema is at revision {behind or '(none)'}, not the newest;"
                    " run `parley migrate` first"
                )
    except BaseException:
        await engine.dispose()
        raise
    return Database(engine)


def open_store(settings: Settings, database: Database) -> Store:
    return Store.over(database, write_lanes=settings.write_lanes)


async def start(
    store: Store, settings: Settings | None = None, *, address: str | None = None
) -> RunningServer:
    """Serve `store` as settings say, on `address` (default: settings.listen_address)."""
    settings = settings or Settings()
    tokens = PageTokens(settings.page_token_key() or await store.secrets.get("page_token"))
    services = Services.over(store, response_budget_bytes=settings.response_budget_bytes)
    servicer = ParleyServicer(
        services, tokens=tokens, response_budget_bytes=settings.response_budget_bytes
    )
    lifecycle = LifecycleInterceptor(stall_timeout=settings.stream_stall_timeout_seconds)
    return await create_server(
        address or settings.listen_address,
        servicer=servicer,
        interceptors=[LoggingInterceptor(), ErrorInterceptor(), AuthInterceptor(), lifecycle],
        lifecycle=lifecycle,
        max_receive_message_bytes=settings.max_receive_message_bytes,
        reflection_enabled=settings.reflection,
    )


def _tune_garbage_collector() -> None:
    """Every RPC allocates many short-lived containers, so with the default thresholds the cyclic
    collector runs every few RPCs and walks the long-lived objects of startup again and again:
    freeze those and collect less often (garbage without cycles is freed at once anyway). The
    youngest generation is still collected every 10,000 allocations, not more rarely, since a
    collection's pause grows faster than its size. The figures are in the README."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    database = await open_database(settings)
    try:
        running = await start(open_store(settings, database), settings)
        _tune_garbage_collector()
        host = settings.listen_address.rsplit(":", 1)[0]
        log.info(
            "parley serving %s on %s:%d, database %s",
            SERVICE_NAME,
            host,
            running.port,
            make_url(settings.database_url).render_as_string(hide_password=True),
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        log.info("shutting down; in-flight RPCs have %.0fs", settings.shutdown_grace_seconds)
        await running.stop(settings.shutdown_grace_seconds)
    finally:
        await database.dispose()
    log.info("stopped")
