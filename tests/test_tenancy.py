"""Identity and tenancy through the real server: every RPC, tried with tenant A's keys against
tenant B's resources, answers exactly as for resources that do not exist and changes nothing of
B; roles limit what a key may do; credentials and transport security are enforced."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import text_format
from google.protobuf.message import Message as ProtoMessage

from parley_client import (
    ApiKey,
    InvalidArgumentError,
    NotFoundError,
    ParleyClient,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
    state_delta,
)
from parley_client._gen.parley.v1 import admin_service_pb2
from parley_client._gen.parley.v1 import parley_service_pb2 as pb
from parley_server import app
from parley_server.api.auth import Authenticator
from parley_server.config import Settings
from parley_server.domain import NewUser, Scope
from parley_server.errors import Unavailable
from parley_server.identity import ANONYMOUS, Role
from parley_server.server import RunningServer
from parley_server.store import Store
from tests.probes import count_calls, until_caught_up
from tests.rpcs import METHODS, STREAMING, World, a_world, rpc, valid_requests


@dataclass
class Keys:
    a_service: str
    a_user: str
    a_user_id: str
    a_admin: str
    b_service: str
    b_service_id: str
    b_admin: str


@pytest.fixture
async def keys(store: Store) -> Keys:
    _, a_service = await store.keys.create(tenant="tenant-a", role=Role.SERVICE)
    a_user_id = (
        await store.users.create(Scope("tenant-a"), NewUser(id=None, display_name="me"))
    ).id
    _, a_user = await store.keys.create(tenant="tenant-a", role=Role.USER, user_id=a_user_id)
    _, a_admin = await store.keys.create(tenant="tenant-a", role=Role.ADMIN)
    b_key, b_service = await store.keys.create(tenant="tenant-b", role=Role.SERVICE)
    _, b_admin = await store.keys.create(tenant="tenant-b", role=Role.ADMIN)
    return Keys(a_service, a_user, a_user_id, a_admin, b_service, b_key.id, b_admin)


@pytest.fixture
async def secured(store: Store, keys: Keys) -> AsyncIterator[str]:
    """A server with keys (so every call needs one), on loopback."""
    running = await app.start(store, Settings(auth_cache_seconds=0), address="127.0.0.1:0")
    yield f"127.0.0.1:{running.port}"
    await running.stop(None, quiet=0)


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def _call(channel: grpc.aio.Channel, method: str, request: ProtoMessage, key: str) -> Any:
    return await _call_with(channel, method, request, _auth(key))


async def _call_with(
    channel: grpc.aio.Channel, method: str, request: ProtoMessage, metadata: Any
) -> Any:
    """(code name, text of the answer): the responses' text, or the status message."""
    try:
        call = rpc(channel, method)(request, timeout=20, metadata=metadata)
        if method in STREAMING:
            answer = "".join([text_format.MessageToString(r) async for r in call])
        else:
            answer = text_format.MessageToString(await call)
        return "OK", answer
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details() or ""


def _world_ids(world: World) -> list[str]:
    return [
        world.user_id,
        world.session_id,
        world.spare_session_id,
        world.context_id,
        world.rating_id,
        world.api_key_id,
        *world.message_ids,
    ]


async def _snapshot(client: ParleyClient, world: World) -> list[str]:
    """Everything of B that A could have read or changed."""
    user = await client.get_user(world.user_id)
    session = await client.get_session(world.session_id)
    messages = [m async for m in client.stream_messages(world.session_id)]
    contexts = await client.list_contexts(world.session_id)
    ratings = await client.list_ratings(session_id=world.session_id)
    spare = await client.get_session(world.spare_session_id)
    spare_messages = [m async for m in client.stream_messages(world.spare_session_id)]
    return [
        text_format.MessageToString(item)
        for item in (
            user,
            session,
            *messages,
            *contexts.contexts,
            *ratings.ratings,
            spare,
            *spare_messages,
        )
    ]


