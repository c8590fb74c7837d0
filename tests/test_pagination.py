"""AIP-158 rules, for every List method: defaults, limits, opaque tokens, stable filters."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from parley_client import InvalidArgumentError, ParleyClient, new_message
from tests.factories import a_session, a_user

ListCall = Callable[..., Awaitable[Any]]


@dataclass
class Listing:
    """One List method over a scope of this test's own, holding `ids` in list order."""

    call: ListCall  # call(page_size=, page_token=, **filters) -> response
    items_field: str
    ids: list[str]
    filters: dict[str, Any]
    changed_filters: dict[str, Any] | None  # another valid filter, for the "changed" rule


async def _users(client: ParleyClient, count: int) -> Listing:
    ids = [(await a_user(client, display_name=str(n))).id for n in range(count)]
    return Listing(client.list_users, "users", ids, {}, None)


async def _sessions(client: ParleyClient, count: int) -> Listing:
    user, other = await a_user(client), await a_user(client)
    ids = [(await client.create_session(user_id=user.id)).id for _ in range(count)]
    return Listing(
        client.list_sessions, "sessions", ids[::-1], {"user_id": user.id}, {"user_id": other.id}
    )


async def _messages(client: ParleyClient, count: int) -> Listing:
    _, session = await a_session(client)
    appended = await client.batch_append_messages(
        session.id, [new_message(role="user", chapter="c") for _ in range(count)]
    )
    return Listing(
        lambda **kw: client.list_messages(session.id, **kw),
        "messages",
        [m.id for m in appended],
        {"chapter": "c"},
        {"chapter": "d"},
    )


async def _contexts(client: ParleyClient, count: int) -> Listing:
    _, session = await a_session(client)
    ids = [(await client.create_context(session.id, type="file")).id for _ in range(count)]
    return Listing(
        lambda **kw: client.list_contexts(session.id, **kw),
        "contexts",
        ids,
        {"type": "file"},
        {"type": "system"},
    )


async def _ratings(client: ParleyClient, count: int) -> Listing:
    user, session = await a_session(client)
    appended = await client.batch_append_messages(
        session.id, [new_message(role="assistant") for _ in range(count)]
    )
    ids = [(await client.rate_message(m.id, user_id=user.id, value=3)).id for m in appended]
    return Listing(
        client.list_ratings, "ratings", ids, {"session_id": session.id}, {"user_id": user.id}
    )


LISTINGS = {
    "ListUsers": _users,
    "ListSessions": _sessions,
    "ListMessages": _messages,
    "ListContexts": _contexts,
    "ListRatings": _ratings,
}


@pytest.fixture(params=list(LISTINGS))
def make_listing(
    request: pytest.FixtureRequest,
) -> Callable[[ParleyClient, int], Awaitable[Listing]]:
    return LISTINGS[request.param]


async def _page(listing: Listing, **kw: Any) -> tuple[list[str], str]:
    response = await listing.call(**listing.filters, **kw)
    return [item.id for item in getattr(response, listing.items_field)], response.next_page_token


async def test_walk_n_plus_one_items(client: ParleyClient, make_listing: Any) -> None:
    page_size = 3
    listing = await make_listing(client, page_size + 1)
    first, token = await _page(listing, page_size=page_size)
    assert first == listing.ids[:page_size]
    assert token  # more follow
    second, last_token = await _page(listing, page_size=page_size, page_token=token)
    assert second == listing.ids[page_size:]
    assert last_token == ""  # empty only at the end
    # Tokens are opaque: not a number, and nothing a client could compute.
    assert not token.isdigit()
    assert not base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).isdigit()


async def test_exact_fit_has_no_next_token(client: ParleyClient, make_listing: Any) -> None:
    listing = await make_listing(client, 2)
    ids, token = await _page(listing, page_size=2)
    assert (ids, token) == (listing.ids, "")


async def test_negative_page_size_is_invalid(client: ParleyClient, make_listing: Any) -> None:
    listing = await make_listing(client, 1)
    with pytest.raises(InvalidArgumentError) as caught:
        await _page(listing, page_size=-1)
    assert caught.value.field_violations[0].field == "page_size"


async def test_garbage_token_is_invalid(client: ParleyClient, make_listing: Any) -> None:
    listing = await make_listing(client, 1)
    for garbage in ("10", "not a token!", base64.urlsafe_b64encode(b"\xff\x00junk").decode()):
        with pytest.raises(InvalidArgumentError) as caught:
            await _page(listing, page_token=garbage)
        assert caught.value.field_violations[0].field == "page_token"


@pytest.mark.parametrize("method", [m for m in LISTINGS if m != "ListUsers"])  # it has no filter
async def test_changed_filters_between_pages_are_invalid(client: ParleyClient, method: str) -> None:
    listing = await LISTINGS[method](client, 3)
    assert listing.changed_filters is not None
    _, token = await _page(listing, page_size=1)
    with pytest.raises(InvalidArgumentError) as caught:
        await listing.call(page_size=1, page_token=token, **listing.changed_filters)
    assert "different filter" in caught.value.field_violations[0].description


async def test_token_of_another_list_is_invalid(client: ParleyClient) -> None:
    _, session = await a_session(client)
    await client.batch_append_messages(session.id, [new_message(role="user") for _ in range(3)])
    token = (await client.list_messages(session.id, page_size=1)).next_page_token
    with pytest.raises(InvalidArgumentError) as caught:
        await client.list_contexts(session.id, page_token=token)
    assert "not a ListContexts page token" in caught.value.field_violations[0].description


async def test_page_size_default_and_maximum(client: ParleyClient) -> None:
    _, session = await a_session(client)
    for _ in range(2):
        await client.batch_append_messages(
            session.id, [new_message(role="user") for _ in range(1000)]
        )
    await client.append_message(session.id, role="user")
    default = await client.list_messages(session.id)
    assert len(default.messages) == 100
    assert default.next_page_token
    clamped = await client.list_messages(session.id, page_size=5000)
    assert len(clamped.messages) == 1000
    rest = await client.list_messages(
        session.id, page_size=5000, page_token=clamped.next_page_token
    )
    assert len(rest.messages) == 1000
    final = await client.list_messages(session.id, page_size=5000, page_token=rest.next_page_token)
    assert (len(final.messages), final.next_page_token) == (1, "")
    assert final.total_size == 2001
