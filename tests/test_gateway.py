"""The HTTP listener: Connect unary gateway, WebSocket stream, static app and its headers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.rpc import error_details_pb2

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.settings import Settings
from natter.v1 import account_service_pb2 as apb
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import thread_service_pb2 as tpb
from natter.v1 import types_pb2 as tpb_types
from socket_svc.websocket import PROTOCOL, TOKEN_PREFIX
from tests import conftest
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect, eventually

JSON = "application/json"
PROTO = "application/proto"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(server: EmbeddedServer) -> str:
    return f"http://127.0.0.1:{server.http_port}"


async def call_json(
    http: aiohttp.ClientSession,
    server: EmbeddedServer,
    method: str,
    body: dict[str, Any],
    token: str = "",
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": JSON, "Connect-Protocol-Version": "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(f"{base(server)}/natter.v1.{method}", json=body, headers=headers) as r:
        assert r.content_type == JSON
        return r.status, await r.json()


async def account(http: aiohttp.ClientSession, server: EmbeddedServer, name: str) -> str:
    status, _ = await call_json(
        http, server, "AccountService/Register", {"username": name, "password": PASSWORD}
    )
    assert status == 200
    return await login(http, server, name)


async def login(http: aiohttp.ClientSession, server: EmbeddedServer, name: str) -> str:
    status, body = await call_json(
        http,
        server,
        "AccountService/Login",
        {"username": name, "password": PASSWORD, "deviceName": "web"},
    )
    assert status == 200 and body["user"]["username"] == name
    return str(body["token"])


# -- Connect unary ----------------------------------------------------------------------------


async def test_connect_json_register_login_and_authenticated_calls(
    server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    status, body = await call_json(
        http,
        server,
        "AccountService/Register",
        {"username": "alice", "password": PASSWORD, "displayName": "Alice A"},
    )
    assert status == 200
    assert body["user"]["username"] == "alice" and body["user"]["displayName"] == "Alice A"
    assert int(body["user"]["userId"]) > 0  # int64 travels as a JSON string
    status, body = await call_json(
        http,
        server,
        "AccountService/Login",
        {"username": "alice", "password": PASSWORD, "deviceName": "browser"},
    )
    assert status == 200 and body["token"] and int(body["deviceId"]) > 0
    token = body["token"]
    status, me = await call_json(http, server, "AccountService/GetMe", {}, token)
    assert status == 200 and me["user"]["username"] == "alice"
    status, devices = await call_json(http, server, "AccountService/ListDevices", {}, token)
    assert status == 200 and [x["name"] for x in devices["devices"]] == ["browser"]
    assert devices["devices"][0]["current"] is True


async def test_connect_proto_round_trip(
    server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    req = apb.RegisterRequest(username="bob", password=PASSWORD)
    async with http.post(
        f"{base(server)}/natter.v1.AccountService/Register",
        data=req.SerializeToString(),
        headers={"Content-Type": PROTO},
    ) as r:
        assert r.status == 200 and r.content_type == PROTO
        assert apb.RegisterResponse.FromString(await r.read()).user.username == "bob"
    login = apb.LoginRequest(username="bob", password=PASSWORD, device_name="tab")
    async with http.post(
        f"{base(server)}/natter.v1.AccountService/Login",
        data=login.SerializeToString(),
        headers={"Content-Type": PROTO},
    ) as r:
        token = apb.LoginResponse.FromString(await r.read()).token
    list_req = tpb.ListThreadsRequest(page_size=10)
    async with http.post(
        f"{base(server)}/natter.v1.ThreadService/ListThreads",
        data=list_req.SerializeToString(),
        headers={"Content-Type": PROTO, "Authorization": f"Bearer {token}"},
    ) as r:
        assert r.status == 200
        assert list(tpb.ListThreadsResponse.FromString(await r.read()).threads) == []


def _reason(body: dict[str, Any]) -> str:
    [detail] = body["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    raw = detail["value"] + "=" * (-len(detail["value"]) % 4)
    info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(raw))
    assert info.reason == detail["debug"]["reason"]
    return str(info.reason)


async def test_connect_errors_map_to_codes_and_http_status(
    server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    status, body = await call_json(
        http, server, "AccountService/Register", {"username": "No Spaces!", "password": PASSWORD}
    )
    assert (status, body["code"]) == (400, "invalid_argument") and body["message"]
    assert _reason(body)
    token = await account(http, server, "carol")
    status, body = await call_json(
        http, server, "AccountService/Register", {"username": "carol", "password": PASSWORD}
    )
    assert (status, body["code"]) == (409, "already_exists")
    status, body = await call_json(http, server, "ContactService/ListContacts", {})
    assert (status, body["code"]) == (401, "unauthenticated")
    status, body = await call_json(http, server, "ContactService/ListContacts", {}, "nonsense")
    assert (status, body["code"]) == (401, "unauthenticated")
    status, body = await call_json(
        http, server, "ContactService/AddContact", {"username": "nobody-here"}, token
    )
    assert (status, body["code"]) == (404, "not_found")
    status, body = await call_json(
        http, server, "ThreadService/GetThread", {"threadId": "999"}, token
    )
    assert status in (403, 404) and body["code"] in ("permission_denied", "not_found")


async def test_connect_refuses_what_is_not_a_public_unary_method(
    server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    for path in (
        "natter.v1.AccountService/Nope",
        "natter.v1.NoService/Call",
        "natter.v1.MessageInternalService/Sync",
        "natter.v1.SocketService/Connect",
        "grpc.health.v1.Health/Check",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        async with http.post(f"{base(server)}/{path}", json={}) as r:
            assert r.status == 404, path
            assert (await r.json())["code"] == "unimplemented"


async def test_connect_refuses_bad_bodies(
    server: EmbeddedServer, http: aiohttp.ClientSession
) -> None:
    url = f"{base(server)}/natter.v1.AccountService/Register"
    async with http.post(url, data=b"{", headers={"Content-Type": JSON}) as r:
        assert r.status == 400 and (await r.json())["code"] == "invalid_argument"
    async with http.post(url, data=b'{"username": 5}', headers={"Content-Type": JSON}) as r:
        assert r.status == 400 and (await r.json())["code"] == "invalid_argument"
    async with http.post(url, data=b"\xff\xff\xff", headers={"Content-Type": PROTO}) as r:
        assert r.status == 400 and (await r.json())["code"] == "invalid_argument"
    async with http.post(url, data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415 and "application/proto" in r.headers["Accept-Post"]
    big = b"\n" + b"\x80\x80\x10" + b"a" * (server.settings.max_frame_bytes + 10)
    async with http.post(url, data=big, headers={"Content-Type": PROTO}) as r:
        assert r.status == 429 and (await r.json())["code"] == "resource_exhausted"
    async with http.post(url, json={}, headers={"Connect-Protocol-Version": "7"}) as r:
        assert r.status == 400
    async with http.post(url, json={}, headers={"Connect-Timeout-Ms": "soon"}) as r:
        assert r.status == 400
    # The gateway still works after all that.
    assert await account(http, server, "dave")


# -- WebSocket ---------------------------------------------------------------------------------


class WsDevice:
    """A browser-like device on the WebSocket: frames in and out, cursors, acks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[spb.ServerFrame] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self.frames.put(spb.ServerFrame.FromString(msg.data))

    async def send(self, frame: spb.ClientFrame) -> None:
        await self.ws.send_bytes(frame.SerializeToString())

    async def next(self, kind: str, timeout: float = 10.0) -> spb.ServerFrame:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await asyncio.wait_for(self.frames.get(), max(0.01, deadline - loop.time()))
            if frame.WhichOneof("payload") == kind:
                return frame

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