async def test_no_call_of_tenant_a_reaches_tenant_b(secured: str, keys: Keys) -> None:
    """Generated from the service descriptor (tests/rpcs.py has a valid request for every RPC,
    and test_every_rpc fails until a new one has): each request names B's resources and is sent
    with A's service, user and admin keys; the same request with B's ids swapped for ids that
    exist nowhere must get the same answer, and B must be left as it was."""
    async with ParleyClient(secured, metadata=dict(_auth(keys.b_service))) as b_client:
        world = dataclasses.replace(
            await a_world(b_client, messages=20), api_key_id=keys.b_service_id
        )
        await b_client.create_user(display_name="world")  # so that ListUsers has a second page
        b_tokens: dict[str, str] = {
            "ListMessages": (
                await b_client.list_messages(world.session_id, page_size=5)
            ).next_page_token,
            "ListUsers": (await b_client.list_users(page_size=1)).next_page_token,
        }
    async with ParleyClient(secured, metadata=dict(_auth(keys.b_admin))) as b_admin:
        b_tokens["ListApiKeys"] = (await b_admin.list_api_keys(page_size=1)).next_page_token
    async with ParleyClient(secured, metadata=dict(_auth(keys.b_service))) as b_client:
        before = await _snapshot(b_client, world)
    b_ids = _world_ids(world)
    b_contents = ["world", "be brief", "message 1 "]
    channel = grpc.aio.insecure_channel(secured)
    rng = random.Random(7)
    tried = 0
    try:
        for key in (keys.a_service, keys.a_user, keys.a_admin):
            requests = valid_requests(world, rng)
            for method in METHODS:
                request = requests[method]()
                text = text_format.MessageToString(request)
                fresh = {b_id: str(uuid.uuid4()) for b_id in b_ids if b_id in text}
                missing_text = text
                for b_id, other in fresh.items():
                    missing_text = missing_text.replace(b_id, other)
                missing = text_format.Parse(missing_text, type(request)())
                code, answer = await _call(channel, method, request, key)
                missing_code, missing_answer = await _call(channel, method, missing, key)
                for b_id, other in fresh.items():
                    missing_answer = missing_answer.replace(other, b_id)
                assert code == missing_code, (method, code, answer, missing_answer)
                if code != "OK":
                    assert answer == missing_answer, method
                leaked = [b_id for b_id in b_ids if b_id in answer] + [
                    c for c in b_contents if c in answer
                ]
                # An error may name the id the caller sent; an answer never holds B's data.
                if code == "OK":
                    assert not leaked, (method, leaked)
                tried += 1
            for method, b_token in b_tokens.items():
                assert b_token
                token_request: ProtoMessage = {
                    "ListMessages": pb.ListMessagesRequest(
                        session_id=world.session_id, page_size=5
                    ),
                    "ListUsers": pb.ListUsersRequest(page_size=1),
                    "ListApiKeys": admin_service_pb2.ListApiKeysRequest(page_size=1),
                }[method]
                token_request.page_token = b_token  # type: ignore[attr-defined]
                code, answer = await _call(channel, method, token_request, key)
                # Refused, whoever asks: as a token from nowhere, or for the caller's role.
                assert code in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED"), (
                    method,
                    code,
                )
                if code == "PERMISSION_DENIED":
                    assert (key == keys.a_admin) != (method == "ListApiKeys"), method
    finally:
        await channel.close(None)
    assert tried == 3 * len(METHODS)
    async with ParleyClient(secured, metadata=dict(_auth(keys.b_service))) as b_client:
        assert await _snapshot(b_client, world) == before
    async with ParleyClient(secured, metadata=dict(_auth(keys.b_admin))) as b_admin:
        b_keys = [key async for key in b_admin.iter_api_keys()]
        assert len(b_keys) == 2  # B's service and admin keys: none made, none revoked
        assert not any(key.HasField("revoke_time") for key in b_keys)


async def test_a_user_key_sees_only_its_user(secured: str, keys: Keys) -> None:
    async with (
        ParleyClient(secured, metadata=dict(_auth(keys.a_service))) as service,
        ParleyClient(secured, metadata=dict(_auth(keys.a_user))) as user,
    ):
        me = await service.get_user(keys.a_user_id)
        other = await service.create_user(display_name="other")
        mine = await service.create_session(user_id=me.id)
        theirs = await service.create_session(user_id=other.id)
        assert [u.id for u in (await user.list_users()).users] == [me.id]
        assert [s.id for s in (await user.list_sessions()).sessions] == [mine.id]
        assert len((await service.list_sessions()).sessions) == 2
        own = await user.create_session()  # acts for itself
        assert own.user_id == me.id
        await user.append_message(mine.id, role="user", content="hi")
        for _ in range(2):  # what the service reads is kept: never an answer to the user
            await service.get_session(theirs.id)
            await service.list_messages(theirs.id)
        for attempt in (
            user.get_session(theirs.id),
            user.append_message(theirs.id, role="user", content="x"),
            user.list_messages(theirs.id),
            user.get_user(other.id),
            user.create_session(user_id=other.id),
            user.list_sessions(user_id=other.id),
        ):
            with pytest.raises(NotFoundError):
                await attempt
        with pytest.raises(PermissionDeniedError):
            await user.create_user(display_name="nope")


