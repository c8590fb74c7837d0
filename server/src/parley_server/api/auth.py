"""Authentication: who each call comes from, decided once per call before any handler runs.

The AuthInterceptor asks the Authenticator for the call's Principal and makes it the handler's
`caller()`; a call it cannot authenticate ends with UNAUTHENTICATED before reaching a handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from parley_server.api.interceptors import Call, CallInterceptor
from parley_server.identity import ANONYMOUS, Principal

_CALLER: ContextVar[Principal] = ContextVar("parley_caller")


def caller() -> Principal:
    """The principal of the call being handled (set by AuthInterceptor)."""
    return _CALLER.get()


class AuthInterceptor(CallInterceptor):
    @asynccontextmanager
    async def around(self, call: Call, request: Any) -> AsyncIterator[None]:
        # Each call runs in a task of its own, so the value ends with the call; it is not reset,
        # as a stream's generator may be closed from another context.
        _CALLER.set(ANONYMOUS)
        yield
