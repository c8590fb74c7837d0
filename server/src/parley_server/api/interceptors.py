"""The server's interceptor chain: one interceptor per concern, each covering all four RPC kinds.

    LoggingInterceptor    one line per call: method, final status, duration, peer
    ErrorInterceptor      screens requests (undecodable, unstorable) and turns domain errors into
                          rich statuses, anything unexpected into a bare INTERNAL
    LifecycleInterceptor  refuses new calls with UNAVAILABLE while the server drains, ends streams
                          with UNAVAILABLE (so clients resume elsewhere), and cuts streams whose
                          client stopped reading

`CallInterceptor` adapts a concern, written once as an async context manager around the call (and
an optional hook over a stream's responses), to grpc's unary/stream request and response kinds.
`InterceptorChain` is the one grpc interceptor the server has: it runs the concerns in the order
given, the first outermost, around each method's handler, composed once per method rather than on
every call as a grpc interceptor per concern would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from parley_server.api.status import status_code, to_status
from parley_server.api.validate import find_unstorable
from parley_server.errors import InvalidArgument, ParleyError, Unavailable
from parley_server.logs import describe, throttled
from parley_server.tasks import run_to_end

log = logging.getLogger("parley.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any]
Serializer = Callable[[Any], bytes]


@dataclass(slots=True)
class Call:
    """One RPC as the interceptors see it."""

    method: str
    context: Context


# What a concern with nothing to do around a call runs it inside (reusable, and cheaper than a
# generator-based context manager, since every call passes through every concern).
_NOTHING_AROUND = contextlib.nullcontext()


class CallInterceptor:
    """Wraps every handler, of every RPC kind, in `around` (and a stream's responses in
    `responses`); subclasses implement one concern."""

    def around(self, call: Call, request: Any) -> Any:
        """An async context manager the call runs inside; `request` is the unary request, or
        None for a request stream."""
        raise NotImplementedError

    def responses(self, call: Call, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A server stream's responses as the client gets them."""
        return responses

    def complete(self, call: Call, work: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        """How a unary call's handler runs."""
        return work

    def request_deserializer(self, method: str, inner: Deserializer | None) -> Deserializer | None:
        return inner

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler`, of `method`, inside this concern."""
        streamed_request = handler.request_streaming
        if handler.response_streaming:
            behavior = self._stream(method, _behavior(handler), streamed_request=streamed_request)
        else:
            behavior = self._unary(method, _behavior(handler), streamed_request=streamed_request)
        return _handler_like(
            handler,
            behavior,
            deserializer=self.request_deserializer(method, handler.request_deserializer),
            serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Any, *, streamed_request: bool) -> Any:
        async def unary(request: Any, context: Context) -> Any:
            call = Call(method, context)
            async with self.around(call, None if streamed_request else request):
                return await self.complete(call, behavior(request, context))

        return unary

    def _stream(self, method: str, behavior: Any, *, streamed_request: bool) -> Any:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = Call(method, context)
            async with self.around(call, None if streamed_request else request):
                async for response in self.responses(call, behavior(request, context)):
                    yield response

        return stream


def _behavior(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


def _handler_like(
    handler: grpc.RpcMethodHandler[Any, Any],
    behavior: Any,
    *,
    deserializer: Deserializer | None,
    serializer: Serializer | None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of `handler`'s kind that runs `behavior`."""
    if handler.response_streaming:
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
    else:
        make = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    return make(behavior, request_deserializer=deserializer, response_serializer=serializer)


def _passing_encoded(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with a response serializer that passes bytes through: a response the servicer
    encoded itself (convert.with_messages) goes out as it is."""
    inner = handler.response_serializer
    if inner is None:
        return handler

    def serialize(response: Any) -> bytes:
        return response if type(response) is bytes else inner(response)

    return _handler_like(
        handler, _behavior(handler), deserializer=handler.request_deserializer, serializer=serialize
    )


class InterceptorChain(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in stubs
    """`interceptors` around every handler, the first outermost."""

    def __init__(self, interceptors: Sequence[CallInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        # Bounded by the methods served: an unknown method has no handler and is not kept.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
                return handler
            wrapped = _passing_encoded(handler)
            for interceptor in reversed(self._interceptors):
                wrapped = interceptor.wrap(method, wrapped)
            self._wrapped[method] = wrapped
        return wrapped


# --- logging --------------------------------------------------------------------------------------


class LoggingInterceptor(CallInterceptor):
    """One INFO line per call, without request data: method, status, duration and peer."""

    def around(self, call: Call, request: Any) -> Any:
        return self._logged(call) if log.isEnabledFor(logging.INFO) else _NOTHING_AROUND

    @asynccontextmanager
    async def _logged(self, call: Call) -> AsyncIterator[None]:
        # Read while the call is alive: grpc's peer() on a call that has ended (a client that
        # cancelled, a deadline) dereferences freed memory and crashes the process.
        peer = call.context.peer()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except grpc.aio.AbortError:
            code = call.context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info("%s %s %.1fms peer=%s", call.method, code.name, elapsed_ms, peer)


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refused:
    """Stands in for a request that failed screening (its bytes did not parse, or it holds a
    value no backend can store), so the call answers INVALID_ARGUMENT instead of grpc's
    UNKNOWN."""

    error: InvalidArgument


_INTERNAL = status_pb2.Status(
    code=code_pb2.INTERNAL, message="internal error; the server log has the details"
)


class ErrorInterceptor(CallInterceptor):
    """Every failure as a status a client can act on; see api/status.py for the table."""

    def request_deserializer(self, method: str, inner: Deserializer | None) -> Deserializer | None:
        if inner is None:
            return None

        def deserialize(data: bytes) -> Any:
            try:
                request = inner(data)
            except Exception as error:  # DecodeError: corrupt bytes, bad UTF-8, nesting too deep
                return Refused(_undecodable(_request_type(inner), _decode_problem(error)))
            if _may_hold_unstorable(data) and (unstorable := find_unstorable(request)):
                return Refused(InvalidArgument(unstorable))
            return request

        return deserialize

    @asynccontextmanager
    async def around(self, call: Call, request: Any) -> AsyncIterator[None]:
        try:
            if type(request) is Refused:
                raise request.error
            yield
        except ParleyError as error:
            await _abort(call.context, to_status(error))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            log.error(
                "%s failed unexpectedly: %s\n%s",
                call.method,
                describe(error),
                "".join(traceback.format_tb(error.__traceback__)),
            )
            await _abort(call.context, rpc_status.to_status(_INTERNAL))


def _undecodable(type_name: str, problem: str) -> InvalidArgument:
    return InvalidArgument.field(
        "(request)",
        f"could not be decoded as {type_name}: {problem}. Build it from the parley.v1 protos;"
        " strings must be valid UTF-8 and nesting at most 100 levels deep",
    )


def _may_hold_unstorable(data: bytes) -> bool:
    """Whether a request's bytes can hold what find_unstorable looks for. A NUL character is a
    0x00 byte in its string's encoding, and a NaN or infinite double has every exponent bit set,
    so its last byte is 0x7F or 0xFF: bytes without any of these need no walk of the message."""
    return b"\x00" in data or b"\x7f" in data or b"\xff" in data


def _request_type(deserializer: Deserializer) -> str:
    owner = getattr(deserializer, "__self__", None)  # FromString, bound to the message class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "the request message"))


def _decode_problem(error: Exception) -> str:
    text = str(error)
    _, _, problem = text.rpartition("': ")  # "Error parsing message with type 'x': <problem>"
    problem = problem or text
    if "MaxDepth" in problem:
        return "it is nested too deeply"
    return problem[:200]


async def _abort(context: Context, status: grpc.Status) -> None:
    # What abort_with_status does, spelled with the calls the type stubs know.
    await context.abort(status.code, status.details, status.trailing_metadata)


# --- lifecycle ------------------------------------------------------------------------------------


class LifecycleInterceptor(CallInterceptor):
    """Graceful shutdown and stream hygiene.

    While draining, a new call is refused with UNAVAILABLE (a client retries it on another server)
    and a stream ends with UNAVAILABLE before its next response (the client resumes it after the
    last seq it got). A stream whose client has not taken a response for `stall_timeout` seconds
    is cancelled, so a client that stops reading holds none of the server's work or memory but
    the one response grpc was sending (grpc aio cannot end a call whose send is pending: the
    client gets its status at its deadline or when it disconnects).
    """

    def __init__(self, *, stall_timeout: float) -> None:
        self._stall_timeout = stall_timeout
        self._last_arrival = self._drain_started = time.monotonic()
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.busy = asyncio.Event()  # set while any call is in flight

    def drain(self) -> None:
        self._draining = True
        self._drain_started = time.monotonic()

    async def settled(self, *, quiet: float) -> None:
        """Return once no call is in flight and none has arrived for `quiet` seconds since
        draining began. grpc cancels the calls that reach it while it stops (CANCELLED, which
        clients do not retry), also those it has taken but not yet handed to a handler, so it
        is stopped only once callers have gone quiet."""
        while True:
            await self._idle.wait()
            silent_for = time.monotonic() - max(self._last_arrival, self._drain_started)
            if silent_for >= quiet and self._idle.is_set():
                return
            await asyncio.sleep(max(quiet - silent_for, 0.0))

    def around(self, call: Call, request: Any) -> Any:
        self._last_arrival = time.monotonic()
        if self._draining:
            raise _shutting_down()
        return _NOTHING_AROUND

    def complete(self, call: Call, work: Coroutine[Any, Any, Any]) -> Awaitable[Any]:
        # A unary handler runs to its end even when its caller cancels (see run_to_end), and
        # counts as in flight until then, so a graceful stop waits for it.
        self._enter()

        def finished(error: BaseException | None, abandoned: bool) -> None:
            self._left()
            if abandoned and error is not None and not isinstance(error, ParleyError):
                log.error("%s failed after its caller left: %s", call.method, describe(error))

        return run_to_end(work, finished=finished)

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self.busy.set()

    def _left(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
            self.busy.clear()

    async def responses(self, call: Call, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._enter()
        try:
            async for response in responses:
                if self._draining:
                    raise _shutting_down()
                # The yield returns once grpc has handed the response to the transport, which
                # waits for the client's flow-control window: a client that stops reading stops
                # it here.
                stalled = loop.call_later(self._stall_timeout, _cut_stalled, task, call.method)
                try:
                    yield response
                finally:
                    stalled.cancel()
        finally:
            self._left()


def _cut_stalled(task: asyncio.Task[Any], method: str) -> None:
    throttled(log, logging.WARNING, f"{method}: ended a stream whose client stopped reading")
    task.cancel()


def _shutting_down() -> Unavailable:
    return Unavailable(
        "this server is shutting down; retry on another (a stream resumes after the last seq"
        " it delivered)",
        reason="SERVER_SHUTTING_DOWN",
    )


__all__ = [
    "CallInterceptor",
    "ErrorInterceptor",
    "InterceptorChain",
    "LifecycleInterceptor",
    "LoggingInterceptor",
    "status_code",
]