async def test_a_user_principal_reading_again_costs_no_query(
    secured: str, keys: Keys, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ownership check before the read is answered from the history cache too."""
    async with ParleyClient(secured, metadata=dict(_auth(keys.a_user))) as user:
        session = await user.create_session()
        await user.append_message(session.id, role="user", content="hi")
        await until_caught_up(store.db.changes)  # the append heard of
        queries = count_calls(store, monkeypatch, "fetch")
        for _ in range(3):
            assert len((await user.list_messages(session.id)).messages) == 1
        # The first: its page. Its ownership check was kept by the append's own, and the
        # append brought it forward.
        assert queries[0] == 1


async def test_only_a_service_changes_the_state_every_user_of_an_app_shares(
    secured: str, keys: Keys
) -> None:
    """A user key changes its sessions' state and its own user state, and reads its app's
    state; the app's state, which every user of the app sees, only a service key changes."""
    async with (
        ParleyClient(secured, metadata=dict(_auth(keys.a_service))) as service,
        ParleyClient(secured, metadata=dict(_auth(keys.a_user))) as user,
    ):
        await service.create_session(app="app", state_delta=state_delta(app={"motd": "hi"}))
        mine = await user.create_session(app="app", state_delta=state_delta({"s": 1}, {"u": 1}))
        assert dict(mine.app_state) == {"motd": "hi"}
        await user.append_message(mine.id, role="user", state_delta=state_delta({"s": 2}))
        for attempt in (
            user.create_session(app="app", state_delta=state_delta(app={"motd": "pwned"})),
            user.update_session_state(mine.id, state_delta(app={"motd": "pwned"})),
            user.append_message(mine.id, role="user", state_delta=state_delta(app={"x": 1})),
        ):
            with pytest.raises(PermissionDeniedError) as denied:
                await attempt
            assert denied.value.reason == "ROLE_NOT_ALLOWED"
        stored = await service.get_session(mine.id)
        assert (dict(stored.state), dict(stored.app_state)) == ({"s": 2}, {"motd": "hi"})
        assert stored.last_seq == 1


async def test_an_admin_key_manages_keys_and_reads_no_history(secured: str, keys: Keys) -> None:
    async with (
        ParleyClient(secured, metadata=dict(_auth(keys.a_admin))) as admin,
        ParleyClient(secured, metadata=dict(_auth(keys.a_service))) as service,
        ParleyClient(secured, metadata=dict(_auth(keys.a_user))) as user,
    ):
        with pytest.raises(PermissionDeniedError, match="admin"):
            await admin.list_users()
        for other in (service, user):
            with pytest.raises(PermissionDeniedError, match="manage API keys"):
                await other.list_api_keys()
            with pytest.raises(PermissionDeniedError, match="manage API keys"):
                await other.create_api_key(role=ApiKey.ROLE_ADMIN)

        made, secret = await admin.create_api_key(role=ApiKey.ROLE_SERVICE, display_name="bot")
        assert secret.startswith("pk_")
        assert made.tenant == "tenant-a"
        assert made.role == ApiKey.ROLE_SERVICE
        assert not made.HasField("revoke_time")
        async with ParleyClient(secured, metadata=dict(_auth(secret))) as bot:
            created = await bot.create_user(display_name="made by the new key")
            assert (await service.get_user(created.id)).id == created.id  # the same tenant
            listed = [k async for k in admin.iter_api_keys(page_size=1)]
            assert {k.tenant for k in listed} == {"tenant-a"}
            assert made.id in {k.id for k in listed}
            assert keys.b_service_id not in str(listed)
            assert len(listed) == 4  # a's service, user and admin keys, and the new one
            assert (await admin.get_api_key(made.id)).last_used_time.seconds > 0
            revoked = await admin.revoke_api_key(made.id)
            assert revoked.HasField("revoke_time")
            assert await admin.revoke_api_key(made.id) == revoked  # revoking again changes nothing
            with pytest.raises(UnauthenticatedError):
                await bot.get_user(created.id)

        with pytest.raises(NotFoundError):
            await admin.get_api_key(keys.b_service_id)
        with pytest.raises(NotFoundError):
            await admin.revoke_api_key(keys.b_service_id)
        with pytest.raises(InvalidArgumentError) as invalid:
            await admin.create_api_key(role=ApiKey.ROLE_USER)
        assert [v.field for v in invalid.value.field_violations] == ["api_key.user_id"]
        with pytest.raises(NotFoundError):  # a user key is bound to a user of the tenant
            await admin.create_api_key(role=ApiKey.ROLE_USER, user_id=str(uuid.uuid4()))
        bound, bound_secret = await admin.create_api_key(
            role=ApiKey.ROLE_USER, user_id=keys.a_user_id
        )
        assert bound.user_id == keys.a_user_id
        async with ParleyClient(secured, metadata=dict(_auth(bound_secret))) as same_user:
            assert not (await same_user.list_sessions()).sessions


@pytest.mark.parametrize("credential", ["none", "malformed", "unknown", "revoked"])
async def test_calls_without_a_valid_key_are_unauthenticated(
    secured: str, store: Store, keys: Keys, credential: str
) -> None:
    if credential == "revoked":
        key, secret = await store.keys.create(tenant="tenant-a", role=Role.SERVICE)
        await store.keys.revoke(key.id)
        metadata: tuple[tuple[str, str], ...] = _auth(secret)
    else:
        metadata = {
            "none": (),
            "malformed": (("authorization", "Basic dXNlcjpwYXNz"),),
            "unknown": _auth("pk_" + "x" * 43),
        }[credential]
    channel = grpc.aio.insecure_channel(secured)
    try:
        for method, request in (
            ("ListUsers", pb.ListUsersRequest()),
            ("StreamMessages", pb.StreamMessagesRequest(session_id=str(uuid.uuid4()))),
        ):
            code, answer = await _call_with(channel, method, request, metadata)
            assert code == "UNAUTHENTICATED", (code, answer)
            assert "key" in answer
    finally:
        await channel.close(None)


class _Caller:
    """The part of a call's grpc context that authentication reads."""

    def __init__(self, secret: str | None) -> None:
        self._metadata = _auth(secret) if secret else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, Any]:
        return {}


