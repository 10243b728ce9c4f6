"""TLS for the public listeners (gRPC and HTTP) and for clients that connect to them."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from natter.errors import InvalidArgument


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read the TLS {what} {path}: {e.strerror}", "TLS_FILE") from e


def server_credentials(cert_file: str, key_file: str) -> grpc.ServerCredentials:
    """The public gRPC listener's credentials from PEM files (the chain, then the key)."""
    pair = (_read(key_file, "key"), _read(cert_file, "certificate"))
    return grpc.ssl_server_credentials([pair])


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The HTTP listener's context: HTTPS for the web app and the gateway, WSS for /ws."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(
            f"cannot load the TLS certificate {cert_file}: {e}", "TLS_FILE"
        ) from e
    return ctx


def listen(server: grpc.aio.Server, address: str, cert_file: str, key_file: str) -> int:
    """Bind a public gRPC listener: TLS when a certificate is configured; return its port."""
    if cert_file:
        return server.add_secure_port(address, server_credentials(cert_file, key_file))
    return server.add_insecure_port(address)


def channel_credentials(ca_file: str = "") -> grpc.ChannelCredentials:
    """A client's credentials: the system's roots, or those in ca_file (a private CA)."""
    roots = _read(ca_file, "CA bundle") if ca_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots)
