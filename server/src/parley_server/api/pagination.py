"""Opaque, keyset-based page tokens (AIP-158): a serialized internal proto, never an offset."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from parley_client._gen.parley.internal.v1.page_token_pb2 import PageToken
from parley_server.domain import Page, TimeCursor
from parley_server.errors import InvalidArgument

_FIELD = "page_token"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fingerprint(*filters: object) -> bytes:
    """A short digest of a List request's filter arguments."""
    return hashlib.sha256(repr(filters).encode()).digest()[:12]


def encode(token: PageToken) -> str:
    return base64.urlsafe_b64encode(token.SerializeToString()).rstrip(b"=").decode()


def decode(raw: str, *, method: str, filters: bytes) -> PageToken | None:
    """The token a List request carries, checked against the request; None on the first page."""
    if not raw:
        return None
    try:
        token = PageToken.FromString(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, DecodeError):
        token = None
    if token is None or token.method != method:
        raise InvalidArgument.field(
            _FIELD, f"is not a {method} page token; pass back next_page_token unchanged"
        )
    if token.filter_fingerprint != filters:
        raise InvalidArgument.field(
            _FIELD,
            "was issued for different filter arguments; keep them the same across pages, or"
            " start again without a page_token",
        )
    return token


class Timed(Protocol):
    @property
    def create_time(self) -> datetime: ...
    @property
    def id(self) -> str: ...


@dataclass(frozen=True)
class Keyset:
    """The paging state of one List request: where it resumes and how to say where the next does."""

    method: str
    filters: bytes
    token: PageToken | None

    @classmethod
    def of(cls, method: str, page_token: str, *filters: object) -> Keyset:
        """Check page_token against this request's method and filter arguments."""
        digest = fingerprint(*filters)
        return cls(method, digest, decode(page_token, method=method, filters=digest))

    @property
    def after_time(self) -> TimeCursor | None:
        """For lists ordered by (create_time, id)."""
        if self.token is None:
            return None
        micros = timedelta(microseconds=self.token.last_time_micros)
        return TimeCursor(time=_EPOCH + micros, id=self.token.last_id)

    @property
    def after_seq(self) -> int:
        """For lists ordered by seq."""
        return self.token.last_seq if self.token is not None else 0

    def next_after_time(self, page: Page[Any]) -> str:
        if not page.has_more:
            return ""
        last: Timed = page.items[-1]
        micros = (last.create_time - _EPOCH) // timedelta(microseconds=1)
        return encode(
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
        return encode(
            PageToken(
                method=self.method, filter_fingerprint=self.filters, last_seq=page.items[-1].seq
            )
        )
