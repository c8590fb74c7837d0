"""Who is calling: the principal every service method acts for.

A principal belongs to one tenant, the isolation boundary: it never sees or learns about another
tenant's rows. Its role says what it may do there:

    admin    manages tenants and API keys; reads no chat history
    service  acts for any user of its tenant (a backend, an agent runtime)
    user     is one user of its tenant: sees and changes only that user's sessions, messages,
             contexts and ratings, and rates only as that user
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from parley_server.domain import Scope

DEFAULT_TENANT = "default"


class Role(enum.StrEnum):
    ADMIN = "admin"
    SERVICE = "service"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: Role
    user_id: str = ""  # the user a USER principal is bound to
    credential: str = ""  # what authenticated it, for audit: "key:<id>", "cert:<subject>", ""

    def __str__(self) -> str:
        """For audit lines: role, tenant, user and credential; never a secret."""
        bound = f" user={self.user_id}" if self.user_id else ""
        return f"role={self.role} tenant={self.tenant}{bound} via={self.credential or 'none'}"

    @property
    def scope(self) -> Scope:
        """What this principal's data calls may reach: its tenant, and for a user principal
        only its own user's data."""
        return Scope(self.tenant, self.user_id if self.role is Role.USER else "")


# The caller when the server runs without authentication (loopback only, one tenant).
ANONYMOUS = Principal(tenant=DEFAULT_TENANT, role=Role.SERVICE)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A credential as stored (never the key itself), and the principal it authenticates."""

    id: str
    tenant: str
    role: Role
    user_id: str
    display_name: str
    create_time: datetime
    last_used_time: datetime | None
    revoke_time: datetime | None

    def principal(self) -> Principal:
        return Principal(
            tenant=self.tenant, role=self.role, user_id=self.user_id, credential=f"key:{self.id}"
        )