Opener = Callable[..., Awaitable[WsDevice]]


@pytest.fixture
async def ws_open(server: EmbeddedServer, http: aiohttp.ClientSession) -> AsyncIterator[Opener]:
    opened: list[WsDevice] = []

    async def open_(token: str, hello: spb.Hello | None = None) -> WsDevice:
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{server.http_port}/ws", protocols=(PROTOCOL, TOKEN_PREFIX + token)
        )
        assert ws.protocol == PROTOCOL
        dev = WsDevice(ws)
        opened.append(dev)
        await dev.send(spb.ClientFrame(hello=hello or spb.Hello()))
        await dev.next("welcome")
        await dev.next("sync_done")
        return dev

    yield open_
    for dev in opened:
        await dev.close()


async def test_websocket_and_grpc_devices_chat_with_receipts(
    server: EmbeddedServer,
    http: aiohttp.ClientSession,
    ws_open: Opener,
    user: UserFactory,
    connect: ConnFactory,
) -> None:
    token = await account(http, server, "alice")
    bob = await user("bob")
    cb = await connect(bob)
    alice = await ws_open(token)
    await alice.send(
        spb.ClientFrame(
            send=spb.Send(client_msg_id="m1", recipient="bob", text="hi from the browser")
        )
    )
    result = (await alice.next("send_result")).send_result
    assert result.client_msg_id == "m1" and result.seq == 1
    [got] = await collect(cb, 1)
    assert got.text == "hi from the browser" and got.sender.username == "alice"
    # Bob's SDK acks automatically: alice sees delivered, then read.
    receipt = (await alice.next("receipt")).receipt
    assert receipt.kind == tpb_types.RECEIPT_KIND_DELIVERED and receipt.seq == 1
    await cb.read(result.thread_id, 1)
    receipt = (await alice.next("receipt")).receipt
    assert receipt.kind == tpb_types.RECEIPT_KIND_READ and receipt.user.username == "bob"
    # And back: bob's message reaches the WebSocket, alice acks it and bob sees delivered.
    await cb.send("hi from grpc", thread_id=result.thread_id)
    message = (await alice.next("message")).message
    assert (message.text, message.seq) == ("hi from grpc", 2)
    await alice.send(
        spb.ClientFrame(ack=spb.Ack(cursors=[tpb_types.Cursor(thread_id=message.thread_id, seq=2)]))
    )

    async def delivered() -> bool:
        rows, _ = await bob.history(result.thread_id)
        return rows[-1].state in (d.MessageState.DELIVERED, d.MessageState.READ)

    await eventually(delivered)
    # Typing crosses transports too.
    await alice.send(
        spb.ClientFrame(typing=spb.TypingRequest(thread_id=result.thread_id, active=True))
    )
    ev = await cb.next_event(5)
    while not isinstance(ev, d.Typing):
        ev = await cb.next_event(5)
    assert ev.active and ev.user.username == "alice"
    await alice.send(spb.ClientFrame(heartbeat=spb.Heartbeat()))
    await alice.next("heartbeat_ack")


