"""A typed tour of parley_client: an agent turn with tool calls, then the history read back.

    make run                                     # in one terminal
    .venv/bin/python examples/typed_usage.py     # in another (or: ... typed_usage.py HOST:PORT)

`make lint` checks this file with mypy --strict, so it also proves the client's types hold up.
"""

from __future__ import annotations

import asyncio
import json
import sys

from parley_client import (
    Message,
    NotFoundError,
    ParleyClient,
    RatingSummary,
    RetryPolicy,
    Role,
    Session,
    ToolCall,
    new_message,
)


async def agent_turn(client: ParleyClient, session: Session, question: str) -> list[Message]:
    call = ToolCall(id="call_1", name="get_weather", arguments=json.dumps({"city": "Paris"}))
    return await client.batch_append_messages(
        session.id,
        [
            new_message(role="user", content=question, invocation_id="inv_1"),
            new_message(role="assistant", tool_calls=[call], invocation_id="inv_1"),
            new_message(
                role="tool",
                tool_call_id=call.id,
                name=call.name,
                content='{"temperature": 18}',
                invocation_id="inv_1",
            ),
            new_message(role="assistant", content="18°C in Paris.", invocation_id="inv_1"),
        ],
    )


async def main(target: str = "127.0.0.1:50051") -> None:
    async with ParleyClient(target, default_timeout=10) as client:
        user = await client.create_user(display_name="Ada", email="ada@example.com")
        opened = await client.get_or_create_open_session(user.id, title="weather")
        session: Session = opened.session
        await client.create_context(session.id, type="system", content="Answer briefly.")

        answer = (await agent_turn(client, session, "Weather in Paris?"))[-1]
        await client.rate_message(answer.id, user_id=user.id, value=5, comment="spot on")

        # Rebuild the context window: every message, in order, across pages.
        async for message in client.iter_messages(session.id, retry=RetryPolicy(max_attempts=3)):
            print(f"{message.seq:>3} {Role.Name(message.role):<15} {message.content}")
        summary: RatingSummary = await client.get_rating_summary(session_id=session.id)
        print(f"{summary.count} rating(s), mean {summary.mean:.1f}")

        await client.delete_user(user.id, force=True)
        try:
            await client.get_session(session.id)
        except NotFoundError as error:
            print(f"gone: {error.reason}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))
