"""Settings from the environment (PARLEY_*) and the command line."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

from platformdirs import user_data_path
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """An SQLite file in the user's data directory, so a first `parley serve` needs no setup."""
    return f"sqlite+aiosqlite:///{user_data_path('parley') / 'parley.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", frozen=True)

    database_url: str = Field(
        default_factory=default_database_url,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    listen_address: str = Field("127.0.0.1:50051", description="host:port to serve gRPC on")
    # No overflow: overflow connections are opened and closed again under steady load.
    db_pool_size: int = Field(16, ge=1, description="database connections kept open")
    db_max_overflow: int = Field(0, ge=0, description="extra connections allowed under load")
    db_pool_timeout_seconds: float = Field(10.0, gt=0, description="wait for a free connection")
    # One lane coalesces the most appends per statement; more let a huge batch hold up fewer
    # other sessions' appends.
    write_lanes: int = Field(
        1,
        ge=1,
        description="PostgreSQL append statements in flight at once (each coalesces appends)",
    )
    history_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="memory for pages of history read recently, answered again without a query"
        " until their session changes (0: off)",
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="on SIGTERM, how long in-flight RPCs may take to finish"
    )
    stream_stall_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="cancel a server stream whose client has taken no response for this long",
    )
    watch_heartbeat_seconds: float = Field(
        15.0, gt=0, description="a WatchSession stream quiet for this long sends a heartbeat"
    )
    watch_max_lifetime_seconds: float = Field(
        3600.0,
        gt=0,
        description="a WatchSession stream ends after this long with UNAVAILABLE, to be resumed",
    )
    response_budget_bytes: int = Field(
        3 * 1024 * 1024,
        ge=64 * 1024,
        description="bytes of listed items per response or stream batch (clients accept 4 MiB"
        " by default); a page ends early, with a next_page_token, rather than pass it",
    )
    page_token_secret: SecretStr | None = Field(
        None,
        description="key that signs page tokens (base64, 16+ bytes); default: the one the"
        " migrations stored in the database, shared by every server over it",
    )
    max_receive_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest request the server accepts"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain; serve TLS with it")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle: require every client to present a certificate it signed (mTLS)",
    )
    insecure: bool = Field(
        False,
        description="serve a non-loopback address without authentication or without TLS"
        " (behind a proxy or mesh that provides them)",
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="how long an API key lookup is reused (and a revocation lags)"
    )
    reflection: bool = Field(
        True, description="serve gRPC reflection, so grpcurl and UIs can discover the API"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="auto: uvloop where it is installed, else asyncio's own"
    )
    auto_migrate: bool | None = Field(
        None,
        description="migrate the schema on start; default: yes for SQLite, no for other databases",
    )

    def page_token_key(self) -> bytes | None:
        """The configured page-token key, or None to use the database's."""
        if self.page_token_secret is None:
            return None
        return base64.b64decode(self.page_token_secret.get_secret_value(), validate=True)

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
