"""Small helpers that create the resources a test needs, with fresh ids."""

from __future__ import annotations

import dataclasses
import uuid

from parley_client import Message, ParleyClient, Session, User
from parley_server.api import convert
from parley_server.api.convert import SERVER_FIELDS_BYTES
from parley_server.domain import NewMessage


def new_id() -> str:
    return str(uuid.uuid4())


async def a_user(
    client: ParleyClient, *, display_name: str = "Ada", email: str = "", role: str = ""
) -> User:
    return await client.create_user(display_name=display_name, email=email, role=role)


async def a_session(client: ParleyClient, *, title: str = "chat") -> tuple[User, Session]:
    user = await a_user(client)
    return user, await client.create_session(user_id=user.id, title=title)


async def some_messages(client: ParleyClient, session_id: str, count: int) -> list[Message]:
    return [
        await client.append_message(session_id, role="user", content=f"message {n}")
        for n in range(1, count + 1)
    ]


def as_the_api_sends(new: NewMessage) -> NewMessage:
    """`new` as the API hands it to the store: with its encoding and size."""
    body = convert.encoded_body(new)
    return dataclasses.replace(new, encoded=body, size_bytes=len(body) + SERVER_FIELDS_BYTES)
