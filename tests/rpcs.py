"""A valid request for every RPC of parley's services (ParleyService and AdminService), over
resources made for it: what the cancellation, hostile-input and tenancy suites send. A new RPC
fails test_every_rpc_has_a_valid_request until it is added here."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message as ProtoMessage

from parley_client import ParleyClient, new_message
from parley_client._gen.parley.v1 import (
    admin_service_pb2,
    context_pb2,
    message_pb2,
    session_pb2,
    user_pb2,
)
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from tests.factories import new_id

SERVICES = [
    pb.DESCRIPTOR.services_by_name["ParleyService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
]
METHOD_DESCRIPTORS = {method.name: method for s in SERVICES for method in s.methods}
METHODS = sorted(METHOD_DESCRIPTORS)
STREAMING = {name for name, method in METHOD_DESCRIPTORS.items() if method.server_streaming}
# Streams that stay open until the client leaves.
ENDLESS = {"WatchSession"}


def path(method: str) -> str:
    """The method's full gRPC path, e.g. /parley.v1.ParleyService/GetUser."""
    descriptor = METHOD_DESCRIPTORS[method]
    return f"/{descriptor.containing_service.full_name}/{method}"


def rpc(channel: grpc.Channel | grpc.aio.Channel, method: str) -> Any:
    """The method as a callable on `channel` (sync or aio), whichever service it belongs to."""
    descriptor = METHOD_DESCRIPTORS[method]
    response = message_factory.GetMessageClass(descriptor.output_type)
    kind = channel.unary_stream if descriptor.server_streaming else channel.unary_unary
    return kind(
        path(method),
        request_serializer=lambda request: request.SerializeToString(),
        response_deserializer=response.FromString,
    )


@dataclass(frozen=True)
class World:
    """Resources the requests name: a user with a session of `messages` messages, a context
    and a rating."""

    user_id: str
    session_id: str
    message_ids: list[str]
    context_id: str
    rating_id: str
    # An API key the requests name (none exists unless a test made one and put its id here).
    api_key_id: str = field(default_factory=new_id)
    # A second session of the user, with a few messages.
    spare_session_id: str = field(default_factory=new_id)


async def a_world(client: ParleyClient, *, messages: int = 300) -> World:
    user = await client.create_user(display_name="world")
    session = await client.create_session(user_id=user.id, title="world")
    ids: list[str] = []
    for start in range(0, messages, 500):
        batch = [
            new_message(role="user", content=f"message {n} " + "x" * 200)
            for n in range(start, min(start + 500, messages))
        ]
        ids.extend(m.id for m in await client.batch_append_messages(session.id, batch))
    context = await client.create_context(session.id, type="system", content="be brief")
    rating = await client.rate_message(ids[0], user_id=user.id, value=4)
    spare = await client.create_session(user_id=user.id, title="spare")
    await client.batch_append_messages(
        spare.id, [new_message(role="user", content=f"spare {n}") for n in range(3)]
    )
    return World(user.id, session.id, ids, context.id, rating.id, spare_session_id=spare.id)


