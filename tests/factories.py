"""Small helpers that create the resources a test needs, with fresh ids."""

from __future__ import annotations

import uuid

from parley_client import Message, ParleyClient, Session, User


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
