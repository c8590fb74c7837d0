"""Typed async Python client for parley, the chat-history gRPC service.

from parley_client import ParleyClient

async with ParleyClient("localhost:50051") as client:
    user = await client.create_user(display_name="Ada")
    session = await client.create_session(user_id=user.id)
    await client.append_message(session.id, role="user", content="hi")
"""

from parley_client._client import ParleyClient
from parley_client._errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    ClientClosedError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ParleyError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RPCError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from parley_client._gen.parley.v1.admin_service_pb2 import ApiKey
from parley_client._gen.parley.v1.context_pb2 import Context
from parley_client._gen.parley.v1.message_pb2 import Attachment, Citation, Message, Role, ToolCall
from parley_client._gen.parley.v1.rating_pb2 import Rating, RatingSummary
from parley_client._gen.parley.v1.session_pb2 import (
    ClientInfo,
    ScopedStateDelta,
    Session,
    StateDelta,
    UserState,
)
from parley_client._gen.parley.v1.user_pb2 import User, UserProfile
from parley_client._retry import RetryPolicy
from parley_client._sync_client import SyncParleyClient
from parley_client._values import (
    CallOptions,
    new_id,
    new_message,
    state_delta,
    struct,
    to_role,
)

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "ApiKey",
    "Attachment",
    "CallOptions",
    "CancelledError",
    "Citation",
    "ClientClosedError",
    "ClientInfo",
    "Context",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "Message",
    "NotFoundError",
    "OutOfRangeError",
    "ParleyClient",
    "ParleyError",
    "PermissionDeniedError",
    "RPCError",
    "Rating",
    "RatingSummary",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Role",
    "ScopedStateDelta",
    "Session",
    "StateDelta",
    "SyncParleyClient",
    "ToolCall",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "User",
    "UserProfile",
    "UserState",
    "new_id",
    "new_message",
    "state_delta",
    "struct",
    "to_role",
]