def _gated(
    monkeypatch: pytest.MonkeyPatch, store: Store, name: str
) -> tuple[list[str], asyncio.Event]:
    """Counts the calls of store.keys' method `name`, each held until the event is set."""
    started: list[str] = []
    gate = asyncio.Event()
    inner = getattr(store.keys, name)

    async def held(*args: Any) -> Any:
        started.append(name)
        await gate.wait()
        return await inner(*args)

    monkeypatch.setattr(store.keys, name, held)
    return started, gate


async def test_calls_that_need_one_key_looked_up_share_one_lookup(
    store: Store, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At every expiry of its cached lookup, a key used by many calls at once was looked up (and
    its use recorded, an UPDATE of one row) once per call in flight: a burst of queries that
    held pooled connections while other calls waited."""
    authenticator = Authenticator(store.keys, anonymous_possible=False, cache_seconds=60)
    lookups, gate = _gated(monkeypatch, store, "find")
    touches, open_touches = _gated(monkeypatch, store, "touch")
    open_touches.set()
    calls = [
        asyncio.create_task(authenticator.authenticate(cast(Any, _Caller(keys.a_service))))
        for _ in range(16)
    ]
    await asyncio.sleep(0)  # one turn: every call runs up to its first wait
    cancelled = calls.pop()
    cancelled.cancel()  # a caller that leaves does not end the lookup the others wait for
    gate.set()
    principals = await asyncio.gather(*calls)
    assert {principal.tenant for principal in principals} == {"tenant-a"}
    assert (len(lookups), len(touches)) == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_anonymous_calls_share_one_count_of_keys(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a server without keys: each check whether keys exist yet was made once per
    call in flight."""
    authenticator = Authenticator(store.keys, anonymous_possible=True, cache_seconds=60)
    counts, gate = _gated(monkeypatch, store, "count_live")
    calls = [
        asyncio.create_task(authenticator.authenticate(cast(Any, _Caller(None)))) for _ in range(16)
    ]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*calls)) == {ANONYMOUS}
    assert len(counts) == 1


