"""The client's exceptions. grpc.aio.AioRpcError is translated here, in one map, never escaping."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import grpc

from parley_client._gen.parley.internal.v1.rpc_status_pb2 import (
    RpcBadRequest,
    RpcErrorInfo,
    RpcStatus,
)

_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_INFO = "google.rpc.ErrorInfo"
_BAD_REQUEST = "google.rpc.BadRequest"


class ParleyError(Exception):
    """Base of every exception parley_client raises."""


class ClientClosedError(ParleyError):
    """The client was closed; create a new one."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, as the server reported it (google.rpc.BadRequest)."""

    field: str
    description: str


class RPCError(ParleyError):
    """A call failed with a gRPC status. `reason` and `metadata` come from google.rpc.ErrorInfo."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)


class CancelledError(RPCError): ...


class UnknownError(RPCError): ...


class InvalidArgumentError(RPCError): ...


class DeadlineExceededError(RPCError): ...


class NotFoundError(RPCError): ...


class AlreadyExistsError(RPCError): ...


class PermissionDeniedError(RPCError): ...


class ResourceExhaustedError(RPCError): ...


class FailedPreconditionError(RPCError): ...


class AbortedError(RPCError): ...


class OutOfRangeError(RPCError): ...


class UnimplementedError(RPCError): ...


class InternalError(RPCError): ...


class UnavailableError(RPCError): ...


class DataLossError(RPCError): ...


class UnauthenticatedError(RPCError): ...


_ERRORS: dict[grpc.StatusCode, type[RPCError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


class FailedCall(Protocol):
    """A failed call as grpc raises it, from its asyncio API (AioRpcError) or its sync one."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...


def from_rpc_error(error: FailedCall) -> RPCError:
    """The RPCError subclass for error's status, with the server's ErrorInfo and BadRequest."""
    code = error.code()
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    # grpc-stubs types aio metadata as the sync API's; at run time it yields (key, value) pairs.
    trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        # Read with wire-compatible mirrors of the google.rpc messages (see rpc_status.proto).
        for detail in RpcStatus.FromString(value).details:
            detail_type = detail.type_url.rsplit("/", 1)[-1]
            if detail_type == _ERROR_INFO:
                info = RpcErrorInfo.FromString(detail.value)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail_type == _BAD_REQUEST:
                bad_request = RpcBadRequest.FromString(detail.value)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    return _ERRORS.get(code, RPCError)(
        code,
        error.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
    )
