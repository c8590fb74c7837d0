from __future__ import annotations

from sqlalchemy import select

from parley_server.store.database import Database
from parley_server.store.tables import secrets


class SecretStore:
    """Keys the migrations made, shared by every server process over the database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> bytes:
        async with self._db.read() as session:
            value = await session.scalar(select(secrets.c.value).where(secrets.c.name == name))
        if value is None:
            raise LookupError(f"the database has no {name!r} key; run `parley migrate`")
        return bytes(value)
