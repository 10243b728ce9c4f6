"""The edges found by probing a running server: malformed requests to the standard
services, login throttling that a stranger can neither dodge nor turn against the owner,
per-address limits, streams that never say Hello, empty frames, Locate without a token —
and the defaults a fresh install runs with."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import grpc
import pytest

from app.embedded import EmbeddedServer
from natter.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from natter.rpc import error_from_rpc
from natter.sdk import Client
from natter.settings import Settings
from natter.v1 import account_service_pb2 as apb
from natter.v1 import account_service_pb2_grpc as apb_grpc
from natter.v1 import socket_service_pb2 as spb
from socket_svc.websocket import PROTOCOL, TOKEN_PREFIX
from tests.conftest import PASSWORD
from tests.conftest import test_settings as make_settings
from tests.helpers import eventually
from tests.procs import RawStream, natter_server

# Bytes that are no protobuf message: wire type 7 does not exist, and a varint runs off.
GARBAGE = [b"\xff" * n for n in range(1, 11)] + [b"\x0f\x00", b"\x0a\xff\xff\xff\xff\x0f"]


def test_the_defaults_of_a_fresh_install() -> None:
    s = Settings()
    assert s.registration == "open"
    assert (s.registrations_per_ip_per_hour, s.registrations_per_hour) == (10.0, 100.0)
    assert s.logins_per_ip_per_minute == 60.0
    assert (s.login_failures_allowed, s.login_delay_seconds, s.login_delay_max_seconds) == (
        5,
        1.0,
        300.0,
    )
    assert s.login_account_failures_allowed == 100
    assert s.max_devices_per_user == 10
    assert s.token_lifetime_seconds == 90 * 86_400
    assert (s.hello_timeout_seconds, s.max_pending_streams_per_address) == (30.0, 32)
    assert (s.frames_per_second, s.frame_burst) == (200.0, 2000)
    assert (s.argon2_time_cost, s.argon2_memory_kib) == (2, 19 * 1024)
    assert s.presence_audience == "contacts"
    assert (s.metrics_enabled, s.metrics_addr, s.metrics_token) == (True, "", "")
    assert s.canary_interval_seconds == 30.0
    assert (s.log_format, s.log_level) == ("json", "INFO")
    assert s.trusted_proxies == ()


async def _status(channel: grpc.aio.Channel, path: str, kind: str, raw: bytes) -> grpc.StatusCode:
    try:
        if kind == "unary":
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
            await unary(raw, timeout=5)
        elif kind == "server_stream":
            watch: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
            async for _ in watch(raw, timeout=5):
                pass
        else:
            both: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(path)
            call = both(timeout=5)
            await call.write(raw)
            await call.done_writing()
            async for _ in call:
                pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def test_malformed_requests_to_reflection_and_health_are_invalid_argument_quietly(
    tmp_path: Path,
) -> None:
    async with natter_server(tmp_path / "data") as srv:
        methods = [
            ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream"),
            ("/grpc.health.v1.Health/Watch", "server_stream"),
            ("/grpc.health.v1.Health/Check", "unary"),
        ]
        async with grpc.aio.insecure_channel(srv.grpc_address) as channel:
            for path, kind in methods:
                codes = {await _status(channel, path, kind, raw) for raw in GARBAGE * 2}
                assert codes == {grpc.StatusCode.INVALID_ARGUMENT}, path
        await srv.wait_serving()
        log = srv.log_path.read_text()
    assert "Traceback" not in log
    # 72 malformed requests: at most one line about them (a minute's summary).
    assert sum("malformed" in line for line in log.splitlines()) <= 1


async def test_the_login_throttle_counts_per_account_whichever_name_is_typed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data", login_failures_allowed=3, login_delay_seconds=30)
    async with EmbeddedServer(settings) as server, Client(server.grpc_address) as c:
        await c.register("alice", PASSWORD, phone="+4915100000009")
        for _ in range(3):
            with pytest.raises(Unauthenticated):
                await c.login("alice", "not it")
        with pytest.raises(Unauthenticated):  # the fourth, through the phone number
            await c.login("+4915100000009", "still not it")
        # Now waiting, whichever name is typed, even with the right password.
        for name in ("+4915100000009", "alice", "ALICE"):
            with pytest.raises(ResourceExhausted) as info:
                await c.login(name, PASSWORD)
            assert info.value.reason == "LOGIN_THROTTLED"


async def _login_from(
    server: EmbeddedServer, name: str, password: str, address: str, token: str = ""
) -> apb.LoginResponse:
    """Log in as if from `address` (through a trusted proxy), optionally holding a token."""
    metadata = [("x-forwarded-for", address)]
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        try:
            return await apb_grpc.AccountServiceStub(channel).Login(
                apb.LoginRequest(username=name, password=password), metadata=metadata
            )
        except grpc.aio.AioRpcError as e:
            raise error_from_rpc(e) from None


async def test_a_stranger_cannot_lock_the_owner_out(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        trusted_proxies=("127.0.0.1/32",),
        login_failures_allowed=3,
        login_delay_seconds=30,
        login_account_failures_allowed=8,
    )
    async with EmbeddedServer(settings) as server:
        async with Client(server.grpc_address) as c:
            await c.register("alice", PASSWORD)
        stranger, owner = "203.0.113.9", "198.51.100.7"
        for _ in range(4):
            with pytest.raises(Unauthenticated):
                await _login_from(server, "alice", "guess", stranger)
        with pytest.raises(ResourceExhausted) as info:  # slowed down where the guesses are
            await _login_from(server, "alice", PASSWORD, stranger)
        assert info.value.reason == "LOGIN_THROTTLED"
        kept = await _login_from(server, "alice", PASSWORD, owner)  # the owner gets in
        # Guesses from many addresses meet the account's ceiling...
        for i in range(4):  # 4 + 4 wrong passwords: the ceiling of 8
            with pytest.raises(Unauthenticated):
                await _login_from(server, "alice", "guess", f"192.0.2.{i + 1}")
        with pytest.raises(ResourceExhausted) as info:
            await _login_from(server, "alice", PASSWORD, "192.0.2.200")
        assert info.value.reason == "LOGIN_THROTTLED"
        # ... but a device that holds a token of the account still logs in a new one.
        again = await _login_from(server, "alice", PASSWORD, "192.0.2.200", token=kept.token)
        assert again.device_id != kept.device_id
        # Someone else's token is no help.
        async with Client(server.grpc_address) as b:
            await b.register("bob", PASSWORD)
            await b.login("bob", PASSWORD)
            with pytest.raises(ResourceExhausted):
                await _login_from(server, "alice", PASSWORD, "192.0.2.201", token=b.token)


async def test_logins_are_limited_per_client_address(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data", trusted_proxies=("127.0.0.1/32",), logins_per_ip_per_minute=3
    )
    async with EmbeddedServer(settings) as server:
        async with Client(server.grpc_address) as c:
            await c.register("alice", PASSWORD)
            await c.register("bob", PASSWORD)
        for name in ("alice", "bob", "alice"):
            await _login_from(server, name, PASSWORD, "192.0.2.1")
        with pytest.raises(ResourceExhausted) as info:
            await _login_from(server, "bob", PASSWORD, "192.0.2.1")
        assert info.value.reason == "LOGIN_RATE_LIMITED"
        await _login_from(server, "bob", PASSWORD, "192.0.2.2")  # another address is fine


async def _ws_closed(http: aiohttp.ClientSession, port: int, token: str) -> int:
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{port}/ws", protocols=(PROTOCOL, TOKEN_PREFIX + token)
    )
    msg = await ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    await ws.close()
    return int(ws.close_code or 0)


async def test_streams_that_never_say_hello_are_capped_per_address_on_both_transports(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "data", max_pending_streams_per_address=3, hello_timeout_seconds=30
    )
    async with EmbeddedServer(settings) as server, aiohttp.ClientSession() as http:
        alice = Client(server.grpc_address)
        await alice.register("alice", PASSWORD)
        await alice.login("alice", PASSWORD)
        silent = [RawStream(alice) for _ in range(3)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sum(server.hub.pending.by_address.values()) < 3:  # all three are waiting
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        extra = RawStream(alice)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await extra.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_from_rpc(refused.value).reason == "TOO_MANY_PENDING_STREAMS"
        # The WebSocket counts against the same cap: 4000 + RESOURCE_EXHAUSTED (8).
        assert await _ws_closed(http, server.http_port, alice.token) == 4008
        # Saying hello frees a place.
        await silent[0].hello()
        late = RawStream(alice)
        await late.hello()
        for raw in (*silent, late, extra):
            raw.cancel()
        await alice.close()


async def test_empty_frames_count_against_the_frame_budget(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", frames_per_second=5, frame_burst=10)
    async with EmbeddedServer(settings) as server:
        alice = Client(server.grpc_address)
        await alice.register("alice", PASSWORD)
        await alice.login("alice", PASSWORD)
        raw = RawStream(alice)
        await raw.hello()
        for _ in range(200):
            await raw.write(spb.ClientFrame(batch=spb.ClientBatch()))
        limited = await raw.until("error")
        assert limited.error.reason == "RATE_LIMITED"

        async def read_on() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, EOFError):
                while True:
                    await raw.read(timeout=60)

        reader = asyncio.create_task(read_on())

        # The stream stays up: a heartbeat is answered once the budget has refilled.
        async def answered() -> bool:
            await raw.write(spb.ClientFrame(heartbeat=spb.Heartbeat()))
            return bool(raw.of("heartbeat_ack"))

        await eventually(answered, timeout=10)
        raw.cancel()
        await asyncio.wait({reader})
        await alice.close()


async def test_locate_needs_a_token_and_answers_for_oneself_only(server: EmbeddedServer) -> None:
    async with Client(server.grpc_address) as anonymous:
        with pytest.raises(Unauthenticated) as info:
            await anonymous.locate("alice")
        assert info.value.reason == "NO_TOKEN"
        await anonymous.register("alice", PASSWORD)
        await anonymous.register("bob", PASSWORD)
        await anonymous.login("alice", PASSWORD)
        assert await anonymous.locate("alice") == server.grpc_address
        assert await anonymous.locate("") == server.grpc_address
        with pytest.raises(PermissionDenied) as denied:
            await anonymous.locate("bob")
        assert denied.value.reason == "NOT_YOURSELF"
        with pytest.raises(PermissionDenied):
            await anonymous.locate("nobody")  # does not say whether "nobody" exists
