"""Opaque, keyset-based page tokens (AIP-158): a serialized internal proto, never an offset."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError

from parley_client._gen.parley.internal.v1.page_token_pb2 import PageToken
from parley_server.domain import TimeCursor
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


def time_cursor(token: PageToken | None) -> TimeCursor | None:
    if token is None:
        return None
    return TimeCursor(
        time=_EPOCH + timedelta(microseconds=token.last_time_micros), id=token.last_id
    )


def time_token(method: str, filters: bytes, time: datetime, item_id: str) -> str:
    micros = (time - _EPOCH) // timedelta(microseconds=1)
    return encode(
        PageToken(
            method=method, filter_fingerprint=filters, last_time_micros=micros, last_id=item_id
        )
    )


def seq_token(method: str, filters: bytes, last_seq: int) -> str:
    return encode(PageToken(method=method, filter_fingerprint=filters, last_seq=last_seq))