async def test_a_failed_lookup_reaches_every_call_that_shared_it_and_is_not_kept(
    store: Store, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator = Authenticator(store.keys, anonymous_possible=False, cache_seconds=60)
    lookups: list[int] = []
    gate = asyncio.Event()
    find = store.keys.find

    async def failing_once(secret: str) -> Any:
        lookups.append(1)
        await gate.wait()
        if len(lookups) == 1:
            raise Unavailable("the database is restarting")
        return await find(secret)

    monkeypatch.setattr(store.keys, "find", failing_once)
    calls = [
        asyncio.create_task(authenticator.authenticate(cast(Any, _Caller(keys.a_service))))
        for _ in range(4)
    ]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    principal = await authenticator.authenticate(cast(Any, _Caller(keys.a_service)))
    assert principal.tenant == "tenant-a"
    assert len(lookups) == 2


def test_serving_a_public_address_without_auth_refuses_to_start(tmp_path: Path) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley_server.cli",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path}/open.db",
            "serve",
            "--address",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "refusing to serve 0.0.0.0:0 without authentication" in finished.stderr
    assert "parley keys create" in finished.stderr
    assert "--insecure" in finished.stderr


# --- TLS and mTLS ---------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes

    def issue(self, subject: x509.Name) -> tuple[bytes, bytes]:
        """A client certificate for `subject` and its key, signed by the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        return _certificate(subject, key, ca=False, server=False), _pem_key(key)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley test CA")])


def _certificate(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(_CA_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _certificate(_CA_NAME, _CA_KEY, ca=True, server=False)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    return Pki(ca, _certificate(name, key, ca=False, server=True), _pem_key(key))


async def _tls_server(store: Store, pki: Pki, tmp_path: Path, *, mtls: bool) -> RunningServer:
    for name, data in (
        ("ca.pem", pki.ca),
        ("cert.pem", pki.server_cert),
        ("key.pem", pki.server_key),
    ):
        (tmp_path / name).write_bytes(data)
    settings = Settings(
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
        tls_client_ca=(tmp_path / "ca.pem") if mtls else None,
    )
    return await app.start(store, settings, address="127.0.0.1:0")


async def test_tls_with_an_api_key(store: Store, keys: Keys, pki: Pki, tmp_path: Path) -> None:
    running = await _tls_server(store, pki, tmp_path, mtls=False)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        async with ParleyClient(
            f"localhost:{running.port}", tls=credentials, metadata=dict(_auth(keys.a_service))
        ) as client:
            user = await client.create_user(display_name="over tls")
            assert (await client.get_user(user.id)).display_name == "over tls"
    finally:
        await running.stop(None, quiet=0)


async def test_mtls_maps_a_certificate_to_a_principal_and_refuses_clients_without_one(
    store: Store, pki: Pki, tmp_path: Path
) -> None:
    running = await _tls_server(store, pki, tmp_path, mtls=True)
    target = f"localhost:{running.port}"
    try:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tenant-c"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "service"),
                x509.NameAttribute(NameOID.COMMON_NAME, "billing-agent"),
            ]
        )
        cert, key = pki.issue(subject)
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki.ca, private_key=key, certificate_chain=cert
        )
        async with ParleyClient(target, tls=with_cert) as client:
            user = await client.create_user(display_name="by certificate")
            assert (await client.get_user(user.id)).id == user.id
        # The certificate's tenant is its own: tenant default sees nothing of it.
        assert (await store.users.list(Scope("default"), after=None, limit=10)).items == []
        assert [
            u.id for u in (await store.users.list(Scope("tenant-c"), after=None, limit=10)).items
        ] == [user.id]
        without = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        async with ParleyClient(target, tls=without, default_timeout=5) as client:
            with pytest.raises((UnavailableError, UnauthenticatedError)):
                await client.list_users(retry=False)
    finally:
        await running.stop(None, quiet=0)
