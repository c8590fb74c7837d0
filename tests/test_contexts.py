"""Contexts: create, get, list by session (filtered by type), delete."""

from __future__ import annotations

import pytest

from parley_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
)
from tests.factories import a_session, new_id


async def test_create_get_and_list_by_type(client: ParleyClient) -> None:
    _, session = await a_session(client)
    system = await client.create_context(
        session.id, type="system", content="You are a helpful assistant."
    )
    document = await client.create_context(
        session.id,
        type="file",
        content="%PDF-1.7 ...",
        metadata={"filename": "report.pdf", "pages": 12},
    )
    note = await client.create_context(session.id, type="user", content="prefers metric units")
    assert system.session_id == session.id
    assert document.metadata["filename"] == "report.pdf"
    assert await client.get_context(document.id) == document

    everything = await client.list_contexts(session.id)
    assert list(everything.contexts) == [system, document, note]  # oldest first
    files = await client.list_contexts(session.id, type="file")
    assert list(files.contexts) == [document]
    paged = [c async for c in client.iter_contexts(session.id, page_size=1)]
    assert paged == [system, document, note]


async def test_any_label_is_a_type(client: ParleyClient) -> None:
    _, session = await a_session(client)
    context = await client.create_context(session.id, type="retrieved-chunk/v2", content="...")
    assert context.type == "retrieved-chunk/v2"


async def test_context_errors(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(NotFoundError):
        await client.create_context(new_id(), type="system")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_context(session.id, type="")
    assert caught.value.field_violations[0].field == "context.type"
    with pytest.raises(InvalidArgumentError):
        await client.create_context("no pe", type="system")
    chosen = new_id()
    await client.create_context(session.id, type="system", id=chosen)
    with pytest.raises(AlreadyExistsError):
        await client.create_context(session.id, type="file", id=chosen)
    with pytest.raises(NotFoundError):
        await client.get_context(new_id())
    with pytest.raises(NotFoundError):
        await client.list_contexts(new_id())


async def test_closed_session_takes_no_new_context(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.close_session(session.id)
    with pytest.raises(FailedPreconditionError) as caught:
        await client.create_context(session.id, type="system")
    assert caught.value.reason == "SESSION_CLOSED"


async def test_delete_context(client: ParleyClient) -> None:
    _, session = await a_session(client)
    context = await client.create_context(session.id, type="system")
    await client.delete_context(context.id)
    with pytest.raises(NotFoundError):
        await client.get_context(context.id)
    with pytest.raises(NotFoundError):
        await client.delete_context(context.id)
    await client.delete_context(context.id, allow_missing=True)
    assert len((await client.list_contexts(session.id)).contexts) == 0
