"""gRPC listeners of every natter process: options, interceptors, health and reflection."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from natter.rpc import ClientAddresses, ErrorInterceptor, SecretInterceptor
from natter.settings import Settings

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_frame_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        # A peer that does not answer a ping within this is gone (a half-open connection).
        # ping_timeout bounds every outstanding ping: without it a flow-control ping in
        # flight holds a dead connection for gRPC's default of one minute.
        ("grpc.keepalive_timeout_ms", int(min(10.0, settings.keepalive_seconds) * 1000)),
        ("grpc.http2.ping_timeout_ms", int(min(10.0, settings.keepalive_seconds) * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def public_server(
    settings: Settings,
    gateway_key: str = "",
    inner: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """A listener clients reach: domain errors mapped to status codes, client addresses known.

    `gateway_key` is the key this process's web gateway vouches for browsers' addresses with;
    `inner` interceptors run inside the error mapping (their domain errors are mapped too).
    """
    addresses = ClientAddresses(settings.trusted_proxies, gateway_key)
    return grpc.aio.server(
        interceptors=[ErrorInterceptor(addresses), *inner], options=server_options(settings)
    )


def internal_server(
    settings: Settings, inner: Sequence[grpc.aio.ServerInterceptor] = ()
) -> grpc.aio.Server:
    """A listener only cluster peers reach: every call must carry the cluster secret.

    Request ids come from the calling peer, so one id follows a request across processes.
    """
    return grpc.aio.server(
        interceptors=[
            SecretInterceptor(settings.cluster_secret),
            ErrorInterceptor(trust_request_id=True),
            *inner,
        ],
        options=server_options(settings),
    )


def serve_health_and_reflection(
    server: grpc.aio.Server, checker: health.aio.HealthServicer, services: Iterable[str]
) -> None:
    """The standard health service and server reflection, always on (grpcurl needs both)."""
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = (*services, HEALTH_SERVICE, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