async def test_websocket_resumes_from_cursors(
    server: EmbeddedServer,
    http: aiohttp.ClientSession,
    ws_open: Opener,
    user: UserFactory,
    connect: ConnFactory,
) -> None:
    token = await account(http, server, "alice")
    bob = await user("bob")
    cb = await connect(bob)
    first = await cb.send("one", recipient="alice")
    alice = await ws_open(token, spb.Hello(skip_replay=True))
    await alice.close()
    for text in ("two", "three"):
        await cb.send(text, thread_id=first.thread_id)
    # Resume from the cursor: exactly what was missed is replayed before SyncDone.
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{server.http_port}/ws", protocols=(PROTOCOL, TOKEN_PREFIX + token)
    )
    await ws.send_bytes(
        spb.ClientFrame(
            hello=spb.Hello(cursors=[tpb_types.Cursor(thread_id=first.thread_id, seq=1)])
        ).SerializeToString()
    )
    texts: list[str] = []
    async for msg in ws:
        frame = spb.ServerFrame.FromString(msg.data)
        if frame.WhichOneof("payload") == "message":
            texts.append(frame.message.text)
        if frame.WhichOneof("payload") == "sync_done":
            assert frame.sync_done.replayed == 2
            break
    assert texts == ["two", "three"]
    await ws.close()


async def _closed(
    http: aiohttp.ClientSession, server: EmbeddedServer, token: str, *payloads: bytes | str
) -> tuple[int, str]:
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{server.http_port}/ws",
        protocols=(PROTOCOL, TOKEN_PREFIX + token),
        max_msg_size=0,
    )
    for p in payloads:
        if isinstance(p, str):
            await ws.send_str(p)
        else:
            await ws.send_bytes(p)
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            break
    assert ws.close_code is not None
    return ws.close_code, str(msg.extra or "")


async def test_websocket_bad_frames_close_only_that_socket(
    server: EmbeddedServer,
    http: aiohttp.ClientSession,
    ws_open: Opener,
    user: UserFactory,
    connect: ConnFactory,
) -> None:
    token = await account(http, server, "alice")
    bob = await user("bob")
    cb = await connect(bob)
    alice = await ws_open(token)
    # A second device of the same person misbehaves (a device's own reconnect would replace
    # its first socket, so the culprit needs its own token).
    token = await login(http, server, "alice")
    hello = spb.ClientFrame(hello=spb.Hello()).SerializeToString()
    limit = server.settings.max_frame_bytes

    code, reason = await _closed(http, server, "not-a-token", hello)
    assert code == 4016 and "token" in reason
    code, reason = await _closed(http, server, "", hello)
    assert code == 4016
    code, reason = await _closed(http, server, token, b"\xff\xff\xff\xff")
    assert code == 1007 and "MALFORMED_FRAME" in reason
    code, reason = await _closed(http, server, token, hello, b"\x12\x05\x0a\x03\xff\xfe\xfd")
    assert code == 1007
    code, reason = await _closed(http, server, token, "hello as text")
    assert code == 1003 and "BINARY_ONLY" in reason
    code, reason = await _closed(http, server, token, hello, "text later")
    assert code == 1003
    code, reason = await _closed(
        http, server, token, spb.ClientFrame(heartbeat=spb.Heartbeat()).SerializeToString()
    )
    assert code == 1008 and "HELLO_FIRST" in reason
    code, reason = await _closed(http, server, token, hello, b"\x00" * (limit + 1))
    assert code == 1009 and "FRAME_TOO_LARGE" in reason
    # Far past the limit the server stops reading at once: 1009, or a reset (1006) when the
    # close frame is lost behind the unread bytes.
    code, reason = await _closed(http, server, token, hello, b"\x00" * (4 * limit))
    assert code in (1009, 1006)

    # The healthy socket never noticed.
    sent = await cb.send("still there?", recipient="alice")
    message = (await alice.next("message")).message
    assert message.text == "still there?" and message.seq == sent.seq
    await alice.send(
        spb.ClientFrame(send=spb.Send(client_msg_id="x", thread_id=sent.thread_id, text="yes"))
    )
    assert (await alice.next("send_result")).send_result.seq == sent.seq + 1


