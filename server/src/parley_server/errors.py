"""Domain errors. The store and the API raise these; api/status.py maps them to gRPC status codes.

Each error carries a machine-readable `reason` (UPPER_SNAKE_CASE, sent as ErrorInfo.reason) and
string `metadata` with lowerCamel keys, next to a message a person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One problem with one request field; `field` is its path in the request."""

    field: str
    description: str


class ParleyError(Exception):
    """Base of the errors a caller can be told about."""

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class NotFound(ParleyError):
    default_reason = "NOT_FOUND"

    @classmethod
    def resource(cls, kind: str, resource_id: str) -> NotFound:
        return cls(
            f"{kind} {resource_id!r} does not exist",
            reason=f"{kind.upper()}_NOT_FOUND",
            metadata={"resourceType": kind, "resourceId": resource_id},
        )


class AlreadyExists(ParleyError):
    default_reason = "ALREADY_EXISTS"

    @classmethod
    def resource(cls, kind: str, resource_id: str) -> AlreadyExists:
        return cls(
            f"{kind} {resource_id!r} already exists with other content (a retry with the same"
            " content gets the stored one); choose another id",
            reason=f"{kind.upper()}_ALREADY_EXISTS",
            metadata={"resourceType": kind, "resourceId": resource_id},
        )


class InvalidArgument(ParleyError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", metadata={"field": violations[0].field})
        self.violations = tuple(violations)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class FailedPrecondition(ParleyError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(ParleyError):
    """A concurrent change won; the caller may retry the whole operation."""

    default_reason = "ABORTED"

    @classmethod
    def concurrent_conflict(cls) -> Aborted:
        """A concurrent change (a delete, a racing write) made this one fail: the one error for
        every such race, so clients handle them alike."""
        return cls(
            "a concurrent change conflicted with this one; retry it", reason="CONCURRENT_CONFLICT"
        )

    @classmethod
    def last_seq_mismatch(cls, expected: int, current: int) -> Aborted:
        """A conditional append found the session elsewhere than its caller expected."""
        return cls(
            f"the session's last seq is {current}, not the expected {expected}: nothing was"
            " appended; read what was appended since and decide again",
            reason="LAST_SEQ_MISMATCH",
            metadata={"lastSeq": str(current), "expectedLastSeq": str(expected)},
        )


class Unavailable(ParleyError):
    """The database cannot be reached right now; retry with backoff."""

    default_reason = "DATABASE_UNAVAILABLE"


class Unauthenticated(ParleyError):
    """The call carries no credential this server accepts."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ParleyError):
    """The caller's role may not do this (whatever the resource: a role check never depends on
    whether another tenant's resource exists)."""

    default_reason = "PERMISSION_DENIED"
