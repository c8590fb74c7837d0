"""A parley message's native fields, filled from a framework's own item as well as they map, and
never so that parley refuses the item: what parley does not hold (NUL characters, labels over 256
characters, a tool call without a name) is left out of them, as the item itself goes byte for
byte into the message's payload."""

from __future__ import annotations

LABEL_LENGTH = 256  # parley's limit on names, ids and other labels


def text(value: str) -> str:
    return value.replace("\x00", "")


def label(value: str | None, default: str = "") -> str:
    return text(value or "")[:LABEL_LENGTH] or default
