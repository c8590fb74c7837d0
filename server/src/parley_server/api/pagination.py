"""Opaque, signed, keyset-based page tokens (AIP-158), never an offset.

The format is private to the server (no client can or should parse it): a fixed header (a
version byte, digests of the method and of the filter arguments, the last time and seq) followed
by the last id, then the HMAC of all of that, in URL-safe base64.

A token is honoured only if this service issued it for the same method and the same filter
arguments: its tag is an HMAC-SHA256 over all of that, keyed with a secret that every server
process over one database shares (made by a migration, kept in the database), so a page can be
fetched from any process and a forged or altered token is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from parley_server.api.validate import canonical_resource_id
from parley_server.domain import Page, TimeCursor
from parley_server.errors import InvalidArgument

_FIELD = "page_token"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TAG_BYTES = 16
_VERSION = 1
# version, method digest, filter digest, last_time_micros, last_seq; then the last id (UTF-8).
_HEADER = struct.Struct(">B4s12sqq")
_MAX_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MIN_MICROS = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def fingerprint(*filters: object) -> bytes:
    """A short digest of a List request's filter arguments."""
    return hashlib.sha256(repr(filters).encode()).digest()[:12]


def _invalid(problem: str) -> InvalidArgument:
    return InvalidArgument.field(_FIELD, problem)


@functools.cache  # one per method name the server has
def _method_digest(method: str) -> bytes:
    return hashlib.sha256(method.encode()).digest()[:4]


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where a list stopped: a (create_time, id) or a seq position, for a method and filters."""

    method: str
    filter_fingerprint: bytes
    last_time_micros: int = 0
    last_seq: int = 0
    last_id: str = ""


class PageTokens:
    """Issues and checks page tokens with one signing key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page-token key needs at least 16 bytes")
        self._key = key

    def _tag(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, "sha256")[:_TAG_BYTES]

    def encode(self, token: PageToken) -> str:
        payload = (
            _HEADER.pack(
                _VERSION,
                _method_digest(token.method),
                token.filter_fingerprint,
                token.last_time_micros,
                token.last_seq,
            )
            + token.last_id.encode()
        )
        return base64.urlsafe_b64encode(payload + self._tag(payload)).rstrip(b"=").decode()

    def decode(self, raw: str, *, method: str, filters: bytes) -> PageToken | None:
        """The token a List request carries, checked against the request; None on the first
        page."""
        if not raw:
            return None
        not_ours = _invalid(f"is not a {method} page token; pass back next_page_token unchanged")
        try:
            data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise not_ours from None
        payload, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        if len(data) <= _TAG_BYTES or not hmac.compare_digest(tag, self._tag(payload)):
            raise not_ours
        if len(payload) < _HEADER.size:
            raise not_ours
        version, method_digest, fingerprint_, micros, seq = _HEADER.unpack_from(payload)
        if version != _VERSION or method_digest != _method_digest(method):
            raise not_ours
        try:
            last_id = payload[_HEADER.size :].decode()
        except UnicodeDecodeError:
            raise not_ours from None
        token = PageToken(method, fingerprint_, micros, seq, last_id)
        if token.filter_fingerprint != filters:
            raise _invalid(
                "was issued for different filter arguments; keep them the same across pages, or"
                " start again without a page_token"
            )
        return token

    def keyset(self, method: str, page_token: str, *filters: object) -> Keyset:
        """Check page_token against this request's method and filter arguments."""
        digest = fingerprint(*filters)
        return Keyset(self, method, digest, self.decode(page_token, method=method, filters=digest))


class Timed(Protocol):
    @property
    def create_time(self) -> datetime: ...
    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class Keyset:
    """The paging state of one List request: where it resumes and how to say where the next does."""

    tokens: PageTokens
    method: str
    filters: bytes
    token: PageToken | None

    @property
    def after_time(self) -> TimeCursor | None:
        """For lists ordered by (create_time, id)."""
        if self.token is None:
            return None
        # A signed token holds what parley wrote; these checks only keep a leaked key harmless.
        micros = self.token.last_time_micros
        last_id = canonical_resource_id(self.token.last_id)
        if not _MIN_MICROS <= micros <= _MAX_MICROS or not last_id:
            raise _invalid("holds a position no list has; start again without a page_token")
        return TimeCursor(time=_EPOCH + timedelta(microseconds=micros), id=last_id)

    @property
    def after_seq(self) -> int:
        """For lists ordered by seq."""
        if self.token is None:
            return 0
        if not 0 <= self.token.last_seq < 2**63:
            raise _invalid("holds a position no list has; start again without a page_token")
        return self.token.last_seq

    def next_after_time(self, page: Page[Any]) -> str:
        if not page.has_more:
            return ""
        last: Timed = page.items[-1]
        micros = (last.create_time - _EPOCH) // timedelta(microseconds=1)
        return self.tokens.encode(
            PageToken(
                method=self.method,
                filter_fingerprint=self.filters,
                last_time_micros=micros,
                last_id=last.id,
            )
        )

    def next_after_seq(self, page: Page[Any]) -> str:
        if not page.has_more:
            return ""
        return self.tokens.encode(
            PageToken(
                method=self.method, filter_fingerprint=self.filters, last_seq=page.items[-1].seq
            )
        )
