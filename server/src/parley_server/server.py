"""The gRPC server: wiring only (servicers, health, reflection, ports, shutdown). What it serves
is composed in parley_server.app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from parley_client._gen.parley.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    parley_service_pb2,
    parley_service_pb2_grpc,
)
from parley_server.api.interceptors import InterceptorChain, LifecycleInterceptor

# After draining, how long no new call may have arrived before grpc is stopped.
QUIET_BEFORE_STOP = 0.5
SERVICE_NAME = parley_service_pb2.DESCRIPTOR.services_by_name["ParleyService"].full_name
ADMIN_SERVICE_NAME = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass(frozen=True)
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped in grpc-stubs)
    lifecycle: LifecycleInterceptor
    # Called as draining begins (to end streams that wait, such as watches), and once stopped.
    on_drain: Callable[[], None] = lambda: None
    on_stopped: Callable[[], Awaitable[None]] | None = None

    async def stop(self, grace: float | None, *, quiet: float = QUIET_BEFORE_STOP) -> None:
        """Shut down so that no client loses a call it would not retry: health says NOT_SERVING,
        new calls get UNAVAILABLE, streams end with UNAVAILABLE at their next response, and calls
        in flight get `grace` seconds (None: as long as they take) to finish before the rest are
        cancelled. grpc itself is stopped once no call has arrived for `quiet` seconds."""
        deadline = None if grace is None else time.monotonic() + grace
        await self.health.enter_graceful_shutdown()
        self.lifecycle.drain()
        self.on_drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.lifecycle.settled(quiet=quiet)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        await self.server.stop(left)
        if self.on_stopped is not None:
            await self.on_stopped()


async def create_server(
    address: str,
    *,
    servicer: parley_service_pb2_grpc.ParleyServiceServicer,
    admin: admin_service_pb2_grpc.AdminServiceServicer,
    interceptors: InterceptorChain,
    lifecycle: LifecycleInterceptor,
    max_receive_message_bytes: int,
    reflection_enabled: bool = True,
    credentials: grpc.ServerCredentials | None = None,
) -> RunningServer:
    """Start serving `servicer` and `admin` (with health, and reflection unless disabled) on
    `address` ("host:port"; port 0 picks a free one), every call inside `interceptors`, of which
    `lifecycle` must be one."""
    server = grpc.aio.server(
        interceptors=[interceptors],
        options=[
            ("grpc.max_receive_message_length", max_receive_message_bytes),
            # Fail to start, rather than silently share the port, when another server holds it.
            ("grpc.so_reuseport", 0),
        ],
    )
    parley_service_pb2_grpc.add_ParleyServiceServicer_to_server(servicer, server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection(
            [SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME],
            server,
        )
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError as error:
        raise OSError(f"cannot listen on {address}: {error}") from error
    await server.start()
    for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=port, health=health_servicer, lifecycle=lifecycle)
