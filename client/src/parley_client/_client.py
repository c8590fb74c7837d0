"""ParleyClient: one typed async method per RPC of parley.v1.ParleyService and AdminService."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from parley_client import _grpc_aio as transport
from parley_client._errors import ClientClosedError, UnavailableError, from_rpc_error
from parley_client._gen.parley.v1 import admin_service_pb2 as admin_pb
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.admin_service_pb2 import ApiKey
from parley_client._gen.parley.v1.admin_service_pb2_grpc import AdminServiceStub
from parley_client._gen.parley.v1.context_pb2 import Context
from parley_client._gen.parley.v1.message_pb2 import (
    Attachment,
    Citation,
    Message,
    Role,
    ToolCall,
)
from parley_client._gen.parley.v1.parley_service_pb2_grpc import ParleyServiceStub
from parley_client._gen.parley.v1.rating_pb2 import Rating, RatingSummary
from parley_client._gen.parley.v1.session_pb2 import (
    ClientInfo,
    Session,
    StateDelta,
    UserState,
)
from parley_client._gen.parley.v1.user_pb2 import User, UserProfile
from parley_client._retry import DEFAULT_RETRY, RetryPolicy, Safety, retryable
from parley_client._values import (
    DEFAULT_TIMEOUT,
    CallOptions,
    RoleLike,
    delete_safety,
    new_id,
    new_message,
    retry_policy,
    same_session,
    struct,
    timestamp,
    to_role,
)

if TYPE_CHECKING:  # the async stub types exist only in the generated .pyi
    from parley_client._gen.parley.v1.admin_service_pb2_grpc import AdminServiceAsyncStub
    from parley_client._gen.parley.v1.parley_service_pb2_grpc import ParleyServiceAsyncStub

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class _Stubs:
    parley: ParleyServiceAsyncStub
    admin: AdminServiceAsyncStub


class ParleyClient:
    """A parley client: ParleyClient awaits; SyncParleyClient, generated from it, blocks.

        async with ParleyClient("localhost:50051") as client:
            session = await client.create_session(user_id=user.id, title="support")
            await client.append_message(session.id, role="user", content="hi")

    or `client = await ParleyClient.connect(target)`, which also waits until the server answers, and
    `await client.close()` when done. A closed client cannot be reused.

    Errors are raised as parley_client exceptions (NotFoundError, InvalidArgumentError, ...),
    never as grpc errors. Every call that is safe to repeat is retried on UNAVAILABLE and
    DEADLINE_EXCEEDED (creates and appends are, as they always carry an id); pass retry=False
    for one attempt, or a RetryPolicy of your own.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        metadata: Mapping[str, str] | None = None,
        default_timeout: float | None = DEFAULT_TIMEOUT,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self._tls = tls
        self._metadata = tuple((key.lower(), value) for key, value in (metadata or {}).items())
        self._default_timeout = default_timeout
        self._channel_options = tuple(channel_options)
        # An asyncio channel serves only the event loop it was made in, so each loop the client
        # is used from (asyncio.run again, a framework's run_sync, threads with loops of their
        # own) gets a channel of its own; a sync client has one, under the key None.
        self._channels: dict[object, tuple[transport.Channel, _Stubs]] = {}
        self._closed = False

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        tls: bool | grpc.ChannelCredentials = False,
        metadata: Mapping[str, str] | None = None,
        default_timeout: float | None = DEFAULT_TIMEOUT,
        channel_options: Sequence[tuple[str, Any]] = (),
        connect_timeout: float = 10.0,
    ) -> ParleyClient:
        """A client whose server has answered; UnavailableError if none does in time."""
        client = cls(
            target,
            tls=tls,
            metadata=metadata,
            default_timeout=default_timeout,
            channel_options=channel_options,
        )
        try:
            await transport.wait_ready(client._open()[0], connect_timeout)
        except TimeoutError:
            await client.close()
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE,
                f"no parley server answered at {target} within {connect_timeout}s",
            ) from None
        return client

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Closing twice is harmless. (Channels
        of other event loops than this call's are dropped, as they cannot be closed from here.)"""
        self._closed = True
        channels, self._channels = self._channels, {}
        own = channels.get(transport.running_loop())
        if own is not None:
            await transport.close(own[0])

    @property
    def closed(self) -> bool:
        return self._closed

    def _open(self) -> tuple[transport.Channel, _Stubs]:
        if self._closed:
            raise ClientClosedError("this ParleyClient is closed; create a new one")
        owner = transport.running_loop()
        opened = self._channels.get(owner)
        if opened is None:
            # Threads open channels at once: look at a copy, and let any of them drop one.
            for gone in [loop for loop in list(self._channels) if transport.finished(loop)]:
                self._channels.pop(gone, None)
            if self._tls is False:
                channel = transport.insecure_channel(self.target, options=self._channel_options)
            else:
                credentials = grpc.ssl_channel_credentials() if self._tls is True else self._tls
                channel = transport.secure_channel(
                    self.target, credentials, options=self._channel_options
                )
            stubs = _Stubs(ParleyServiceStub(channel), AdminServiceStub(channel))
            opened = self._channels[owner] = (channel, stubs)
        return opened

    async def _call(
        self,
        rpc: Callable[[_Stubs], transport.UnaryUnaryMultiCallable[RequestT, ResponseT]],
        request: RequestT,
        safety: Safety,
        options: CallOptions,
    ) -> ResponseT:
        method = rpc(self._open()[1])
        timeout, metadata, delays = self._prepare(options, safety)
        while True:
            try:
                return await method(request, timeout=timeout, metadata=metadata)
            except transport.RpcError as error:
                delay = next(delays, None)
                if delay is None or not retryable(safety, error.code()):
                    raise from_rpc_error(error) from None
            await transport.sleep(delay)

    def _prepare(
        self, options: CallOptions, safety: Safety
    ) -> tuple[float | None, tuple[tuple[str, str], ...], Iterator[float]]:
        """A call's deadline, its metadata, and the waits before each retry it may make."""
        asked = options.get("retry")
        if asked is None:
            policy = None if safety is Safety.UNSAFE else DEFAULT_RETRY
        else:
            policy = retry_policy(asked)
        if policy is not None and safety is Safety.UNSAFE:
            raise ValueError(
                "this call is not safe to repeat: a delete that landed would then report"
                " NotFoundError (pass allow_missing=True to retry one), a repeated pop_message"
                " pops the next message, and a repeated create_api_key makes a second key"
            )
        metadata = self._with_metadata(options.get("call_metadata", {}))
        delays = policy.delays() if policy is not None else iter(())
        return options.get("timeout", self._default_timeout), metadata, delays

    def _with_metadata(self, call_metadata: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The client's metadata and one call's, with lower-case keys as gRPC requires."""
        return self._metadata + tuple((key.lower(), value) for key, value in call_metadata.items())

    # --- users ------------------------------------------------------------------------------------

    async def create_user(
        self,
        *,
        display_name: str = "",
        email: str = "",
        profile: UserProfile | None = None,
        role: str = "",
        preferences: Mapping[str, Any] | None = None,
        id: str = "",
        **options: Unpack[CallOptions],
    ) -> User:
        user = User(
            id=id or new_id(),
            display_name=display_name,
            email=email,
            profile=profile,
            role=role,
            preferences=struct(preferences),
        )
        request = pb.CreateUserRequest(user=user)
        return await self._call(lambda s: s.parley.CreateUser, request, Safety.IDEMPOTENT, options)

    async def get_user(self, user_id: str, **options: Unpack[CallOptions]) -> User:
        request = pb.GetUserRequest(id=user_id)
        return await self._call(lambda s: s.parley.GetUser, request, Safety.READ, options)

    async def list_users(
        self, *, page_size: int = 0, page_token: str = "", **options: Unpack[CallOptions]
    ) -> pb.ListUsersResponse:
        request = pb.ListUsersRequest(page_size=page_size, page_token=page_token)
        return await self._call(lambda s: s.parley.ListUsers, request, Safety.READ, options)

    def iter_users(
        self, *, page_size: int = 0, **options: Unpack[CallOptions]
    ) -> AsyncIterator[User]:
        async def page(token: str) -> tuple[Sequence[User], str]:
            response = await self.list_users(page_size=page_size, page_token=token, **options)
            return response.users, response.next_page_token

        return _every_item(page)

    async def update_user(
        self,
        user_id: str,
        *,
        display_name: str | None = None,
        email: str | None = None,
        profile: UserProfile | None = None,
        role: str | None = None,
        preferences: Mapping[str, Any] | None = None,
        **options: Unpack[CallOptions],
    ) -> User:
        """Change the fields given (profile and preferences are replaced whole); "" clears."""
        changes: dict[str, Any] = {
            "display_name": display_name,
            "email": email,
            "profile": profile,
            "role": role,
            "preferences": struct(preferences),
        }
        mask = [name for name, value in changes.items() if value is not None]
        user = User(id=user_id, **{name: changes[name] for name in mask})
        request = pb.UpdateUserRequest(user=user, update_mask=FieldMask(paths=mask))
        return await self._call(lambda s: s.parley.UpdateUser, request, Safety.IDEMPOTENT, options)

    async def delete_user(
        self,
        user_id: str,
        *,
        force: bool = False,
        allow_missing: bool = False,
        **options: Unpack[CallOptions],
    ) -> None:
        """Delete the user and their ratings; force=True also deletes the sessions they own."""
        request = pb.DeleteUserRequest(id=user_id, force=force, allow_missing=allow_missing)
        await self._call(
            lambda s: s.parley.DeleteUser, request, delete_safety(allow_missing), options
        )

    # --- sessions ---------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        user_id: str = "",
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        client_info: ClientInfo | None = None,
        id: str = "",
        app: str = "",
        state: Mapping[str, Any] | None = None,
        state_delta: StateDelta | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """state: the session's own; state_delta also sets its user's and its app's state, in
        the same transaction."""
        session = Session(
            id=id or new_id(),
            user_id=user_id,
            title=title,
            metadata=struct(metadata),
            client_info=client_info,
            app=app,
            state=struct(state),
        )
        request = pb.CreateSessionRequest(session=session, state_delta=state_delta)
        return await self._call(
            lambda s: s.parley.CreateSession, request, Safety.IDEMPOTENT, options
        )

    async def get_session(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        request = pb.GetSessionRequest(id=session_id)
        return await self._call(lambda s: s.parley.GetSession, request, Safety.READ, options)

    async def list_sessions(
        self,
        *,
        user_id: str = "",
        app: str | None = None,
        page_size: int = 0,
        page_token: str = "",
        **options: Unpack[CallOptions],
    ) -> pb.ListSessionsResponse:
        """Newest first; only user_id's sessions when given, only app's when not None."""
        request = pb.ListSessionsRequest(
            user_id=user_id, app=app, page_size=page_size, page_token=page_token
        )
        return await self._call(lambda s: s.parley.ListSessions, request, Safety.READ, options)

    def iter_sessions(
        self,
        *,
        user_id: str = "",
        app: str | None = None,
        page_size: int = 0,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[Session]:
        async def page(token: str) -> tuple[Sequence[Session], str]:
            response = await self.list_sessions(
                user_id=user_id, app=app, page_size=page_size, page_token=token, **options
            )
            return response.sessions, response.next_page_token

        return _every_item(page)

    async def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        client_info: ClientInfo | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Change the fields given (metadata and client_info are replaced whole)."""
        changes: dict[str, Any] = {
            "title": title,
            "metadata": struct(metadata),
            "client_info": client_info,
        }
        mask = [name for name, value in changes.items() if value is not None]
        session = Session(id=session_id, **{name: changes[name] for name in mask})
        request = pb.UpdateSessionRequest(session=session, update_mask=FieldMask(paths=mask))
        return await self._call(
            lambda s: s.parley.UpdateSession, request, Safety.IDEMPOTENT, options
        )

    async def close_session(self, session_id: str, **options: Unpack[CallOptions]) -> Session:
        """Set end_time; the session then accepts no more messages."""
        request = pb.CloseSessionRequest(id=session_id)
        return await self._call(
            lambda s: s.parley.CloseSession, request, Safety.IDEMPOTENT, options
        )

    async def delete_session(
        self, session_id: str, *, allow_missing: bool = False, **options: Unpack[CallOptions]
    ) -> None:
        """Delete the session with its messages, contexts and ratings."""
        request = pb.DeleteSessionRequest(id=session_id, allow_missing=allow_missing)
        await self._call(
            lambda s: s.parley.DeleteSession, request, delete_safety(allow_missing), options
        )

    async def get_or_create_open_session(
        self,
        user_id: str,
        *,
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        client_info: ClientInfo | None = None,
        **options: Unpack[CallOptions],
    ) -> pb.GetOrCreateOpenSessionResponse:
        """The user's open session, created (with these fields) if they have none."""
        template = Session(title=title, metadata=struct(metadata), client_info=client_info)
        request = pb.GetOrCreateOpenSessionRequest(user_id=user_id, session_template=template)
        return await self._call(
            lambda s: s.parley.GetOrCreateOpenSession, request, Safety.IDEMPOTENT, options
        )

    async def get_latest_session(self, user_id: str, **options: Unpack[CallOptions]) -> Session:
        """The user's most recently active session, open or closed."""
        request = pb.GetLatestSessionRequest(user_id=user_id)
        return await self._call(lambda s: s.parley.GetLatestSession, request, Safety.READ, options)

    async def update_session_state(
        self,
        session_id: str,
        state_delta: StateDelta,
        *,
        expected_last_seq: int | None = None,
        **options: Unpack[CallOptions],
    ) -> Session:
        """Apply state_delta (build it with state_delta()) atomically; the session comes back
        with its state, its user's and its app's. With expected_last_seq, as in append_message."""
        request = pb.UpdateSessionStateRequest(
            session_id=session_id, state_delta=state_delta, expected_last_seq=expected_last_seq
        )
        return await self._call(
            lambda s: s.parley.UpdateSessionState, request, Safety.IDEMPOTENT, options
        )

    async def get_user_state(
        self, app: str, user_id: str, **options: Unpack[CallOptions]
    ) -> UserState:
        """The state user_id has within app (empty if none), without a session."""
        request = pb.GetUserStateRequest(app=app, user_id=user_id)
        return await self._call(lambda s: s.parley.GetUserState, request, Safety.READ, options)

    # --- messages ---------------------------------------------------------------------------------

    async def append_message(
        self,
        session_id: str,
        *,
        role: RoleLike,
        content: str = "",
        id: str = "",
        name: str = "",
        tool_calls: Sequence[ToolCall] = (),
        tool_call_id: str = "",
        invocation_id: str = "",
        thread_id: str = "",
        reply_to: str = "",
        chapter: str = "",
        attachments: Sequence[Attachment] = (),
        citations: Sequence[Citation] = (),
        metadata: Mapping[str, Any] | None = None,
        user_id: str = "",
        event_time: datetime | None = None,
        payload: bytes = b"",
        payload_type: str = "",
        expected_last_seq: int | None = None,
        state_delta: StateDelta | None = None,
        **options: Unpack[CallOptions],
    ) -> Message:
        """Append one message; the server assigns its seq. With expected_last_seq, only if the
        session's last seq is that: otherwise AbortedError (reason LAST_SEQ_MISMATCH, the
        current one in .metadata["lastSeq"]) and nothing is written. state_delta is applied in
        the append's transaction: both land or neither does."""
        message = new_message(
            role=role,
            content=content,
            id=id,
            name=name,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            invocation_id=invocation_id,
            thread_id=thread_id,
            reply_to=reply_to,
            chapter=chapter,
            attachments=attachments,
            citations=citations,
            metadata=metadata,
            user_id=user_id,
            event_time=event_time,
            payload=payload,
            payload_type=payload_type,
        )
        request = pb.AppendMessageRequest(
            session_id=session_id,
            message=message,
            expected_last_seq=expected_last_seq,
            state_delta=state_delta,
        )
        return await self._call(
            lambda s: s.parley.AppendMessage, request, Safety.IDEMPOTENT, options
        )

    async def batch_append_messages(
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        expected_last_seq: int | None = None,
        state_delta: StateDelta | None = None,
        **options: Unpack[CallOptions],
    ) -> list[Message]:
        """Append all of messages (build them with new_message) or none, in order; a message
        without an id is given one, so that a retried batch cannot be stored twice. With
        expected_last_seq and state_delta, as in append_message."""
        request = pb.BatchAppendMessagesRequest(
            session_id=session_id,
            messages=messages,
            expected_last_seq=expected_last_seq,
            state_delta=state_delta,
        )
        for message in request.messages:
            if not message.id:
                message.id = new_id()
        response = await self._call(
            lambda s: s.parley.BatchAppendMessages, request, Safety.IDEMPOTENT, options
        )
        return list(response.messages)

    async def get_message(self, message_id: str, **options: Unpack[CallOptions]) -> Message:
        request = pb.GetMessageRequest(id=message_id)
        return await self._call(lambda s: s.parley.GetMessage, request, Safety.READ, options)

    async def list_messages(
        self,
        session_id: str,
        *,
        chapter: str = "",
        thread_id: str = "",
        invocation_id: str = "",
        min_event_time: datetime | None = None,
        role: RoleLike | None = None,
        after_seq: int = 0,
        newest_first: bool = False,
        page_size: int = 0,
        page_token: str = "",
        **options: Unpack[CallOptions],
    ) -> pb.ListMessagesResponse:
        """A page of the session's history in seq order (or newest first); empty filters do not
        filter. `page_size=50, newest_first=True` reads the last 50 messages."""
        request = pb.ListMessagesRequest(
            session_id=session_id,
            chapter=chapter,
            thread_id=thread_id,
            invocation_id=invocation_id,
            min_event_time=timestamp(min_event_time),
            role=to_role(role) if role is not None else Role.ROLE_UNSPECIFIED,
            after_seq=after_seq,
            order_by="seq desc" if newest_first else "",
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(lambda s: s.parley.ListMessages, request, Safety.READ, options)

    def iter_messages(
        self,
        session_id: str,
        *,
        chapter: str = "",
        thread_id: str = "",
        invocation_id: str = "",
        min_event_time: datetime | None = None,
        role: RoleLike | None = None,
        after_seq: int = 0,
        newest_first: bool = False,
        page_size: int = 0,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[Message]:
        """Every matching message in seq order (or newest first), fetching page after page."""

        async def page(token: str) -> tuple[Sequence[Message], str]:
            response = await self.list_messages(
                session_id,
                chapter=chapter,
                thread_id=thread_id,
                invocation_id=invocation_id,
                min_event_time=min_event_time,
                role=role,
                after_seq=after_seq,
                newest_first=newest_first,
                page_size=page_size,
                page_token=token,
                **options,
            )
            return response.messages, response.next_page_token

        return _every_item(page)

    async def stream_messages(
        self,
        session_id: str,
        *,
        chapter: str = "",
        thread_id: str = "",
        invocation_id: str = "",
        min_event_time: datetime | None = None,
        role: RoleLike | None = None,
        after_seq: int = 0,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[Message]:
        """Every matching message in seq order, over one server stream (timeout covers it all).

        A stream cut by UNAVAILABLE (a server shutting down, say) or DEADLINE_EXCEEDED resumes
        after the last message received, so no message is repeated or skipped."""
        stub = self._open()[1].parley
        timeout, metadata, delays = self._prepare(options, Safety.READ)
        position = after_seq
        while True:
            request = pb.StreamMessagesRequest(
                session_id=session_id,
                chapter=chapter,
                thread_id=thread_id,
                invocation_id=invocation_id,
                min_event_time=timestamp(min_event_time),
                role=to_role(role) if role is not None else Role.ROLE_UNSPECIFIED,
                after_seq=position,
            )
            try:
                async for response in stub.StreamMessages(
                    request, timeout=timeout, metadata=metadata
                ):
                    for message in response.messages:
                        position = message.seq
                        yield message
                return
            except transport.RpcError as error:
                delay = next(delays, None)
                if delay is None or not retryable(Safety.READ, error.code()):
                    raise from_rpc_error(error) from None
            await transport.sleep(delay)

    async def watch_session(
        self,
        session_id: str,
        *,
        after_seq: int = 0,
        after_deletion: int = 0,
        chapter: str = "",
        thread_id: str = "",
        invocation_id: str = "",
        min_event_time: datetime | None = None,
        role: RoleLike | None = None,
        heartbeats: bool = False,
        retry: RetryPolicy | bool = True,
        call_metadata: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[pb.WatchSessionResponse, None]:
        """Follow a session: the session, its stored messages after `after_seq`, then every
        change as it happens (appends, deletes, updates and closes, and its deletion, the last
        event), until you stop iterating.

        A stream cut by UNAVAILABLE (a server stopping or restarting, a watch reaching its
        maximum lifetime) is resumed from the last event, on whichever server answers, so you
        see one sequence with nothing lost or repeated. `retry` bounds the attempts in a row
        that fail before an event arrives (retry=False: none). Heartbeats, which only say the
        stream is alive, are passed on with heartbeats=True."""
        stub = self._open()[1].parley
        metadata = self._with_metadata(call_metadata or {})
        policy = retry_policy(retry)
        position, deletion = after_seq, after_deletion
        last_session: Session | None = None
        delays = policy.delays() if policy is not None else iter(())
        while True:
            request = pb.WatchSessionRequest(
                session_id=session_id,
                after_seq=position,
                after_deletion=deletion,
                chapter=chapter,
                thread_id=thread_id,
                invocation_id=invocation_id,
                min_event_time=timestamp(min_event_time),
                role=to_role(role) if role is not None else Role.ROLE_UNSPECIFIED,
            )
            try:
                async for event in stub.WatchSession(request, metadata=metadata):
                    delays = policy.delays() if policy is not None else iter(())
                    position, deletion = event.last_seq, event.last_deletion
                    kind = event.WhichOneof("event")
                    if kind == "heartbeat" and not heartbeats:
                        continue
                    if kind == "session":
                        # Each resumed stream starts with the session: pass it on only if changed.
                        if last_session is not None and same_session(last_session, event.session):
                            continue
                        last_session = event.session
                    yield event
                    if kind == "deleted_session":
                        return
                return
            except transport.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(error) from None
                delay = next(delays, None)
                if delay is None:
                    raise from_rpc_error(error) from None
            await transport.sleep(delay)

    async def get_context_window(
        self,
        session_id: str,
        *,
        max_messages: int = 0,
        min_event_time: datetime | None = None,
        **options: Unpack[CallOptions],
    ) -> pb.GetContextWindowResponse:
        """The session, its contexts and its newest max_messages messages (0 means 100; only
        those with an event_time from min_event_time on, when given) in seq order, read at one
        moment: what an agent needs for its next prompt."""
        request = pb.GetContextWindowRequest(
            session_id=session_id,
            max_messages=max_messages,
            min_event_time=timestamp(min_event_time),
        )
        return await self._call(lambda s: s.parley.GetContextWindow, request, Safety.READ, options)

    async def delete_message(
        self, message_id: str, *, allow_missing: bool = False, **options: Unpack[CallOptions]
    ) -> None:
        request = pb.DeleteMessageRequest(id=message_id, allow_missing=allow_missing)
        await self._call(
            lambda s: s.parley.DeleteMessage, request, delete_safety(allow_missing), options
        )

    async def pop_message(self, session_id: str, **options: Unpack[CallOptions]) -> Message | None:
        """Remove the session's newest message and return it (None if it has none); concurrent
        pops never return the same message. Not retried: a repeat would pop the next one."""
        request = pb.PopMessageRequest(session_id=session_id)
        response = await self._call(lambda s: s.parley.PopMessage, request, Safety.UNSAFE, options)
        return response.message if response.HasField("message") else None

    async def clear_messages(self, session_id: str, **options: Unpack[CallOptions]) -> int:
        """Delete every message of the session, keeping the session and its contexts; returns
        how many were deleted. Clearing twice leaves the same, so this is retried."""
        request = pb.ClearMessagesRequest(session_id=session_id)
        response = await self._call(
            lambda s: s.parley.ClearMessages, request, Safety.IDEMPOTENT, options
        )
        return response.deleted_count

    # --- contexts ---------------------------------------------------------------------------------

    async def create_context(
        self,
        session_id: str,
        *,
        type: str,
        content: str = "",
        metadata: Mapping[str, Any] | None = None,
        id: str = "",
        **options: Unpack[CallOptions],
    ) -> Context:
        """Add a context ("system", "user", "file", or any label) to the session."""
        context = Context(
            id=id or new_id(),
            session_id=session_id,
            type=type,
            content=content,
            metadata=struct(metadata),
        )
        request = pb.CreateContextRequest(context=context)
        return await self._call(
            lambda s: s.parley.CreateContext, request, Safety.IDEMPOTENT, options
        )

    async def get_context(self, context_id: str, **options: Unpack[CallOptions]) -> Context:
        request = pb.GetContextRequest(id=context_id)
        return await self._call(lambda s: s.parley.GetContext, request, Safety.READ, options)

    async def list_contexts(
        self,
        session_id: str,
        *,
        type: str = "",
        page_size: int = 0,
        page_token: str = "",
        **options: Unpack[CallOptions],
    ) -> pb.ListContextsResponse:
        request = pb.ListContextsRequest(
            session_id=session_id, type=type, page_size=page_size, page_token=page_token
        )
        return await self._call(lambda s: s.parley.ListContexts, request, Safety.READ, options)

    def iter_contexts(
        self,
        session_id: str,
        *,
        type: str = "",
        page_size: int = 0,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[Context]:
        async def page(token: str) -> tuple[Sequence[Context], str]:
            response = await self.list_contexts(
                session_id, type=type, page_size=page_size, page_token=token, **options
            )
            return response.contexts, response.next_page_token

        return _every_item(page)

    async def delete_context(
        self, context_id: str, *, allow_missing: bool = False, **options: Unpack[CallOptions]
    ) -> None:
        request = pb.DeleteContextRequest(id=context_id, allow_missing=allow_missing)
        await self._call(
            lambda s: s.parley.DeleteContext, request, delete_safety(allow_missing), options
        )

    # --- ratings ----------------------------------------------------------------------------------

    async def rate_message(
        self,
        message_id: str,
        *,
        user_id: str,
        value: int,
        comment: str = "",
        **options: Unpack[CallOptions],
    ) -> Rating:
        """Rate 1 to 5; a user's new rating of a message replaces their earlier one."""
        request = pb.RateMessageRequest(
            message_id=message_id, user_id=user_id, value=value, comment=comment
        )
        return await self._call(lambda s: s.parley.RateMessage, request, Safety.IDEMPOTENT, options)

    async def list_ratings(
        self,
        *,
        message_id: str = "",
        session_id: str = "",
        user_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        **options: Unpack[CallOptions],
    ) -> pb.ListRatingsResponse:
        request = pb.ListRatingsRequest(
            message_id=message_id,
            session_id=session_id,
            user_id=user_id,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(lambda s: s.parley.ListRatings, request, Safety.READ, options)

    def iter_ratings(
        self,
        *,
        message_id: str = "",
        session_id: str = "",
        user_id: str = "",
        page_size: int = 0,
        **options: Unpack[CallOptions],
    ) -> AsyncIterator[Rating]:
        async def page(token: str) -> tuple[Sequence[Rating], str]:
            response = await self.list_ratings(
                message_id=message_id,
                session_id=session_id,
                user_id=user_id,
                page_size=page_size,
                page_token=token,
                **options,
            )
            return response.ratings, response.next_page_token

        return _every_item(page)

    async def delete_rating(
        self, rating_id: str, *, allow_missing: bool = False, **options: Unpack[CallOptions]
    ) -> None:
        request = pb.DeleteRatingRequest(id=rating_id, allow_missing=allow_missing)
        await self._call(
            lambda s: s.parley.DeleteRating, request, delete_safety(allow_missing), options
        )

    async def get_rating_summary(
        self, *, message_id: str = "", session_id: str = "", **options: Unpack[CallOptions]
    ) -> RatingSummary:
        """Count and mean of one message's ratings, or of a whole session's; give exactly one."""
        if bool(message_id) == bool(session_id):
            raise ValueError("give exactly one of message_id and session_id")
        request = (
            pb.GetRatingSummaryRequest(message_id=message_id)
            if message_id
            else pb.GetRatingSummaryRequest(session_id=session_id)
        )
        return await self._call(lambda s: s.parley.GetRatingSummary, request, Safety.READ, options)

    # --- API keys (AdminService; admin keys only) -------------------------------------------------

    async def create_api_key(
        self,
        *,
        role: ApiKey.Role.ValueType,
        user_id: str = "",
        display_name: str = "",
        **options: Unpack[CallOptions],
    ) -> tuple[ApiKey, str]:
        """A new key of the caller's tenant, and its secret: shown this once, so keep it. Not
        retried: a repeat would make a second key."""
        request = admin_pb.CreateApiKeyRequest(
            api_key=ApiKey(role=role, user_id=user_id, display_name=display_name)
        )
        response = await self._call(lambda s: s.admin.CreateApiKey, request, Safety.UNSAFE, options)
        return response.api_key, response.secret

    async def get_api_key(self, key_id: str, **options: Unpack[CallOptions]) -> ApiKey:
        request = admin_pb.GetApiKeyRequest(id=key_id)
        return await self._call(lambda s: s.admin.GetApiKey, request, Safety.READ, options)

    async def list_api_keys(
        self, *, page_size: int = 0, page_token: str = "", **options: Unpack[CallOptions]
    ) -> admin_pb.ListApiKeysResponse:
        request = admin_pb.ListApiKeysRequest(page_size=page_size, page_token=page_token)
        return await self._call(lambda s: s.admin.ListApiKeys, request, Safety.READ, options)

    def iter_api_keys(
        self, *, page_size: int = 0, **options: Unpack[CallOptions]
    ) -> AsyncIterator[ApiKey]:
        async def page(token: str) -> tuple[Sequence[ApiKey], str]:
            response = await self.list_api_keys(page_size=page_size, page_token=token, **options)
            return response.api_keys, response.next_page_token

        return _every_item(page)

    async def revoke_api_key(self, key_id: str, **options: Unpack[CallOptions]) -> ApiKey:
        """Revoke a key (revoking a revoked key changes nothing, so this is retried)."""
        request = admin_pb.RevokeApiKeyRequest(id=key_id)
        return await self._call(lambda s: s.admin.RevokeApiKey, request, Safety.IDEMPOTENT, options)


async def _every_item(
    fetch: transport.Fetch[ItemT],
) -> AsyncIterator[ItemT]:
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return
