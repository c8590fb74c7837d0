"""The `parley` command: serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from parley_server.app import open_engine, serve
from parley_server.config import Settings
from parley_server.store import migrate as migrations


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("database_url", args.database_url),
            ("listen_address", getattr(args, "address", None)),
            ("log_level", args.log_level),
        )
        if value is not None
    }
    return Settings(**overrides)


async def _migrate(settings: Settings, revision: str) -> None:
    engine = open_engine(settings)
    try:
        await migrations.upgrade(engine, revision)
    finally:
        await engine.dispose()


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise SystemExit("PARLEY_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="parley", description="Chat history for AI agents, over gRPC."
    )
    parser.add_argument("--database-url", help="overrides PARLEY_DATABASE_URL")
    parser.add_argument("--log-level", help="overrides PARLEY_LOG_LEVEL (DEBUG, INFO, ...)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the gRPC API")
    serve_parser.add_argument("--address", help="host:port; overrides PARLEY_LISTEN_ADDRESS")
    migrate_parser = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate_parser.add_argument("--revision", default="head", help="target revision (head)")
    args = parser.parse_args(argv)

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
                runner.run(serve(settings))
        else:
            asyncio.run(_migrate(settings, args.revision))
            print(f"database schema at {args.revision}", file=sys.stderr)
    except OSError as error:
        print(f"parley: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
