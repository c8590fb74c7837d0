"""The `parley` command: serve, migrate, keys, encode-history (on the database) and tail (a client).

Each command imports what it needs when it runs: `parley --help` and `parley tail` never load
the server, SQLAlchemy or Alembic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parley_server.config import Settings

DEFAULT_TENANT = "default"  # parley_server.identity's, which a test keeps equal
ROLES = ("admin", "service", "user")  # parley_server.identity.Role's values, likewise


def _settings(args: argparse.Namespace) -> Settings:
    from parley_server.config import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("database_url", args.database_url),
            ("listen_address", getattr(args, "address", None)),
            ("log_level", args.log_level),
            ("tls_cert", getattr(args, "tls_cert", None)),
            ("tls_key", getattr(args, "tls_key", None)),
            ("tls_client_ca", getattr(args, "tls_client_ca", None)),
            ("insecure", getattr(args, "insecure", None) or None),
            ("reflection", False if getattr(args, "no_reflection", False) else None),
        )
        if value is not None
    }
    return Settings(**overrides)


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    """Key management straight on the database (the first key cannot come over RPC)."""
    from parley_server.app import open_database
    from parley_server.identity import Role
    from parley_server.services.access import audit
    from parley_server.store.keys import KeyStore

    database = await open_database(settings)
    try:
        keys = KeyStore(database)
        if args.keys_command == "create":
            if (args.role == "user") != bool(args.user_id):
                raise SystemExit("--user-id is required for --role user, and only for it")
            key, secret = await keys.create(
                tenant=args.tenant,
                role=Role(args.role),
                user_id=args.user_id or "",
                display_name=args.name,
            )
            audit.info(
                "api key created: key=%s role=%s tenant=%s by the command line",
                key.id,
                key.role,
                key.tenant,
            )
            print(f"key id: {key.id}\ntenant: {key.tenant}\nrole:   {key.role}", file=sys.stderr)
            print("the key (shown once; keep it secret):", file=sys.stderr)
            print(secret)
        elif args.keys_command == "list":
            for key in (await keys.list(tenant=args.tenant or "")).items:
                state = "revoked" if key.revoke_time else "live"
                used = key.last_used_time.isoformat() if key.last_used_time else "never"
                bound = f" user={key.user_id}" if key.user_id else ""
                print(
                    f"{key.id}  {state:7}  tenant={key.tenant} role={key.role}{bound}"
                    f"  created={key.create_time.isoformat()} last_used={used}"
                    f"  {key.display_name}"
                )
        else:
            key = await keys.revoke(args.key_id)
            audit.info("api key revoked: key=%s tenant=%s by the command line", key.id, key.tenant)
            print(f"revoked {key.id}", file=sys.stderr)
    finally:
        await database.dispose()


async def _migrate(settings: Settings, revision: str) -> None:
    from parley_server.app import open_engine
    from parley_server.store import migrate as migrations

    engine = open_engine(settings)
    try:
        await migrations.upgrade(engine, revision)
    finally:
        await engine.dispose()


async def _encode_history(settings: Settings, batch: int) -> int:
    """Stores the entry of every message stored without one (appended before migration 0008, or
    by a user since deleted), which reads then hand out as they do a new message's; returns how
    many. Safe beside serving servers, and to interrupt and run again."""
    from parley_server.api.convert import stored_entry
    from parley_server.app import open_database, open_store

    database = await open_database(settings)
    try:
        history = open_store(settings, database).messages
        encoded = 0
        after: tuple[str, str] | None = None
        while found := await history.unencoded(after, batch):
            await history.store_entries(
                [(tenant, message, stored_entry(message)) for tenant, message in found]
            )
            encoded += len(found)
            after = (found[-1][0], found[-1][1].id)
            print(f"encoded {encoded} messages", file=sys.stderr)
        return encoded
    finally:
        await database.dispose()


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
    serve_parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    serve_parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve_parser.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)"
    )
    serve_parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback address without authentication or TLS (a proxy provides them)",
    )
    serve_parser.add_argument("--no-reflection", action="store_true", help="turn reflection off")
    keys_parser = commands.add_parser("keys", help="create, list and revoke API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create_parser = keys_commands.add_parser("create", help="make a key and print it, once")
    create_parser.add_argument("--tenant", default=DEFAULT_TENANT, help="its tenant (default)")
    create_parser.add_argument("--role", choices=ROLES, required=True)
    create_parser.add_argument("--user-id", help="the user a user key is bound to")
    create_parser.add_argument("--name", default="", help="a label, e.g. what uses the key")
    list_parser = keys_commands.add_parser("list", help="every key (never the key itself)")
    list_parser.add_argument("--tenant", help="only this tenant's keys")
    revoke_parser = keys_commands.add_parser("revoke", help="revoke a key by its id")
    revoke_parser.add_argument("key_id")
    migrate_parser = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate_parser.add_argument("--revision", default="head", help="target revision (head)")
    encode_parser = commands.add_parser(
        "encode-history",
        help="store the entry of messages from before migration 0008 (or of deleted users), so"
        " reads of them are as fast as of new ones",
    )
    encode_parser.add_argument("--batch", type=int, default=1000, help="messages per transaction")
    tail_parser = commands.add_parser(
        "tail", help="print a session's history, then follow it (Ctrl-C stops)"
    )
    tail_parser.add_argument("session_id")
    tail_parser.add_argument(
        "--target",
        default=os.environ.get("PARLEY_TARGET", "127.0.0.1:50051"),
        help="the server, host:port (PARLEY_TARGET; default 127.0.0.1:50051)",
    )
    tail_parser.add_argument(
        "--after-seq", type=int, default=0, help="start after this seq (0: the whole history)"
    )
    tail_parser.add_argument("--json", action="store_true", help="one JSON event per line")
    tail_parser.add_argument("--tls", action="store_true", help="connect with TLS")
    tail_parser.add_argument("--ca", type=Path, help="PEM CA to trust (implies --tls)")
    args = parser.parse_args(argv)
    if args.command == "tail":
        return _tail(args)

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            from parley_server.app import serve

            with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
                runner.run(serve(settings))
        elif args.command == "keys":
            asyncio.run(_keys(settings, args))
        elif args.command == "encode-history":
            encoded = asyncio.run(_encode_history(settings, args.batch))
            print(f"{encoded} messages encoded; every message has its encoding", file=sys.stderr)
        else:
            asyncio.run(_migrate(settings, args.revision))
            print(f"database schema at {args.revision}", file=sys.stderr)
    except OSError as error:
        print(f"parley: {error}", file=sys.stderr)
        return 1
    return 0


def _tail(args: argparse.Namespace) -> int:
    import grpc

    from parley_client import ParleyError
    from parley_client._tail import tail

    credentials = None
    if args.tls or args.ca:
        credentials = grpc.ssl_channel_credentials(args.ca.read_bytes() if args.ca else None)
    try:
        asyncio.run(
            tail(
                args.target,
                args.session_id,
                after_seq=args.after_seq,
                as_json=args.json,
                credentials=credentials,
                # From the environment only: an argument would show in the process list.
                api_key=os.environ.get("PARLEY_API_KEY", ""),
            )
        )
    except KeyboardInterrupt:
        return 130
    except ParleyError as error:
        print(f"parley tail: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
