"""API keys over RPC: an admin principal manages the keys of its own tenant, nothing else."""

from __future__ import annotations

from parley_server.domain import Page, TimeCursor
from parley_server.identity import ApiKey, Principal, Role
from parley_server.services.access import audit, require_role
from parley_server.store.keys import KeyStore


class KeyService:
    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def create(
        self, caller: Principal, *, role: Role, user_id: str, display_name: str
    ) -> tuple[ApiKey, str]:
        """A new key of the caller's tenant and its secret, shown this once."""
        require_role(caller, Role.ADMIN, action="manage API keys")
        key, secret = await self._keys.create(
            tenant=caller.tenant, role=role, user_id=user_id, display_name=display_name
        )
        audit.info("api key created: key=%s role=%s by %s", key.id, key.role, caller)
        return key, secret

    async def get(self, caller: Principal, key_id: str) -> ApiKey:
        require_role(caller, Role.ADMIN, action="manage API keys")
        return await self._keys.get(key_id, tenant=caller.tenant)

    async def list(
        self, caller: Principal, *, after: TimeCursor | None, limit: int
    ) -> Page[ApiKey]:
        require_role(caller, Role.ADMIN, action="manage API keys")
        return await self._keys.list(tenant=caller.tenant, after=after, limit=limit)

    async def revoke(self, caller: Principal, key_id: str) -> ApiKey:
        require_role(caller, Role.ADMIN, action="manage API keys")
        key = await self._keys.revoke(key_id, tenant=caller.tenant)
        audit.info("api key revoked: key=%s by %s", key.id, caller)
        return key
