"""Fuzzing every public method, the device stream, the WebSocket frame decoder and raw ports.

Hypothesis sends random bytes as the request of every public RPC (natter's services,
health, reflection), with and without a token, as frames on Connect and on the WebSocket,
and as raw bytes to the gRPC, HTTP and metrics ports, against a real `natter serve`
process. Whatever arrives: no INTERNAL or UNKNOWN status (nor close code 1011), the server
keeps serving, and its log holds no traceback.

CI runs a few examples per method (FUZZ_EXAMPLES); a longer run is one command:

    NATTER_FUZZ_EXAMPLES=2000 .venv/bin/pytest -q -p no:cacheprovider tests/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.ports import free_port
from natter.v1 import account_service_pb2 as apb
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import socket_service_pb2 as spb
from socket_svc.websocket import PROTOCOL, TOKEN_PREFIX
from tests.conftest import PASSWORD
from tests.procs import NatterServer

EXAMPLES = int(os.environ.get("NATTER_FUZZ_EXAMPLES", "15"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PUBLIC = [
    "natter.v1.AccountService",
    "natter.v1.ContactService",
    "natter.v1.ThreadService",
    "natter.v1.GroupService",
    "natter.v1.PresenceService",
    "natter.v1.SocketService",
    "natter.v1.SafetyService",
    "natter.v1.AdminService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
]
# A status that says the server failed, not the request.
FAILURES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def _methods() -> list[tuple[str, str]]:
    # Importing the generated modules (done by the imports above and natter.sdk) fills the pool.
    import grpc_health.v1.health_pb2  # noqa: F401
    import grpc_reflection.v1alpha.reflection_pb2  # noqa: F401

    import natter.sdk  # noqa: F401
    from natter.v1 import admin_service_pb2, safety_service_pb2  # noqa: F401

    out = []
    pool = descriptor_pool.Default()
    for service in PUBLIC:
        sd = pool.FindServiceByName(service)
        for md in sd.methods:
            kind = (
                "stream"
                if md.client_streaming
                else "server_stream"
                if md.server_streaming
                else "unary"
            )
            out.append((f"/{service}/{md.name}", kind))
    return out


METHODS = _methods()


class Target:
    """The server under fuzz, and a token of a logged-in account (renewed when lost)."""

    def __init__(self, server: NatterServer, metrics_port: int) -> None:
        self.server = server
        self.metrics_port = metrics_port
        self.channel = grpc.insecure_channel(server.grpc_address)
        self.token = ""
        self.relogin()

    def relogin(self) -> None:
        stub = apb_grpc.AccountServiceStub(self.channel)
        res = stub.Login(apb.LoginRequest(username="fuzz", password=PASSWORD), timeout=10)
        self.token = res.token

    def metadata(self, authed: bool) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if authed else ()

    def serving(self) -> None:
        """Still answering, with the fuzz account usable; its log without a traceback."""
        self.relogin()
        log = self.server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    port = free_port()
    env = {"NATTER_METRICS_ADDR": f"127.0.0.1:{port}", "NATTER_LOG_LEVEL": "INFO"}
    server = NatterServer(tmp_path_factory.mktemp("fuzz") / "data", env)
    asyncio.run(server.start())
    try:
        with grpc.insecure_channel(server.grpc_address) as ch:
            stub = apb_grpc.AccountServiceStub(ch)
            stub.Register(apb.RegisterRequest(username="first", password=PASSWORD), timeout=10)
            stub.Register(apb.RegisterRequest(username="fuzz", password=PASSWORD), timeout=10)
        t = Target(server, port)
        yield t
        t.serving()
        t.channel.close()
    finally:
        server.kill()


def _call(target: Target, path: str, kind: str, raw: bytes, authed: bool) -> grpc.StatusCode:
    ch, metadata = target.channel, target.metadata(authed)
    try:
        if kind == "unary":
            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(path)
            unary(raw, metadata=metadata, timeout=5)
        elif kind == "server_stream":
            watch: grpc.UnaryStreamMultiCallable[bytes, bytes] = ch.unary_stream(path)
            for _ in watch(raw, metadata=metadata, timeout=1):
                pass
        else:
            both: grpc.StreamStreamMultiCallable[bytes, bytes] = ch.stream_stream(path)
            for _ in both(iter([raw]), metadata=metadata, timeout=1):
                pass
    except grpc.RpcError as e:
        return _code(e)
    return grpc.StatusCode.OK


def _code(e: grpc.RpcError) -> grpc.StatusCode:
    code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
    assert isinstance(code, grpc.StatusCode)
    return code


@pytest.mark.parametrize(("path", "kind"), METHODS, ids=[m for m, _ in METHODS])
def test_random_requests_to_every_public_method(target: Target, path: str, kind: str) -> None:
    @FUZZ
    @given(raw=st.binary(max_size=400), authed=st.booleans())
    def one(raw: bytes, authed: bool) -> None:
        code = _call(target, path, kind, raw, authed)
        # A server stream that only ends at its deadline (Health/Watch, Connect) is fine.
        assert code not in FAILURES, (path, raw, code)
        if authed and code == grpc.StatusCode.UNAUTHENTICATED:
            target.relogin()  # the request logged its own device out, say

    one()
    target.serving()


def test_random_frames_on_the_device_stream(target: Target) -> None:
    @FUZZ
    @given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=6))
    def one(frames: list[bytes]) -> None:
        hello = spb.ClientFrame(hello=spb.Hello(skip_replay=True)).SerializeToString()
        connect: grpc.StreamStreamMultiCallable[bytes, bytes] = target.channel.stream_stream(
            "/natter.v1.SocketService/Connect"
        )
        try:
            for raw in connect(iter([hello, *frames]), metadata=target.metadata(True), timeout=1.5):
                frame = spb.ServerFrame.FromString(raw)
                if frame.WhichOneof("payload") == "error":
                    assert frame.error.code != grpc.StatusCode.INTERNAL.value[0], frame
        except grpc.RpcError as e:
            code = _code(e)
            assert code not in FAILURES, (frames, code)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                target.relogin()

    one()
    target.serving()


async def _websocket(target: Target, frames: list[bytes]) -> None:
    url = f"ws://127.0.0.1:{target.server.http_port}/ws"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, protocols=(PROTOCOL, TOKEN_PREFIX + target.token))
        await ws.send_bytes(spb.ClientFrame(hello=spb.Hello(skip_replay=True)).SerializeToString())
        for raw in frames:
            with contextlib.suppress(ConnectionResetError):
                await ws.send_bytes(raw)
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await ws.receive(timeout=0.5)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                frame = spb.ServerFrame.FromString(msg.data)
                if frame.WhichOneof("payload") == "error":
                    assert frame.error.code != grpc.StatusCode.INTERNAL.value[0], frame
        await ws.close()
        assert ws.close_code != 1011, (frames, ws.close_code)


def test_random_frames_on_the_websocket(target: Target) -> None:
    @FUZZ
    @given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=6))
    def one(frames: list[bytes]) -> None:
        asyncio.run(_websocket(target, frames))

    one()
    target.serving()


def test_random_bytes_on_every_port(target: Target) -> None:
    ports = [target.server.grpc_port, target.server.http_port, target.metrics_port]

    @FUZZ
    @given(raw=st.binary(min_size=1, max_size=600), which=st.sampled_from(ports))
    def one(raw: bytes, which: int) -> None:
        with (
            socket.create_connection(("127.0.0.1", which), timeout=2) as s,
            contextlib.suppress(OSError),
        ):
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while s.recv(4096):
                    pass

    one()
    target.serving()


def test_the_fuzzed_server_log_is_where_we_look(target: Target) -> None:
    assert Path(target.server.log_path).exists()
