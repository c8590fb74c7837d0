"""The service layer: parley's rules, once, between the API edge and the store.

Every method takes the caller's Principal first and domain types after it; none knows of gRPC or
protobuf. The servicer converts requests into these calls and results back; the store persists.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_server.services.contexts import ContextService
from parley_server.services.keys import KeyService
from parley_server.services.messages import MessageService
from parley_server.services.ratings import RatingService
from parley_server.services.sessions import SessionService
from parley_server.services.users import UserService
from parley_server.services.watch import WatchService
from parley_server.store import Store


@dataclass(frozen=True, slots=True)
class Services:
    users: UserService
    sessions: SessionService
    messages: MessageService
    contexts: ContextService
    ratings: RatingService
    keys: KeyService
    watch: WatchService

    @classmethod
    def over(
        cls,
        store: Store,
        *,
        response_budget_bytes: int,
        watch_heartbeat_seconds: float,
        watch_max_lifetime_seconds: float,
    ) -> Services:
        sessions = SessionService(store)
        return cls(
            users=UserService(store),
            sessions=sessions,
            messages=MessageService(store, sessions, response_budget_bytes=response_budget_bytes),
            contexts=ContextService(store),
            ratings=RatingService(store),
            keys=KeyService(store.keys),
            watch=WatchService(
                store,
                sessions,
                response_budget_bytes=response_budget_bytes,
                heartbeat_seconds=watch_heartbeat_seconds,
                max_lifetime_seconds=watch_max_lifetime_seconds,
            ),
        )


__all__ = ["Services"]
