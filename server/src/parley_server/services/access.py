"""What each role may do, checked before any row is read, so the answer never depends on data."""

from __future__ import annotations

import logging

from parley_server.domain import StateDelta
from parley_server.errors import NotFound, PermissionDenied
from parley_server.identity import Principal, Role

audit = logging.getLogger("parley.audit")


def require_role(caller: Principal, *allowed: Role, action: str) -> None:
    if caller.role not in allowed:
        roles = " or ".join(f"a {role} key" for role in allowed)
        raise PermissionDenied(
            f"a {caller.role} key may not {action}; use {roles}",
            reason="ROLE_NOT_ALLOWED",
            metadata={"role": caller.role.value},
        )


def require_data_access(caller: Principal) -> None:
    """Chat history is for service and user principals; an admin manages keys only."""
    require_role(caller, Role.SERVICE, Role.USER, action="read or write chat history")


def may_change_state(caller: Principal, delta: StateDelta) -> None:
    """An app's state is shared by every user of the app, so only a service changes it; a user
    changes the state of its own sessions and its own user state."""
    if delta.app:
        require_role(
            caller, Role.SERVICE, action="change app state, which every user of the app shares"
        )


def acting_for(caller: Principal, user_id: str) -> str:
    """The user a call acts for: a user principal acts only for itself (an empty id means it),
    and any other user is, to it, a user that does not exist."""
    if caller.role is not Role.USER:
        return user_id
    if user_id and user_id != caller.user_id:
        raise NotFound.resource("user", user_id)
    return caller.user_id
