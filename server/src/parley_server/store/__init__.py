"""Persistence: SQLAlchemy async over SQLite or PostgreSQL. Knows nothing of gRPC or protobuf."""

from __future__ import annotations

from dataclasses import dataclass

from parley_server.domain import MessageEncoding
from parley_server.store.contexts import ContextStore
from parley_server.store.database import Database
from parley_server.store.history_cache import HistoryCache
from parley_server.store.keys import KeyStore
from parley_server.store.messages import MessageStore
from parley_server.store.ratings import RatingStore
from parley_server.store.secrets import SecretStore
from parley_server.store.sessions import SessionStore
from parley_server.store.users import UserStore


@dataclass(frozen=True, slots=True)
class Store:
    """Every repository, over one database."""

    db: Database
    users: UserStore
    sessions: SessionStore
    messages: MessageStore
    contexts: ContextStore
    ratings: RatingStore
    secrets: SecretStore
    keys: KeyStore

    @classmethod
    def over(
        cls,
        db: Database,
        *,
        write_lanes: int = 1,
        encoding: MessageEncoding,
        history_cache_bytes: int,
    ) -> Store:
        cache = HistoryCache(db.changes, capacity_bytes=history_cache_bytes)
        return cls(
            db=db,
            users=UserStore(db),
            sessions=SessionStore(db, cache=cache),
            messages=MessageStore(
                db,
                write_lanes=write_lanes,
                encoding=encoding,
                cache=cache,
            ),
            contexts=ContextStore(db),
            ratings=RatingStore(db),
            secrets=SecretStore(db),
            keys=KeyStore(db),
        )


__all__ = ["Database", "Store"]
