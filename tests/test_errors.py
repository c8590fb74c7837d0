"""Error statuses: one mapping table, rich details on the wire, no leaks, outages as UNAVAILABLE."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from parley_client import (
    ClientInfo,
    InternalError,
    InvalidArgumentError,
    ParleyClient,
    UnavailableError,
)
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_client._gen.parley.v1.parley_service_pb2_grpc import ParleyServiceStub
from parley_server import app, errors
from parley_server.api.status import STATUS_CODES, status_code
from parley_server.config import Settings
from parley_server.store import Database, Store
from tests.factories import a_session, new_id


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound.resource("user", "x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists.resource("user", "x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument.field("f", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("closed"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Aborted("conflict"), grpc.StatusCode.ABORTED),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_every_domain_error_has_its_status(
    error: errors.ParleyError, code: grpc.StatusCode
) -> None:
    assert status_code(error) == code


def test_the_table_covers_every_domain_error() -> None:
    domain_errors = set(errors.ParleyError.__subclasses__())
    assert domain_errors == set(STATUS_CODES)


async def test_details_travel_in_the_status_trailer(target: str) -> None:
    """What a client in any language sees: google.rpc.Status with ErrorInfo and BadRequest."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ParleyServiceStub(channel)
        missing = new_id()
        call = stub.GetUser(pb.GetUserRequest(id=missing))
        assert await call.code() == grpc.StatusCode.NOT_FOUND
        status = _status_details(await call.trailing_metadata())
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, info.domain) == ("USER_NOT_FOUND", "parley")
        assert info.metadata["resourceId"] == missing

        call = stub.GetUser(pb.GetUserRequest(id="no pe"))
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = _status_details(await call.trailing_metadata())
        bad_request = error_details_pb2.BadRequest()
        assert status.details[1].Unpack(bad_request)
        assert bad_request.field_violations[0].field == "id"


def _status_details(trailers: Any) -> status_pb2.Status:
    raw = dict(trailers)["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


async def test_every_bad_field_is_reported_at_once(client: ParleyClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_user(id="x y", email="y", role="r" * 300)
    assert [v.field for v in caught.value.field_violations] == [
        "user.id",
        "user.email",
        "user.role",
    ]


async def test_unstorable_values_are_invalid_everywhere(client: ParleyClient) -> None:
    _, session = await a_session(client)
    with pytest.raises(InvalidArgumentError) as in_filter:
        await client.list_messages(session.id, chapter="a\x00b")
    assert in_filter.value.field_violations[0].field == "chapter"
    with pytest.raises(InvalidArgumentError) as in_struct:
        await client.update_session(session.id, metadata={"nested": {"x": float("inf")}})
    assert in_struct.value.field_violations[0].field.startswith("session.metadata")
    with pytest.raises(InvalidArgumentError):
        await client.create_session(client_info=ClientInfo(device="\x00"))
    with pytest.raises(InvalidArgumentError):
        await client.update_user(new_id(), preferences={"k\x00": 1})


async def test_unexpected_failure_is_a_bare_internal_without_details(
    client: ParleyClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(scope: object, user_id: str) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(store.users, "get", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(InternalError) as caught:
        await client.get_user(new_id())
    assert "hunter2" not in str(caught.value)
    assert caught.value.message == "internal error; the server log has the details"
    assert "hunter2" in caplog.text  # the operator still gets the details


@pytest.fixture
async def unreachable_database_client() -> AsyncIterator[ParleyClient]:
    # Port 1 on loopback refuses connections: a database that is down.
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/parley",
        db_pool_timeout_seconds=2,
        page_token_secret=base64.b64encode(bytes(32)).decode(),
    )
    database = Database(app.open_engine(settings))
    running = await app.start(app.open_store(settings, database), settings, address="127.0.0.1:0")
    async with ParleyClient(f"127.0.0.1:{running.port}", default_timeout=20) as client:
        yield client
    await running.stop(None, quiet=0)
    await database.dispose()


async def test_database_outage_is_unavailable(unreachable_database_client: ParleyClient) -> None:
    with pytest.raises(UnavailableError) as caught:
        await unreachable_database_client.get_user(new_id())
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    with pytest.raises(UnavailableError):
        await unreachable_database_client.create_user(display_name="x")
    with pytest.raises(UnavailableError):  # the append path (group commit) too
        await unreachable_database_client.append_message(new_id(), role="user")
