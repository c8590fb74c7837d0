"""The framework adapters, measured against each framework's own PostgreSQL store (make bench).

For Google ADK, the OpenAI Agents SDK and LangChain, two stores behind the framework's own
interface: parley's adapter (over a `parley serve` on PostgreSQL) and the framework's own
PostgreSQL store (ADK's DatabaseSessionService, the SDK's SQLAlchemySession, langchain-postgres'
PostgresChatMessageHistory) on the same PostgreSQL server. Each client has its own conversation:
"append" adds one event (item, message) to it; "read" reads a 50-event conversation back, as an
agent does on every turn. run.py times both with the same closed loop.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
from agents.items import TResponseInputItem
from agents.memory.session import SessionABC
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions import Session as AdkSession
from google.adk.sessions.base_session_service import BaseSessionService
from google.adk.sessions.database_session_service import DatabaseSessionService
from google.genai import types
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_postgres import PostgresChatMessageHistory
from sqlalchemy.ext.asyncio import create_async_engine

from parley_client import ParleyClient
from parley_client.integrations.adk import ParleySessionService
from parley_client.integrations.langchain import ParleyChatMessageHistory
from parley_client.integrations.openai_agents import ParleySession

Operation = Callable[[int], Awaitable[None]]
FRAMEWORKS = ("adk", "openai_agents", "langchain")
HISTORY = 50  # events in each conversation that "read" reads
TEXT = "The quick brown fox jumps over the lazy dog. " * 6


@dataclass(frozen=True)
class Workloads:
    append: Operation
    read: Operation


def _event(n: int) -> Event:
    author = "user" if n % 2 == 0 else "agent"
    role = "user" if n % 2 == 0 else "model"
    return Event(
        invocation_id=f"inv-{n // 2}",
        author=author,
        content=types.Content(role=role, parts=[types.Part(text=TEXT)]),
        actions=EventActions(state_delta={"turn": n}),
    )


def _item(n: int) -> TResponseInputItem:
    return cast(TResponseInputItem, {"role": ("user", "assistant")[n % 2], "content": TEXT})


def _message(n: int) -> BaseMessage:
    return HumanMessage(content=TEXT) if n % 2 == 0 else AIMessage(content=TEXT)


async def _adk(service: BaseSessionService, clients: int) -> Workloads:
    writing: list[AdkSession] = []
    reading: list[str] = []
    for _ in range(clients):
        writing.append(await service.create_session(app_name="bench", user_id="user"))
        session = await service.create_session(app_name="bench", user_id="user")
        for n in range(HISTORY):
            await service.append_event(session, _event(n))
        reading.append(session.id)
    turns = [0] * clients

    async def append(worker: int) -> None:
        turns[worker] += 1
        await service.append_event(writing[worker], _event(turns[worker]))

    async def read(worker: int) -> None:
        session = await service.get_session(
            app_name="bench", user_id="user", session_id=reading[worker]
        )
        assert session is not None
        assert len(session.events) == HISTORY

    return Workloads(append, read)


async def _openai(make: Callable[[str], SessionABC], clients: int) -> Workloads:
    writing = [make(f"w-{uuid.uuid4().hex}") for _ in range(clients)]
    reading = [make(f"r-{uuid.uuid4().hex}") for _ in range(clients)]
    for session in reading:
        await session.add_items([_item(n) for n in range(HISTORY)])

    async def append(worker: int) -> None:
        await writing[worker].add_items([_item(0)])

    async def read(worker: int) -> None:
        assert len(await reading[worker].get_items(limit=HISTORY)) == HISTORY

    return Workloads(append, read)


async def _langchain(make: Callable[[str], BaseChatMessageHistory], clients: int) -> Workloads:
    writing = [make(str(uuid.uuid4())) for _ in range(clients)]
    reading = [make(str(uuid.uuid4())) for _ in range(clients)]
    for history in reading:
        await history.aadd_messages([_message(n) for n in range(HISTORY)])

    async def append(worker: int) -> None:
        await writing[worker].aadd_messages([_message(0)])

    async def read(worker: int) -> None:
        assert len(await reading[worker].aget_messages()) == HISTORY

    return Workloads(append, read)


@asynccontextmanager
async def over_parley(framework: str, address: str, clients: int) -> AsyncIterator[Workloads]:
    """The framework's interface served by parley's adapter, one client shared by all workers."""
    client = ParleyClient(address)
    try:
        if framework == "adk":
            yield await _adk(ParleySessionService(client), clients)
        elif framework == "openai_agents":
            yield await _openai(lambda sid: ParleySession(sid, client), clients)
        else:
            yield await _langchain(
                lambda sid: ParleyChatMessageHistory(sid, async_client=client), clients
            )
    finally:
        await client.close()


@asynccontextmanager
async def native(framework: str, database_url: str, clients: int) -> AsyncIterator[Workloads]:
    """The framework's own PostgreSQL store over database_url (a fresh database)."""
    if framework == "adk":
        service = DatabaseSessionService(database_url)
        try:
            yield await _adk(service, clients)
        finally:
            await service.close()
    elif framework == "openai_agents":
        engine = create_async_engine(database_url, pool_size=clients, max_overflow=clients)
        try:
            yield await _openai(
                lambda sid: SQLAlchemySession(sid, engine=engine, create_tables=True), clients
            )
        finally:
            await engine.dispose()
    else:
        # langchain-postgres: psycopg, one connection per history (its own design).
        conninfo = database_url.replace("postgresql+asyncpg://", "postgresql://")
        async with contextlib.AsyncExitStack() as stack:
            setup = await stack.enter_async_context(
                await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            )
            await PostgresChatMessageHistory.acreate_tables(setup, "bench_history")
            pool: list[Any] = [
                await stack.enter_async_context(
                    await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                )
                for _ in range(2 * clients)
            ]
            handed = iter(pool)
            yield await _langchain(
                lambda sid: PostgresChatMessageHistory(
                    "bench_history", sid, async_connection=next(handed)
                ),
                clients,
            )
