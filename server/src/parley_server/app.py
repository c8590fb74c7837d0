"""The composition root: settings in, a serving parley out.

Only this module (and the command line that makes the settings) reads configuration; everything it
builds (store, services, interceptors, the gRPC server) takes plain values, so each can be built
on its own in a test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import logging
import signal

import grpc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from parley_server.api import convert
from parley_server.api.admin import AdminServicer
from parley_server.api.auth import Authenticator, AuthInterceptor
from parley_server.api.interceptors import (
    ErrorInterceptor,
    InterceptorChain,
    LifecycleInterceptor,
    LoggingInterceptor,
)
from parley_server.api.pagination import PageTokens
from parley_server.api.servicer import ParleyServicer
from parley_server.config import Settings
from parley_server.identity import DEFAULT_TENANT
from parley_server.server import SERVICE_NAME, RunningServer, create_server
from parley_server.services import Services
from parley_server.store import Database, Store
from parley_server.store import migrate as migrations
from parley_server.store.changes import PostgresListener
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
    return Store.over(
        database,
        write_lanes=settings.write_lanes,
        encoding=convert.MESSAGE_ENCODING,
        history_cache_bytes=settings.history_cache_bytes,
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_client_ca is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


async def check_exposure(store: Store, settings: Settings, address: str) -> bool:
    """Whether calls without credentials may be served (while no key exists), after refusing,
    with a message that says how to fix it, to expose parley unprotected."""
    if settings.tls_client_ca is not None:
        return False
    if is_loopback(address) or settings.insecure:
        return True
    if await store.keys.count_live() == 0:
        raise SystemExit(
            f"refusing to serve {address} without authentication: anyone who reaches it could"
            " read and delete every conversation. Create a key (`parley keys create --tenant"
            " default --role service`) or require client certificates (--tls-client-ca), or"
            " pass --insecure (PARLEY_INSECURE=1) if something in front of parley authenticates"
        )
    if not settings.serves_tls:
        raise SystemExit(
            f"refusing to serve {address} without TLS: API keys would cross the network in"
            " clear text. Give --tls-cert and --tls-key, or pass --insecure (PARLEY_INSECURE=1)"
            " if a proxy in front of parley terminates TLS"
        )
    return False


async def start(
    store: Store, settings: Settings | None = None, *, address: str | None = None
) -> RunningServer:
    """Serve `store` as settings say, on `address` (default: settings.listen_address)."""
    settings = settings or Settings()
    address = address or settings.listen_address
    anonymous = await check_exposure(store, settings, address)
    if anonymous:
        log.info(
            "while no API key exists, calls without one are served as tenant %r's service"
            " (only on loopback, or with --insecure); `parley keys create` makes the first",
            DEFAULT_TENANT,
        )
    authenticator = Authenticator(
        store.keys, anonymous_possible=anonymous, cache_seconds=settings.auth_cache_seconds
    )
    tokens = PageTokens(settings.page_token_key() or await store.secrets.get("page_token"))
    services = Services.over(
        store,
        response_budget_bytes=settings.response_budget_bytes,
        watch_heartbeat_seconds=settings.watch_heartbeat_seconds,
        watch_max_lifetime_seconds=settings.watch_max_lifetime_seconds,
    )
    servicer = ParleyServicer(
        services, tokens=tokens, response_budget_bytes=settings.response_budget_bytes
    )
    lifecycle = LifecycleInterceptor(stall_timeout=settings.stream_stall_timeout_seconds)
    listener = _history_listener(store.db)
    running = await create_server(
        address,
        servicer=servicer,
        admin=AdminServicer(services.keys, tokens=tokens),
        interceptors=InterceptorChain(
            [LoggingInterceptor(), ErrorInterceptor(), AuthInterceptor(authenticator), lifecycle]
        ),
        lifecycle=lifecycle,
        max_receive_message_bytes=settings.max_receive_message_bytes,
        reflection_enabled=settings.reflection,
        credentials=server_credentials(settings),
    )
    if listener is not None:
        listener.start()
    return dataclasses.replace(
        running,
        on_drain=store.db.changes.close,
        on_stopped=listener.stop if listener is not None else None,
    )


def _history_listener(db: Database) -> PostgresListener | None:
    """PostgreSQL: the process's one connection that hears of every session change (the
    NOTIFYs of any process), to wake its watchers. SQLite needs none: one process writes."""
    if db.dialect != "postgresql":
        return None
    dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return PostgresListener(db.changes, dsn)


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
