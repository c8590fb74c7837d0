"""ParleyService: proto in, a service call for the caller, proto out. Nothing else: the rules
live in parley_server.services, errors are raised as domain errors and the ErrorInterceptor turns
them into statuses."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message as ProtoMessage

from parley_client._gen.parley.v1 import (
    context_pb2,
    message_pb2,
    parley_service_pb2_grpc,
    rating_pb2,
    session_pb2,
    user_pb2,
)
from parley_client._gen.parley.v1 import (
    parley_service_pb2 as pb,
)
from parley_server import domain
from parley_server.api import convert
from parley_server.api.auth import caller
from parley_server.api.pagination import PageTokens
from parley_server.api.validate import Violations, required_resource_id, required_uuid
from parley_server.domain import Page
from parley_server.services import Services
from parley_server.services.messages import batch_violations, message_violations
from parley_server.services.ratings import rating_violations

Context = grpc.aio.ServicerContext[Any, Any]
ItemT = TypeVar("ItemT")
ProtoT = TypeVar("ProtoT", bound=ProtoMessage)


class ParleyServicer(parley_service_pb2_grpc.ParleyServiceServicer):
    def __init__(
        self, services: Services, *, tokens: PageTokens, response_budget_bytes: int
    ) -> None:
        """response_budget_bytes: how much of a response listed items may fill; a page ends
        early rather than pass it, though one item always goes out (messages are cut by the
        service, in the database)."""
        self._services = services
        self._tokens = tokens
        self._budget = response_budget_bytes

    # --- users ------------------------------------------------------------------------------------

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> user_pb2.User:
        v = Violations()
        new = convert.new_user(request.user, "user", v)
        v.raise_if_any()
        return convert.user_pb(await self._services.users.create(caller(), new))

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> user_pb2.User:
        return convert.user_pb(
            await self._services.users.get(caller(), required_resource_id(request.id, "id"))
        )

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: Context
    ) -> pb.ListUsersResponse:
        v = Violations()
        size = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        keyset = self._tokens.keyset("ListUsers", request.page_token, caller().scope)
        page = await self._services.users.list(caller(), after=keyset.after_time, limit=size)
        page, users = self._fit(page, convert.user_pb)
        return pb.ListUsersResponse(users=users, next_page_token=keyset.next_after_time(page))

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Context) -> user_pb2.User:
        v = Violations()
        user_id = v.resource_id("user.id", request.user.id, required=True)
        patch = convert.user_patch(request.user, request.update_mask, v)
        v.raise_if_any()
        return convert.user_pb(await self._services.users.update(caller(), user_id, patch))

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Context) -> Empty:
        await self._services.users.delete(
            caller(),
            required_resource_id(request.id, "id"),
            force=request.force,
            allow_missing=request.allow_missing,
        )
        return Empty()

    # --- sessions ---------------------------------------------------------------------------------

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        v = Violations()
        new = convert.new_session(request.session, "session", v)
        delta = convert.state_delta(request.state_delta, "state_delta", v)
        v.raise_if_any()
        return convert.session_pb(await self._services.sessions.create(caller(), new, delta))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> session_pb2.Session:
        return convert.session_pb(
            await self._services.sessions.get(caller(), required_resource_id(request.id, "id"))
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        v = Violations()
        user_id = v.resource_id("user_id", request.user_id, required=False)
        app = v.label("app", request.app) if request.HasField("app") else None
        size = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        keyset = self._tokens.keyset(
            "ListSessions", request.page_token, caller().scope, user_id, app
        )
        page = await self._services.sessions.list(
            caller(), user_id=user_id, app=app, after=keyset.after_time, limit=size
        )
        page, sessions = self._fit(page, convert.session_pb)
        return pb.ListSessionsResponse(
            sessions=sessions,
            next_page_token=keyset.next_after_time(page),
            total_size=page.total_size or 0,
        )

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> session_pb2.Session:
        v = Violations()
        session_id = v.resource_id("session.id", request.session.id, required=True)
        patch = convert.session_patch(request.session, request.update_mask, v)
        v.raise_if_any()
        return convert.session_pb(await self._services.sessions.update(caller(), session_id, patch))

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> session_pb2.Session:
        return convert.session_pb(
            await self._services.sessions.close(caller(), required_resource_id(request.id, "id"))
        )

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: Context) -> Empty:
        await self._services.sessions.delete(
            caller(), required_resource_id(request.id, "id"), allow_missing=request.allow_missing
        )
        return Empty()

    async def GetOrCreateOpenSession(
        self, request: pb.GetOrCreateOpenSessionRequest, context: Context
    ) -> pb.GetOrCreateOpenSessionResponse:
        v = Violations()
        user_id = v.resource_id("user_id", request.user_id, required=True)
        template = convert.new_session(request.session_template, "session_template", v)
        v.raise_if_any()
        session, created = await self._services.sessions.get_or_create_open(
            caller(), user_id, template
        )
        return pb.GetOrCreateOpenSessionResponse(
            session=convert.session_pb(session), created=created
        )

    async def GetLatestSession(
        self, request: pb.GetLatestSessionRequest, context: Context
    ) -> session_pb2.Session:
        return convert.session_pb(
            await self._services.sessions.latest(
                caller(), required_resource_id(request.user_id, "user_id")
            )
        )

    async def UpdateSessionState(
        self, request: pb.UpdateSessionStateRequest, context: Context
    ) -> session_pb2.Session:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        delta = convert.state_delta(request.state_delta, "state_delta", v)
        expected = _expected_last_seq(request, v)
        v.raise_if_any()
        session = await self._services.sessions.update_state(
            caller(), session_id, delta, expected_last_seq=expected
        )
        return convert.session_pb(session)

    async def GetUserState(
        self, request: pb.GetUserStateRequest, context: Context
    ) -> session_pb2.UserState:
        v = Violations()
        app = v.label("app", request.app)
        user_id = v.resource_id("user_id", request.user_id, required=True)
        v.raise_if_any()
        return convert.user_state_pb(
            await self._services.sessions.user_state(caller(), app, user_id)
        )

    # --- messages ---------------------------------------------------------------------------------

    async def AppendMessage(
        self, request: pb.AppendMessageRequest, context: Context
    ) -> message_pb2.Message:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        new = convert.new_message(request.message, "message", session_id, v)
        v.items += message_violations(new, "message")
        expected = _expected_last_seq(request, v)
        delta = convert.state_delta(request.state_delta, "state_delta", v)
        v.raise_if_any()
        message = await self._services.messages.append(
            caller(), session_id, new, expected_last_seq=expected, state_delta=delta
        )
        return convert.message_pb(message)

    async def BatchAppendMessages(
        self, request: pb.BatchAppendMessagesRequest, context: Context
    ) -> pb.BatchAppendMessagesResponse:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        news = [
            convert.new_message(m, f"messages[{i}]", session_id, v)
            for i, m in enumerate(request.messages)
        ]
        v.items += batch_violations(news)
        expected = _expected_last_seq(request, v)
        delta = convert.state_delta(request.state_delta, "state_delta", v)
        v.raise_if_any()
        messages = await self._services.messages.append_batch(
            caller(), session_id, news, expected_last_seq=expected, state_delta=delta
        )
        return convert.with_messages(pb.BatchAppendMessagesResponse(), messages)

    async def GetMessage(
        self, request: pb.GetMessageRequest, context: Context
    ) -> message_pb2.Message:
        return convert.message_pb(
            await self._services.messages.get(caller(), required_uuid(request.id, "id"))
        )

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        size = v.page_size("page_size", request.page_size)
        where = _message_filter(request, v)
        newest_first = _newest_first(request.order_by, v)
        v.raise_if_any()
        keyset = self._tokens.keyset(
            "ListMessages", request.page_token, session_id, where, newest_first
        )
        page = await self._services.messages.list(
            caller(),
            session_id,
            where,
            position=keyset.after_seq,
            limit=size,
            newest_first=newest_first,
        )
        return convert.with_messages(
            pb.ListMessagesResponse(
                next_page_token=keyset.next_after_seq(page), total_size=page.total_size or 0
            ),
            page.items,
        )

    async def StreamMessages(
        self, request: pb.StreamMessagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamMessagesResponse]:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        where = _message_filter(request, v)
        v.raise_if_any()
        async for batch in self._services.messages.stream(caller(), session_id, where):
            yield convert.with_messages(pb.StreamMessagesResponse(), batch)

    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Context
    ) -> AsyncIterator[pb.WatchSessionResponse]:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        where = _message_filter(request, v)
        if request.after_deletion < 0:
            v.add("after_deletion", "must not be negative")
        v.raise_if_any()
        events = self._services.watch.watch(
            caller(),
            session_id,
            dataclasses.replace(where, after_seq=0),
            after_seq=request.after_seq,
            after_deletion=request.after_deletion,
        )
        async for event in events:
            yield convert.watch_event_pb(event)

    async def GetContextWindow(
        self, request: pb.GetContextWindowRequest, context: Context
    ) -> pb.GetContextWindowResponse:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        max_messages = v.page_size("max_messages", request.max_messages)
        min_event_time = convert.optional_time(request, "min_event_time", "min_event_time", v)
        v.raise_if_any()
        window = await self._services.messages.context_window(
            caller(), session_id, max_messages, min_event_time=min_event_time
        )
        return convert.with_messages(
            pb.GetContextWindowResponse(
                session=convert.session_pb(window.session),
                contexts=[convert.context_pb(c) for c in window.contexts],
                has_earlier_messages=window.has_earlier_messages,
            ),
            window.messages,
        )

    async def DeleteMessage(self, request: pb.DeleteMessageRequest, context: Context) -> Empty:
        await self._services.messages.delete(
            caller(), required_uuid(request.id, "id"), allow_missing=request.allow_missing
        )
        return Empty()

    async def PopMessage(
        self, request: pb.PopMessageRequest, context: Context
    ) -> pb.PopMessageResponse:
        session_id = required_resource_id(request.session_id, "session_id")
        popped = await self._services.messages.pop(caller(), session_id)
        response = pb.PopMessageResponse()
        if popped is not None:
            response.message.CopyFrom(convert.message_pb(popped))
        return response

    async def ClearMessages(
        self, request: pb.ClearMessagesRequest, context: Context
    ) -> pb.ClearMessagesResponse:
        session_id = required_resource_id(request.session_id, "session_id")
        cleared = await self._services.messages.clear(caller(), session_id)
        return pb.ClearMessagesResponse(deleted_count=cleared)

    # --- contexts ---------------------------------------------------------------------------------

    async def CreateContext(
        self, request: pb.CreateContextRequest, context: Context
    ) -> context_pb2.Context:
        v = Violations()
        new = convert.new_context(request.context, "context", v)
        v.raise_if_any()
        return convert.context_pb(await self._services.contexts.create(caller(), new))

    async def GetContext(
        self, request: pb.GetContextRequest, context: Context
    ) -> context_pb2.Context:
        return convert.context_pb(
            await self._services.contexts.get(caller(), required_uuid(request.id, "id"))
        )

    async def ListContexts(
        self, request: pb.ListContextsRequest, context: Context
    ) -> pb.ListContextsResponse:
        v = Violations()
        session_id = v.resource_id("session_id", request.session_id, required=True)
        context_type = v.label("type", request.type)
        size = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        keyset = self._tokens.keyset(
            "ListContexts", request.page_token, caller().scope, session_id, context_type
        )
        page = await self._services.contexts.list(
            caller(), session_id, type=context_type, after=keyset.after_time, limit=size
        )
        page, contexts = self._fit(page, convert.context_pb)
        return pb.ListContextsResponse(
            contexts=contexts, next_page_token=keyset.next_after_time(page)
        )

    async def DeleteContext(self, request: pb.DeleteContextRequest, context: Context) -> Empty:
        await self._services.contexts.delete(
            caller(), required_uuid(request.id, "id"), allow_missing=request.allow_missing
        )
        return Empty()

    # --- ratings ----------------------------------------------------------------------------------

    async def RateMessage(
        self, request: pb.RateMessageRequest, context: Context
    ) -> rating_pb2.Rating:
        v = Violations()
        message_id = v.uuid("message_id", request.message_id, required=True)
        user_id = v.resource_id("user_id", request.user_id, required=True)
        v.items += rating_violations(request.value)
        v.raise_if_any()
        rating = await self._services.ratings.rate(
            caller(), message_id, user_id, request.value, request.comment
        )
        return convert.rating_pb(rating)

    async def ListRatings(
        self, request: pb.ListRatingsRequest, context: Context
    ) -> pb.ListRatingsResponse:
        v = Violations()
        where = domain.RatingFilter(
            message_id=v.uuid("message_id", request.message_id, required=False),
            session_id=v.resource_id("session_id", request.session_id, required=False),
            user_id=v.resource_id("user_id", request.user_id, required=False),
        )
        size = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        keyset = self._tokens.keyset("ListRatings", request.page_token, caller().scope, where)
        page = await self._services.ratings.list(
            caller(), where, after=keyset.after_time, limit=size
        )
        page, ratings = self._fit(page, convert.rating_pb)
        return pb.ListRatingsResponse(ratings=ratings, next_page_token=keyset.next_after_time(page))

    async def DeleteRating(self, request: pb.DeleteRatingRequest, context: Context) -> Empty:
        await self._services.ratings.delete(
            caller(), required_uuid(request.id, "id"), allow_missing=request.allow_missing
        )
        return Empty()

    async def GetRatingSummary(
        self, request: pb.GetRatingSummaryRequest, context: Context
    ) -> rating_pb2.RatingSummary:
        v = Violations()
        scope = request.WhichOneof("scope")
        if scope is None:
            v.add("scope", "set message_id or session_id")
            v.raise_if_any()
        if scope == "message_id":
            summary = await self._services.ratings.summarize(
                caller(), message_id=required_uuid(request.message_id, "message_id")
            )
        else:
            summary = await self._services.ratings.summarize(
                caller(), session_id=required_resource_id(request.session_id, "session_id")
            )
        return rating_pb2.RatingSummary(count=summary.count, mean=summary.mean)

    def _fit(
        self, page: Page[ItemT], to_proto: Callable[[ItemT], ProtoT]
    ) -> tuple[Page[ItemT], list[ProtoT]]:
        """The page cut to the response byte budget (at least one item), and its items as
        protos. Messages are cut in the database instead, by their stored sizes."""
        protos: list[ProtoT] = []
        total = 0
        for item in page.items:
            proto = to_proto(item)
            total += proto.ByteSize()
            if total > self._budget and protos:
                return Page(page.items[: len(protos)], True, page.total_size), protos
            protos.append(proto)
        return page, protos


def _message_filter(
    request: pb.ListMessagesRequest | pb.StreamMessagesRequest | pb.WatchSessionRequest,
    v: Violations,
) -> domain.MessageFilter:
    role = (
        convert.role(request.role, "role", v)
        if request.role != message_pb2.ROLE_UNSPECIFIED
        else None
    )
    if request.after_seq < 0:
        v.add("after_seq", "must not be negative")
    return domain.MessageFilter(
        min_event_time=convert.optional_time(request, "min_event_time", "min_event_time", v),
        chapter=v.label("chapter", request.chapter),
        thread_id=v.label("thread_id", request.thread_id),
        invocation_id=v.label("invocation_id", request.invocation_id),
        role=role,
        after_seq=request.after_seq,
    )


def _expected_last_seq(
    request: pb.AppendMessageRequest | pb.BatchAppendMessagesRequest | pb.UpdateSessionStateRequest,
    v: Violations,
) -> int | None:
    if not request.HasField("expected_last_seq"):
        return None
    if request.expected_last_seq < 0:
        v.add("expected_last_seq", "must not be negative (0: a session that never had a message)")
    return request.expected_last_seq


def _newest_first(order_by: str, v: Violations) -> bool:
    normalized = " ".join(order_by.split()).lower()
    if normalized in ("", "seq", "seq asc"):
        return False
    if normalized == "seq desc":
        return True
    v.add("order_by", f'must be "seq" or "seq desc", not {order_by[:64]!r}')
    return False