def valid_requests(world: World, rng: random.Random) -> dict[str, Callable[[], ProtoMessage]]:
    """For each method, a maker of a valid request (fresh ids where it creates)."""

    def a_message() -> str:
        return rng.choice(world.message_ids)

    def a_state_delta() -> session_pb2.StateDelta:
        scoped = session_pb2.ScopedStateDelta
        delta = session_pb2.StateDelta(
            session=scoped(remove=["gone"]), user=scoped(remove=["gone"]), app=scoped()
        )
        for part in (delta.session, delta.user, delta.app):
            part.set.update({"n": rng.randint(0, 9)})
        if rng.random() < 0.5:  # a user key may not change app state: half without, to reach rows
            delta.ClearField("app")
        return delta

    user = user_pb2.User
    session = session_pb2.Session
    return {
        "CreateUser": lambda: pb.CreateUserRequest(user=user(id=new_id(), display_name="n")),
        "GetUser": lambda: pb.GetUserRequest(id=world.user_id),
        "ListUsers": lambda: pb.ListUsersRequest(page_size=rng.choice([0, 10, 1000])),
        "UpdateUser": lambda: pb.UpdateUserRequest(
            user=user(id=world.user_id, display_name="renamed"),
            update_mask=FieldMask(paths=["display_name"]),
        ),
        "DeleteUser": lambda: pb.DeleteUserRequest(id=new_id(), allow_missing=True),
        "CreateSession": lambda: pb.CreateSessionRequest(
            session=session(id=new_id(), user_id=world.user_id, title="s")
        ),
        "GetSession": lambda: pb.GetSessionRequest(id=world.session_id),
        "ListSessions": lambda: pb.ListSessionsRequest(user_id=world.user_id),
        "UpdateSession": lambda: pb.UpdateSessionRequest(
            session=session(id=world.session_id, title="renamed"),
            update_mask=FieldMask(paths=["title"]),
        ),
        "CloseSession": lambda: pb.CloseSessionRequest(id=new_id()),
        "DeleteSession": lambda: pb.DeleteSessionRequest(id=new_id(), allow_missing=True),
        "GetOrCreateOpenSession": lambda: pb.GetOrCreateOpenSessionRequest(user_id=world.user_id),
        "GetLatestSession": lambda: pb.GetLatestSessionRequest(user_id=world.user_id),
        "UpdateSessionState": lambda: pb.UpdateSessionStateRequest(
            session_id=world.session_id, state_delta=a_state_delta()
        ),
        "GetUserState": lambda: pb.GetUserStateRequest(user_id=world.user_id),
        "AppendMessage": lambda: pb.AppendMessageRequest(
            session_id=world.session_id,
            message=message_pb2.Message(id=new_id(), role=message_pb2.ROLE_USER, content="hi"),
        ),
        "BatchAppendMessages": lambda: pb.BatchAppendMessagesRequest(
            session_id=world.session_id,
            messages=[
                message_pb2.Message(id=new_id(), role=message_pb2.ROLE_USER, content="b")
                for _ in range(rng.randint(1, 20))
            ],
        ),
        "GetMessage": lambda: pb.GetMessageRequest(id=a_message()),
        "ListMessages": lambda: pb.ListMessagesRequest(
            session_id=world.session_id,
            page_size=rng.choice([0, 50, 1000]),
            order_by=rng.choice(["", "seq desc"]),
        ),
        "StreamMessages": lambda: pb.StreamMessagesRequest(session_id=world.session_id),
        "WatchSession": lambda: pb.WatchSessionRequest(
            session_id=world.session_id, after_seq=rng.choice([0, len(world.message_ids) - 1])
        ),
        "GetContextWindow": lambda: pb.GetContextWindowRequest(
            session_id=world.session_id, max_messages=rng.choice([0, 50, 1000])
        ),
        "DeleteMessage": lambda: pb.DeleteMessageRequest(id=new_id(), allow_missing=True),
        "PopMessage": lambda: pb.PopMessageRequest(session_id=world.session_id),
        # The spare session: clearing the one the other requests name would leave them nothing.
        "ClearMessages": lambda: pb.ClearMessagesRequest(session_id=world.spare_session_id),
        "CreateContext": lambda: pb.CreateContextRequest(
            context=context_pb2.Context(
                id=new_id(), session_id=world.session_id, type="file", content="c"
            )
        ),
        "GetContext": lambda: pb.GetContextRequest(id=world.context_id),
        "ListContexts": lambda: pb.ListContextsRequest(session_id=world.session_id),
        "DeleteContext": lambda: pb.DeleteContextRequest(id=new_id(), allow_missing=True),
        "RateMessage": lambda: pb.RateMessageRequest(
            message_id=a_message(), user_id=world.user_id, value=rng.randint(1, 5)
        ),
        "ListRatings": lambda: pb.ListRatingsRequest(session_id=world.session_id),
        "DeleteRating": lambda: pb.DeleteRatingRequest(id=new_id(), allow_missing=True),
        "GetRatingSummary": lambda: pb.GetRatingSummaryRequest(session_id=world.session_id),
        "CreateApiKey": lambda: admin_service_pb2.CreateApiKeyRequest(
            api_key=admin_service_pb2.ApiKey(
                role=admin_service_pb2.ApiKey.ROLE_USER, user_id=world.user_id
            )
        ),
        "GetApiKey": lambda: admin_service_pb2.GetApiKeyRequest(id=world.api_key_id),
        "ListApiKeys": lambda: admin_service_pb2.ListApiKeysRequest(page_size=rng.choice([0, 1])),
        "RevokeApiKey": lambda: admin_service_pb2.RevokeApiKeyRequest(id=world.api_key_id),
    }
