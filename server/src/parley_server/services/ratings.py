from __future__ import annotations

from parley_server.domain import Page, Rating, RatingFilter, RatingSummary, TimeCursor
from parley_server.errors import FieldViolation, InvalidArgument
from parley_server.identity import Principal
from parley_server.services.access import acting_for, require_data_access
from parley_server.store import Store

MIN_RATING, MAX_RATING = 1, 5


def rating_violations(value: int) -> list[FieldViolation]:
    if MIN_RATING <= value <= MAX_RATING:
        return []
    return [FieldViolation("value", f"must be {MIN_RATING} to {MAX_RATING}, not {value}")]


class RatingService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def rate(
        self, caller: Principal, message_id: str, user_id: str, value: int, comment: str
    ) -> Rating:
        """user_id's rating of the message, replacing their earlier one."""
        if not MIN_RATING <= value <= MAX_RATING:
            raise InvalidArgument.field(
                "value", f"must be {MIN_RATING} to {MAX_RATING}, not {value}"
            )
        require_data_access(caller)
        return await self._store.ratings.rate(
            caller.scope, message_id, acting_for(caller, user_id), value, comment
        )

    async def list(
        self, caller: Principal, where: RatingFilter, *, after: TimeCursor | None, limit: int
    ) -> Page[Rating]:
        require_data_access(caller)
        return await self._store.ratings.list(caller.scope, where, after=after, limit=limit)

    async def delete(self, caller: Principal, rating_id: str, *, allow_missing: bool) -> None:
        require_data_access(caller)
        await self._store.ratings.delete(caller.scope, rating_id, allow_missing=allow_missing)

    async def summarize(
        self, caller: Principal, *, message_id: str = "", session_id: str = ""
    ) -> RatingSummary:
        require_data_access(caller)
        return await self._store.ratings.summarize(
            caller.scope, message_id=message_id, session_id=session_id
        )
