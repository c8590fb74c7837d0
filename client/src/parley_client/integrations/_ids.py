"""Frameworks' free-form ids as parley ids: letters, digits and - . _ pass unchanged (so the
usual ids read as themselves), every other byte of the UTF-8 form becomes ~XX (percent-encoding
with ~ for %). Parts join with ":", which an escaped part never holds, so the mapping is
one-to-one and reversible."""

from __future__ import annotations

from urllib.parse import quote, unquote


def escape(value: str) -> str:
    return quote(value, safe="").replace("~", "%7E").replace("%", "~")


def unescape(value: str) -> str:
    return unquote(value.replace("~", "%"))


def join(*parts: str) -> str:
    return ":".join(escape(part) for part in parts)


def split(value: str) -> list[str]:
    return [unescape(part) for part in value.split(":")]
