"""Users: create, get, list, update (FieldMask rules of AIP-134), delete."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from parley_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
    UserProfile,
)
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1 import user_pb2
from tests.conftest import RawCall
from tests.factories import a_user, new_id


async def test_create_and_get_round_trip_every_field(client: ParleyClient) -> None:
    profile = UserProfile(
        picture_url="https://example.com/ada.png",
        status_message="computing",
        bio="First programmer",
        location="London",
        website="https://ada.example",
        social_links={"github": "https://github.com/ada", "mastodon": "@ada@example.social"},
    )
    created = await client.create_user(
        display_name="Ada Lovelace",
        email="Ada@Example.com",
        profile=profile,
        role="admin",
        preferences={"theme": "dark", "avatar": "owl", "interaction_style": "terse"},
    )
    assert created.id
    assert created.create_time.seconds > 0
    assert created.create_time == created.update_time
    assert created.email == "ada@example.com"  # emails compare case-insensitively
    assert created.profile == profile
    assert dict(created.preferences) == {
        "theme": "dark",
        "avatar": "owl",
        "interaction_style": "terse",
    }
    assert await client.get_user(created.id) == created


async def test_client_supplied_id_is_kept_and_canonicalised(client: ParleyClient) -> None:
    chosen = new_id()
    created = await client.create_user(display_name="Grace", id=chosen.upper())
    assert created.id == chosen
    assert (await client.get_user(chosen.upper())).id == chosen


async def test_duplicate_id_is_already_exists(client: ParleyClient) -> None:
    chosen = new_id()
    await client.create_user(display_name="Grace", id=chosen)
    with pytest.raises(AlreadyExistsError) as caught:
        await client.create_user(display_name="Grace again", id=chosen)
    assert caught.value.reason == "USER_ALREADY_EXISTS"
    assert caught.value.metadata == {"resourceType": "user", "resourceId": chosen}


async def test_duplicate_email_is_already_exists_whatever_its_case(client: ParleyClient) -> None:
    first = await client.create_user(email="grace@example.com")
    with pytest.raises(AlreadyExistsError) as caught:
        await client.create_user(email="GRACE@example.com")
    assert caught.value.reason == "EMAIL_ALREADY_EXISTS"
    assert caught.value.metadata["userId"] == first.id


async def test_users_without_email_do_not_collide(client: ParleyClient) -> None:
    await client.create_user(display_name="a")
    await client.create_user(display_name="b")


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"id": "not an id"}, "user.id"),
        ({"email": "not an email"}, "user.email"),
        ({"role": "r" * 257}, "user.role"),
    ],
)
async def test_invalid_create_names_the_field(
    client: ParleyClient, fields: dict[str, Any], bad_field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_user(**fields)
    assert [v.field for v in caught.value.field_violations] == [bad_field]


async def test_get_missing_is_not_found(client: ParleyClient) -> None:
    missing = new_id()
    with pytest.raises(NotFoundError) as caught:
        await client.get_user(missing)
    assert caught.value.reason == "USER_NOT_FOUND"
    assert missing in caught.value.message


async def test_get_with_bad_uuid_is_invalid_argument(client: ParleyClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.get_user("4 2")
    assert caught.value.field_violations[0].field == "id"


async def test_update_changes_only_the_named_fields(client: ParleyClient) -> None:
    user = await a_user(client, email="old@example.com", role="user")
    updated = await client.update_user(user.id, display_name="Ada L.", role="admin")
    assert (updated.display_name, updated.role, updated.email) == (
        "Ada L.",
        "admin",
        "old@example.com",
    )
    assert updated.update_time.ToDatetime() > user.update_time.ToDatetime()
    assert updated.create_time == user.create_time
    assert await client.get_user(user.id) == updated


async def test_update_with_empty_value_clears_the_field(client: ParleyClient) -> None:
    user = await a_user(client, email="gone@example.com")
    assert (await client.update_user(user.id, email="")).email == ""
    # The address is free again.
    await client.create_user(email="gone@example.com")


async def test_update_to_a_taken_email_is_already_exists(client: ParleyClient) -> None:
    await a_user(client, email="taken@example.com")
    user = await a_user(client)
    with pytest.raises(AlreadyExistsError):
        await client.update_user(user.id, email="taken@example.com")


async def test_update_missing_is_not_found(client: ParleyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.update_user(new_id(), display_name="x")


# The FieldMask rules are checked on the raw request, as any client in any language would send it.


def _update(user: user_pb2.User, paths: list[str] | None) -> pb.UpdateUserRequest:
    return pb.UpdateUserRequest(
        user=user, update_mask=FieldMask(paths=paths) if paths is not None else None
    )


async def test_omitted_mask_updates_every_populated_field(
    client: ParleyClient, raw: RawCall
) -> None:
    user = await client.create_user(
        display_name="Ada",
        role="user",
        profile=UserProfile(bio="old bio", location="London"),
    )
    change = user_pb2.User(id=user.id, role="admin", profile=user_pb2.UserProfile(bio="new bio"))
    updated = await raw("UpdateUser", _update(change, None))
    assert updated.role == "admin"
    assert updated.display_name == "Ada"  # not populated in the request: kept
    assert updated.profile.bio == "new bio"
    assert updated.profile.location == "London"  # sub-field not populated: kept


async def test_star_mask_replaces_every_field(client: ParleyClient, raw: RawCall) -> None:
    user = await client.create_user(display_name="Ada", role="user", profile=UserProfile(bio="bio"))
    updated = await raw("UpdateUser", _update(user_pb2.User(id=user.id, role="admin"), ["*"]))
    assert updated.role == "admin"
    assert updated.display_name == ""
    assert updated.profile == UserProfile()


async def test_sub_field_path_updates_only_that_sub_field(
    client: ParleyClient, raw: RawCall
) -> None:
    user = await client.create_user(profile=UserProfile(bio="bio", location="London"))
    change = user_pb2.User(id=user.id, profile=user_pb2.UserProfile(bio="new", location="Paris"))
    updated = await raw("UpdateUser", _update(change, ["profile.bio"]))
    assert (updated.profile.bio, updated.profile.location) == ("new", "London")


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["nickname"], "unknown field 'nickname'"),
        (["create_time"], "output only"),
        (["*", "role"], "cannot be combined"),
    ],
)
async def test_bad_mask_is_invalid_argument(
    client: ParleyClient, raw: RawCall, paths: list[str], message: str
) -> None:
    user = await a_user(client)
    with pytest.raises(InvalidArgumentError) as caught:
        await raw("UpdateUser", _update(user_pb2.User(id=user.id, role="x"), paths))
    assert caught.value.field_violations[0].field == "update_mask"
    assert message in caught.value.field_violations[0].description
    assert (await client.get_user(user.id)).role == user.role  # nothing half-written


async def test_list_users_oldest_first(client: ParleyClient) -> None:
    created = [await a_user(client, display_name=f"u{n}") for n in range(5)]
    listed = [u async for u in client.iter_users(page_size=2)]
    assert [u.id for u in listed] == [u.id for u in created]


async def test_delete_user(client: ParleyClient) -> None:
    user = await a_user(client)
    await client.delete_user(user.id)
    with pytest.raises(NotFoundError):
        await client.get_user(user.id)
    with pytest.raises(NotFoundError):
        await client.delete_user(user.id)
    await client.delete_user(user.id, allow_missing=True)


async def test_delete_user_with_sessions_needs_force(client: ParleyClient) -> None:
    user = await a_user(client)
    session = await client.create_session(user_id=user.id)
    await client.append_message(session.id, role="user", content="hi")
    with pytest.raises(FailedPreconditionError) as caught:
        await client.delete_user(user.id)
    assert caught.value.reason == "USER_HAS_SESSIONS"
    assert (await client.get_session(session.id)).message_count == 1  # nothing deleted

    await client.delete_user(user.id, force=True)
    with pytest.raises(NotFoundError):
        await client.get_session(session.id)


async def test_deleting_an_author_keeps_their_messages_elsewhere(client: ParleyClient) -> None:
    owner, author = await a_user(client), await a_user(client)
    session = await client.create_session(user_id=owner.id)
    message = await client.append_message(
        session.id, role="user", content="from a guest", user_id=author.id
    )
    rated = await client.append_message(session.id, role="assistant", content="answer")
    await client.rate_message(rated.id, user_id=author.id, value=4)

    async def authors_as_read() -> list[list[str]]:
        """The messages' user_id through every read of history (each sends stored encodings)."""
        listed = (await client.list_messages(session.id)).messages
        streamed = [m async for m in client.stream_messages(session.id)]
        window = (await client.get_context_window(session.id)).messages
        return [[m.user_id for m in read] for read in (listed, streamed, window)]

    assert await authors_as_read() == [[author.id, ""]] * 3
    await client.delete_user(author.id)

    kept = await client.get_message(message.id)
    assert (kept.content, kept.user_id) == ("from a guest", "")
    assert await authors_as_read() == [["", ""]] * 3
    assert (await client.get_rating_summary(message_id=rated.id)).count == 0
