"""The one place domain errors become gRPC statuses, and the interceptor applying it to every RPC.

Each status carries a google.rpc.ErrorInfo (reason, domain, metadata) and, for INVALID_ARGUMENT, a
google.rpc.BadRequest listing every bad field, in the grpc-status-details-bin trailer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
from google.protobuf.message import Message as ProtoMessage
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from parley_server.api.validate import find_unstorable
from parley_server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ParleyError,
    Unavailable,
)

log = logging.getLogger("parley.rpc")

ERROR_DOMAIN = "parley"

STATUS_CODES: dict[type[ParleyError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: ParleyError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


def to_status(error: ParleyError) -> grpc.Status:
    code = status_code(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    if isinstance(error, InvalidArgument):
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    return rpc_status.to_status(status)


_INTERNAL = status_pb2.Status(
    code=code_pb2.INTERNAL, message="internal error; the server log has the details"
)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in stubs
    """Guards every unary RPC: rejects unstorable values, maps domain errors to rich statuses, turns
    anything unexpected into a generic INTERNAL (details only in the log), and logs each call."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is not None and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard(method, cast(Behavior, handler.unary_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(method, cast(StreamBehavior, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _guard(method: str, behavior: Behavior) -> Behavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with _guarded_call(method, request, context):
            return await behavior(request, context)

    return guarded


def _guard_stream(method: str, behavior: StreamBehavior) -> StreamBehavior:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with _guarded_call(method, request, context):
            async for response in behavior(request, context):
                yield response

    return guarded


@asynccontextmanager
async def _guarded_call(
    method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        if isinstance(request, ProtoMessage):
            unstorable = find_unstorable(request)
            if unstorable:
                raise InvalidArgument(unstorable)
        yield
    except ParleyError as error:
        code = status_code(error)
        await _abort(context, to_status(error))
    except grpc.aio.AbortError:
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed unexpectedly", method)
        await _abort(context, rpc_status.to_status(_INTERNAL))
    finally:
        if log.isEnabledFor(logging.INFO):  # peer() costs, even when the line is dropped
            log.info(
                "%s %s %.1fms peer=%s",
                method,
                code.name,
                (time.perf_counter() - started) * 1000,
                context.peer(),
            )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    # What abort_with_status does, spelled with the calls the type stubs know.
    await context.abort(status.code, status.details, status.trailing_metadata)
