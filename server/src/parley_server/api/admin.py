"""AdminService: API keys of the caller's tenant, for admin principals (the rules are in
parley_server.services.keys)."""

from __future__ import annotations

from typing import Any

import grpc

from parley_client._gen.parley.v1 import admin_service_pb2 as pb
from parley_client._gen.parley.v1 import admin_service_pb2_grpc
from parley_server.api import convert
from parley_server.api.auth import caller
from parley_server.api.pagination import PageTokens
from parley_server.api.validate import Violations, required_uuid
from parley_server.services.keys import KeyService

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, keys: KeyService, *, tokens: PageTokens) -> None:
        self._keys = keys
        self._tokens = tokens

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        v = Violations()
        new = convert.new_api_key(request.api_key, "api_key", v)
        v.raise_if_any()
        key, secret = await self._keys.create(
            caller(), role=new.role, user_id=new.user_id, display_name=new.display_name
        )
        return pb.CreateApiKeyResponse(api_key=convert.api_key_pb(key), secret=secret)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Context) -> pb.ApiKey:
        key = await self._keys.get(caller(), required_uuid(request.id, "id"))
        return convert.api_key_pb(key)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        v = Violations()
        size = v.page_size("page_size", request.page_size)
        v.raise_if_any()
        keyset = self._tokens.keyset("ListApiKeys", request.page_token, caller().scope)
        page = await self._keys.list(caller(), after=keyset.after_time, limit=size)
        return pb.ListApiKeysResponse(
            api_keys=[convert.api_key_pb(key) for key in page.items],
            next_page_token=keyset.next_after_time(page),
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.ApiKey:
        key = await self._keys.revoke(caller(), required_uuid(request.id, "id"))
        return convert.api_key_pb(key)