async def test_a_websocket_that_never_says_hello_is_closed_after_the_hello_timeout(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with EmbeddedServer(settings.replace(hello_timeout_seconds=0.5)) as srv:
        token = await account(http, srv, "alice")
        loop = asyncio.get_running_loop()
        opened = loop.time()
        code, reason = await _closed(http, srv, token)  # opened, authenticated, then silent
        waited = loop.time() - opened
        # A broken handshake rule, like HELLO_FIRST: 1008, with the reason gRPC gives.
        assert code == 1008 and reason.startswith("HELLO_TIMEOUT: ")
        assert 0.5 <= waited < 5
        assert not srv.hub.by_device


async def test_websocket_refuses_oversized_text_but_stays_open(
    server: EmbeddedServer,
    http: aiohttp.ClientSession,
    ws_open: Opener,
    user: UserFactory,
) -> None:
    token = await account(http, server, "alice")
    await user("bob")
    alice = await ws_open(token)
    text = "x" * (server.settings.max_text_bytes + 1)
    await alice.send(
        spb.ClientFrame(send=spb.Send(client_msg_id="big", recipient="bob", text=text))
    )
    error = (await alice.next("error")).error
    assert error.client_msg_id == "big" and error.code == 3
    await alice.send(
        spb.ClientFrame(send=spb.Send(client_msg_id="ok", recipient="bob", text="fine"))
    )
    assert (await alice.next("send_result")).send_result.client_msg_id == "ok"


async def test_logout_closes_the_websocket_with_unauthenticated(
    server: EmbeddedServer,
    http: aiohttp.ClientSession,
) -> None:
    token = await account(http, server, "alice")
    ws = await http.ws_connect(
        f"ws://127.0.0.1:{server.http_port}/ws", protocols=(PROTOCOL, TOKEN_PREFIX + token)
    )
    await ws.send_bytes(spb.ClientFrame(hello=spb.Hello()).SerializeToString())
    status, _ = await call_json(http, server, "AccountService/Logout", {}, token)
    assert status == 200
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert ws.close_code == 4016


# -- static app and headers --------------------------------------------------------------------


async def test_placeholder_and_security_headers(
    server: EmbeddedServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with http.get(f"{base(server)}/") as r:
        assert r.status == 200
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(f"{base(server)}/healthz") as r:
        assert (await r.json())["status"] == "serving"


async def test_serves_a_built_app_from_web_dir(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>app</title>")
    (dist / "assets" / "app-1234.js").write_text("console.log(1)")
    (dist / "manifest.webmanifest").write_text("{}")
    (dist / "sw.js").write_text("self.addEventListener('fetch', () => {})")
    settings: Settings = conftest.test_settings(tmp_path / "data", web_dir=dist)
    async with EmbeddedServer(settings) as srv:
        url = f"http://127.0.0.1:{srv.http_port}"
        async with http.get(url + "/") as r:
            assert "<title>app</title>" in await r.text()
            assert r.headers["Cache-Control"] == "no-cache"
            assert "Content-Security-Policy" in r.headers
        async with http.get(url + "/assets/app-1234.js") as r:
            assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
        async with http.get(url + "/manifest.webmanifest") as r:
            assert r.content_type == "application/manifest+json"
        async with http.get(url + "/sw.js") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
        for missing in ("/nope.js", "/assets/..%2F..%2Fetc%2Fpasswd", "/.hidden"):
            async with http.get(url + missing) as r:
                assert r.status == 404, missing
