"""Request validation at the edge.

Field paths in violations are the request's own, e.g. "message.role" or "messages[2].id".
"""

from __future__ import annotations

import ipaddress
import math
import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from parley_server.errors import FieldViolation, InvalidArgument

LABEL_MAX_LENGTH = 256  # matches the store's indexed label columns
EMAIL_MAX_LENGTH = 320
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Used with fullmatch: `$` would also match before a trailing newline.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_UUID_EXAMPLE = "123e4567-e89b-12d3-a456-426614174000"
RESOURCE_ID_MAX_LENGTH = 255  # matches the store's id columns of users and sessions
# What a caller-chosen user or session id may hold: safe in URLs, file names, logs and shells.
_RESOURCE_ID = re.compile(rf"[A-Za-z0-9._~:@-]{{1,{RESOURCE_ID_MAX_LENGTH}}}")
_RESOURCE_ID_RULE = (
    f"a UUID or 1 to {RESOURCE_ID_MAX_LENGTH} letters, digits and the characters - . _ ~ : @"
    " (such as support-bot:alice)"
)


def canonical_resource_id(value: str) -> str | None:
    """A user or session id as parley keeps it (UUIDs in lower case), or None if it is not one."""
    if _UUID.fullmatch(value):
        return value.lower()
    return value if _RESOURCE_ID.fullmatch(value) else None


class Violations:
    """Collects every problem in a request, so the caller can fix them all in one go."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    def uuid(self, field: str, value: str, *, required: bool) -> str:
        """The canonical (lower-case) form of a UUID field; "" when absent and optional."""
        if not value:
            if required:
                self.add(field, f"is required: a UUID such as {_UUID_EXAMPLE}")
            return ""
        if not _UUID.fullmatch(value):
            self.add(field, f"must be a UUID such as {_UUID_EXAMPLE}, not {value[:64]!r}")
            return ""
        return value.lower()

    def resource_id(self, field: str, value: str, *, required: bool) -> str:
        """A user or session id, which callers may choose; "" when absent and optional."""
        if not value:
            if required:
                self.add(field, f"is required: {_RESOURCE_ID_RULE}")
            return ""
        canonical = canonical_resource_id(value)
        if canonical is None:
            self.add(field, f"must be {_RESOURCE_ID_RULE}, not {value[:64]!r}")
            return ""
        return canonical

    def label(self, field: str, value: str, *, required: bool = False) -> str:
        """A short free-form name (chapter, thread id, type, ...)."""
        if not value and required:
            self.add(field, "is required")
        elif len(value) > LABEL_MAX_LENGTH:
            self.add(field, f"is {len(value)} characters long; at most {LABEL_MAX_LENGTH} allowed")
        return value

    def email(self, field: str, value: str) -> str:
        """Trimmed and lower-cased, so uniqueness ignores case; "" for none."""
        value = value.strip().lower()
        if value and (len(value) > EMAIL_MAX_LENGTH or not _EMAIL.fullmatch(value)):
            self.add(field, f"must be an email address such as ada@example.com, not {value[:64]!r}")
        return value

    def ip_address(self, field: str, value: str) -> str:
        if not value:
            return ""
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.add(field, f"must be an IPv4 or IPv6 address, not {value[:64]!r}")
            return ""

    def page_size(self, field: str, value: int) -> int:
        if value < 0:
            self.add(field, "must not be negative (0 means the default of 100)")
        if value <= 0:
            return DEFAULT_PAGE_SIZE
        return min(value, MAX_PAGE_SIZE)


def required_uuid(value: str, field: str) -> str:
    """A request's one required UUID field, canonicalised, or INVALID_ARGUMENT."""
    v = Violations()
    parsed = v.uuid(field, value, required=True)
    v.raise_if_any()
    return parsed


def required_resource_id(value: str, field: str) -> str:
    """A request's one required user or session id, canonicalised, or INVALID_ARGUMENT."""
    v = Violations()
    parsed = v.resource_id(field, value, required=True)
    v.raise_if_any()
    return parsed


def find_unstorable(message: ProtoMessage, path: str = "") -> list[FieldViolation]:
    """Values no backend can hold: NUL characters (PostgreSQL text) and NaN or infinite numbers
    (JSON). Checked for every request in one place, so none reaches the database."""
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            for text in value if field.is_repeated else (value,):
                if "\x00" in text:
                    found.append(FieldViolation(name, "contains a NUL character (\\u0000)"))
                    break
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            for number in value if field.is_repeated else (value,):
                if not math.isfinite(number):
                    found.append(FieldViolation(name, "must be a finite number"))
                    break
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    entry = f"{name}[{key!r}]"
                    if "\x00" in key:
                        found.append(FieldViolation(entry, "key contains a NUL character"))
                    if isinstance(item, ProtoMessage):
                        found.extend(find_unstorable(item, entry))
                    elif isinstance(item, str) and "\x00" in item:
                        found.append(FieldViolation(entry, "contains a NUL character (\\u0000)"))
            elif field.is_repeated:
                for index, item in enumerate(value):
                    found.extend(find_unstorable(item, f"{name}[{index}]"))
            else:
                found.extend(find_unstorable(value, name))
    return found
