"""Authentication: who each call comes from, decided once per call before any handler runs.

A call proves who it is with an API key (`authorization: Bearer <key>` metadata) or, over mTLS,
with a client certificate signed by the configured CA (its subject's O names the tenant, OU the
role, and CN the user of a user principal). A server with neither keys nor a client CA serves
anonymous calls as the default tenant's service principal, on loopback only (app.py enforces
that), until the first key is made. Anything else that cannot be authenticated ends with
UNAUTHENTICATED before a handler runs.

Keys are looked up by their SHA-256 and the answer is cached for `cache_seconds`, so a busy
caller costs no database read per call (and the calls in flight when it expires share one
lookup); a revoked key is refused within that time on every server.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from parley_server.api.interceptors import Call, CallInterceptor, Context
from parley_server.errors import Unauthenticated
from parley_server.identity import ANONYMOUS, Principal, Role
from parley_server.store.keys import KeyStore
from parley_server.tasks import SingleFlight

_CALLER: ContextVar[Principal] = ContextVar("parley_caller")
_MAX_CACHED_KEYS = 10_000


def caller() -> Principal:
    """The principal of the call being handled (set by AuthInterceptor)."""
    return _CALLER.get()


class Authenticator:
    def __init__(self, keys: KeyStore, *, anonymous_possible: bool, cache_seconds: float) -> None:
        """anonymous_possible: whether calls without credentials may be served while the
        database holds no live key (decided anew every cache_seconds, so the first key made
        ends anonymous access without a restart)."""
        self._keys = keys
        self._anonymous_possible = anonymous_possible
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._keyless_until = 0.0
        # The calls in flight when a cached answer expires share one lookup, not one each.
        self._lookups: SingleFlight[bytes, Principal | None] = SingleFlight()
        self._key_counts: SingleFlight[None, bool] = SingleFlight()

    async def authenticate(self, context: Context) -> Principal:
        header = None
        for name, value in context.invocation_metadata() or ():
            if name == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
        if header is not None:
            return await self._from_key(header)
        certificate = list(context.auth_context().get("x509_pem_cert", ()))
        if certificate:
            return _from_certificate(certificate[0])
        if self._anonymous_possible and await self._keyless():
            return ANONYMOUS
        raise Unauthenticated(
            "this server needs a credential: send the metadata `authorization: Bearer <key>`"
            " (an admin makes keys with `parley keys create`)",
            reason="CREDENTIALS_MISSING",
        )

    async def _keyless(self) -> bool:
        if self._keyless_until > time.monotonic():
            return True
        return await self._key_counts.run(None, self._count_keys)

    async def _count_keys(self) -> bool:
        """Whether no live key exists yet (kept for cache_seconds)."""
        now = time.monotonic()
        if await self._keys.count_live() > 0:
            self._anonymous_possible = False  # once keys exist, they are required from then on
            return False
        self._keyless_until = now + self._cache_seconds
        return True

    async def _from_key(self, header: str) -> Principal:
        scheme, _, key = header.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated(
                "the authorization metadata must be `Bearer <key>`", reason="CREDENTIALS_MALFORMED"
            )
        digest = hashlib.sha256(key.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            principal = cached[1]
        else:
            principal = await self._lookups.run(digest, lambda: self._look_up(key, digest))
        if principal is None:
            raise Unauthenticated(
                "the API key is not valid: unknown, mistyped or revoked",
                reason="CREDENTIALS_INVALID",
            )
        return principal

    async def _look_up(self, key: str, digest: bytes) -> Principal | None:
        """The principal of a key (None if it is unknown or revoked), kept for cache_seconds."""
        now = time.monotonic()
        found = await self._keys.find(key)
        principal = None if found is None else found.principal()
        if found is not None:
            await self._keys.touch(found)
        if len(self._cache) >= _MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[digest] = (now + self._cache_seconds, principal)
        return principal


def _from_certificate(pem: bytes) -> Principal:
    """O = tenant, OU = role, CN = the user (for a user principal) or a name."""
    subject = x509.load_pem_x509_certificate(pem).subject

    def field(oid: x509.ObjectIdentifier) -> str:
        values = subject.get_attributes_for_oid(oid)
        value = values[0].value if values else ""
        return value if isinstance(value, str) else value.decode()

    tenant, role, common_name = (
        field(NameOID.ORGANIZATION_NAME),
        field(NameOID.ORGANIZATIONAL_UNIT_NAME),
        field(NameOID.COMMON_NAME),
    )
    if not tenant or role not in {r.value for r in Role}:
        raise Unauthenticated(
            "the client certificate names no principal: its subject needs O=<tenant> and"
            " OU=admin, service or user (and CN=<user id> for a user)",
            reason="CERTIFICATE_UNMAPPED",
        )
    return Principal(
        tenant=tenant,
        role=Role(role),
        user_id=common_name.lower() if role == Role.USER else "",
        credential=f"cert:{subject.rfc4514_string()}",
    )


class AuthInterceptor(CallInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    @asynccontextmanager
    async def around(self, call: Call, request: Any) -> AsyncIterator[None]:
        # Each call runs in a task of its own, so the value ends with the call; it is not reset,
        # as a stream's generator may be closed from another context.
        _CALLER.set(await self._authenticator.authenticate(call.context))
        yield
