"""Every RPC that names a resource by id: a malformed id is INVALID_ARGUMENT naming the field,
and an unknown one is NOT_FOUND saying what is missing. Sent raw, as any client would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message as ProtoMessage

from parley_client import InvalidArgumentError, NotFoundError
from parley_client._gen.parley.v1 import (
    context_pb2,
    message_pb2,
    session_pb2,
    user_pb2,
)
from parley_client._gen.parley.v1 import (
    parley_service_pb2 as pb,
)
from tests.conftest import RawCall
from tests.factories import new_id

USER = user_pb2.User
SESSION = session_pb2.Session

# method, the request for a given id, the field that carries it, the kind of resource it names
CASES: list[tuple[str, Callable[[str], ProtoMessage], str, str]] = [
    ("GetUser", lambda i: pb.GetUserRequest(id=i), "id", "user"),
    ("UpdateUser", lambda i: pb.UpdateUserRequest(user=USER(id=i, role="x")), "user.id", "user"),
    ("DeleteUser", lambda i: pb.DeleteUserRequest(id=i), "id", "user"),
    (
        "CreateSession",
        lambda i: pb.CreateSessionRequest(session=SESSION(user_id=i)),
        "session.user_id",
        "user",
    ),
    ("GetSession", lambda i: pb.GetSessionRequest(id=i), "id", "session"),
    ("ListSessions", lambda i: pb.ListSessionsRequest(user_id=i), "user_id", "user"),
    (
        "UpdateSession",
        lambda i: pb.UpdateSessionRequest(session=SESSION(id=i, title="t")),
        "session.id",
        "session",
    ),
    ("CloseSession", lambda i: pb.CloseSessionRequest(id=i), "id", "session"),
    ("DeleteSession", lambda i: pb.DeleteSessionRequest(id=i), "id", "session"),
    (
        "GetOrCreateOpenSession",
        lambda i: pb.GetOrCreateOpenSessionRequest(user_id=i),
        "user_id",
        "user",
    ),
    ("GetLatestSession", lambda i: pb.GetLatestSessionRequest(user_id=i), "user_id", "user"),
    (
        "UpdateSessionState",
        lambda i: pb.UpdateSessionStateRequest(session_id=i),
        "session_id",
        "session",
    ),
    ("GetUserState", lambda i: pb.GetUserStateRequest(app="a", user_id=i), "user_id", "user"),
    (
        "AppendMessage",
        lambda i: pb.AppendMessageRequest(
            session_id=i, message=message_pb2.Message(role=message_pb2.ROLE_USER)
        ),
        "session_id",
        "session",
    ),
    (
        "BatchAppendMessages",
        lambda i: pb.BatchAppendMessagesRequest(
            session_id=i, messages=[message_pb2.Message(role=message_pb2.ROLE_USER)]
        ),
        "session_id",
        "session",
    ),
    ("GetMessage", lambda i: pb.GetMessageRequest(id=i), "id", "message"),
    ("ListMessages", lambda i: pb.ListMessagesRequest(session_id=i), "session_id", "session"),
    ("DeleteMessage", lambda i: pb.DeleteMessageRequest(id=i), "id", "message"),
    ("StreamMessages", lambda i: pb.StreamMessagesRequest(session_id=i), "session_id", "session"),
    ("WatchSession", lambda i: pb.WatchSessionRequest(session_id=i), "session_id", "session"),
    ("PopMessage", lambda i: pb.PopMessageRequest(session_id=i), "session_id", "session"),
    ("ClearMessages", lambda i: pb.ClearMessagesRequest(session_id=i), "session_id", "session"),
    (
        "GetContextWindow",
        lambda i: pb.GetContextWindowRequest(session_id=i),
        "session_id",
        "session",
    ),
    (
        "CreateContext",
        lambda i: pb.CreateContextRequest(context=context_pb2.Context(session_id=i, type="system")),
        "context.session_id",
        "session",
    ),
    ("GetContext", lambda i: pb.GetContextRequest(id=i), "id", "context"),
    ("ListContexts", lambda i: pb.ListContextsRequest(session_id=i), "session_id", "session"),
    ("DeleteContext", lambda i: pb.DeleteContextRequest(id=i), "id", "context"),
    (
        "RateMessage",
        lambda i: pb.RateMessageRequest(message_id=i, user_id=new_id(), value=3),
        "message_id",
        "message",
    ),
    ("ListRatings", lambda i: pb.ListRatingsRequest(session_id=i), "session_id", "session"),
    ("DeleteRating", lambda i: pb.DeleteRatingRequest(id=i), "id", "rating"),
    (
        "GetRatingSummary",
        lambda i: pb.GetRatingSummaryRequest(message_id=i),
        "message_id",
        "message",
    ),
]


def test_the_table_covers_every_rpc_that_takes_an_id() -> None:
    methods = pb.DESCRIPTOR.services_by_name["ParleyService"].methods_by_name
    no_id = {"CreateUser", "ListUsers"}  # they name no existing resource
    assert {case[0] for case in CASES} == set(methods) - no_id


@pytest.mark.parametrize(
    ("method", "request_for", "field", "kind"), CASES, ids=[c[0] for c in CASES]
)
async def test_malformed_id_is_invalid_argument(
    raw: RawCall, method: str, request_for: Callable[[str], Any], field: str, kind: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await raw(method, request_for("not an id!"))
    assert caught.value.field_violations[0].field == field
    assert "UUID" in caught.value.field_violations[0].description


@pytest.mark.parametrize(
    ("method", "request_for", "field", "kind"), CASES, ids=[c[0] for c in CASES]
)
async def test_unknown_id_is_not_found(
    raw: RawCall, method: str, request_for: Callable[[str], Any], field: str, kind: str
) -> None:
    missing = new_id()
    with pytest.raises(NotFoundError) as caught:
        await raw(method, request_for(missing))
    assert caught.value.reason == f"{kind.upper()}_NOT_FOUND"
    assert caught.value.metadata.get("resourceId", caught.value.metadata.get("userId")) == missing
    assert missing in caught.value.message
