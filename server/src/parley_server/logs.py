"""Logging helpers: exceptions described without users' data, and warnings that repeat (one per
failed call during an outage) throttled."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

THROTTLE_SECONDS = 10.0


@dataclass(slots=True)
class _Seen:
    logged_at: float
    suppressed: int = 0


_seen: dict[tuple[str, str], _Seen] = {}


def throttled(logger: logging.Logger, level: int, message: str) -> None:
    """Log `message` at most once per THROTTLE_SECONDS; the next line says how many were held
    back. `message` must not carry request data: it is also the key that groups repeats."""
    if not logger.isEnabledFor(level):
        return
    now = time.monotonic()
    key = (logger.name, message)
    seen = _seen.get(key)
    if seen is not None and now - seen.logged_at < THROTTLE_SECONDS:
        seen.suppressed += 1
        return
    suppressed = seen.suppressed if seen is not None else 0
    _seen[key] = _Seen(now)
    if suppressed:
        logger.log(level, "%s (and %d more like it since the last such line)", message, suppressed)
    else:
        logger.log(level, message)


_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite")


def describe(error: BaseException) -> str:
    """An exception chain for the log. Database errors appear by type and SQLSTATE only: their
    messages quote the values (and SQLAlchemy's the parameters) they failed on, which are users'
    data."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 5:
        kind = type(seen)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if kind.__module__.split(".")[0] in _DATABASE_MODULES:
            sqlstate = getattr(seen, "sqlstate", None) or getattr(
                getattr(seen, "orig", None), "sqlstate", None
            )
            parts.append(f"{name} (SQLSTATE {sqlstate})" if sqlstate else name)
        else:
            parts.append(f"{name}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)
