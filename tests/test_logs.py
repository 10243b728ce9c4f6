"""Logs: JSON lines with request ids, level and format settable, never a message's text,
a password or a token — checked on the log of a real server run at DEBUG."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from natter.errors import Unauthenticated
from natter.sdk import Client, Connection
from natter.v1 import socket_service_pb2 as spb
from socket_svc.websocket import PROTOCOL, TOKEN_PREFIX
from tests.conftest import PASSWORD
from tests.helpers import collect
from tests.procs import natter_server


async def _chat_everywhere(grpc_address: str, http_port: int, text: str) -> list[str]:
    """Register, log in, send and read over gRPC, the gateway and the WebSocket; the tokens."""
    base = f"http://127.0.0.1:{http_port}"
    alice, bob = Client(grpc_address), Client(grpc_address)
    await alice.register("alice", PASSWORD)
    await bob.register("bob", PASSWORD)
    await alice.login("alice", PASSWORD)
    await bob.login("bob", PASSWORD)
    ca, cb = await Connection(alice).start(), await Connection(bob).start()
    sent = await ca.send(text + " over grpc", recipient="bob")
    await collect(cb, 1)
    bad = Client(grpc_address, token="not-a-real-token-" + text)
    with pytest.raises(Unauthenticated):
        await bad.devices()
    await bad.close()
    tokens = [alice.token, bob.token]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/natter.v1.AccountService/Login",
            json={"username": "bob", "password": PASSWORD, "deviceName": "web"},
        ) as res:
            assert res.status == 200
            web_token = (await res.json())["token"]
        tokens.append(web_token)
        async with http.post(
            f"{base}/natter.v1.ThreadService/ListMessages",
            json={"threadId": str(sent.thread_id)},
            headers={"Authorization": f"Bearer {web_token}"},
        ) as res:
            assert text in await res.text()  # the text went out, and only to the client
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{http_port}/ws", protocols=(PROTOCOL, TOKEN_PREFIX + web_token)
        )
        await ws.send_bytes(spb.ClientFrame(hello=spb.Hello()).SerializeToString())
        frame = spb.ClientFrame(
            send=spb.Send(client_msg_id="w1", recipient="alice", text=text + " over ws")
        )
        await ws.send_bytes(frame.SerializeToString())
        while True:
            got = spb.ServerFrame.FromString((await ws.receive(timeout=10)).data)
            if got.WhichOneof("payload") == "send_result":
                break
        await ws.close()
    await collect(ca, 1)
    for conn in (ca, cb):
        await conn.close()
    for c in (alice, bob):
        await c.close()
    return tokens


async def test_a_debug_log_is_json_lines_with_request_ids_and_no_text_or_tokens(
    tmp_path: Path,
) -> None:
    text = f"my-private-words-{uuid.uuid4().hex}"
    env = {"NATTER_LOG_LEVEL": "DEBUG", "NATTER_LOG_FORMAT": "json"}
    async with natter_server(tmp_path / "data", env) as srv:
        tokens = await _chat_everywhere(srv.grpc_address, srv.http_port, text)
        assert srv.terminate() == 0
    raw = srv.log_path.read_text()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert len(lines) > 20
    assert all({"time", "level", "logger", "message", "role"} <= set(r) for r in lines)
    calls = [r for r in lines if r["message"].startswith("call /natter.v1.")]
    assert calls and all(len(r["request_id"]) == 12 for r in calls)
    assert len({r["request_id"] for r in calls}) == len(calls)  # one id per call
    assert any("AccountService/Login" in r["message"] for r in calls)
    for secret in (text, PASSWORD, *tokens, "not-a-real-token"):
        assert secret not in raw, secret


async def test_the_log_format_and_level_are_settings(tmp_path: Path) -> None:
    env = {"NATTER_LOG_LEVEL": "WARNING", "NATTER_LOG_FORMAT": "text"}
    async with natter_server(tmp_path / "data", env) as srv:
        async with Client(srv.grpc_address) as c:
            await c.register("alice", PASSWORD)
        assert srv.terminate() == 0
    quiet = srv.log_path.read_text()
    assert "call /natter" not in quiet  # nothing below WARNING
    env = {"NATTER_LOG_LEVEL": "INFO", "NATTER_LOG_FORMAT": "text"}
    async with natter_server(tmp_path / "data2", env) as srv:
        assert srv.terminate() == 0
    lines = srv.log_path.read_text().splitlines()
    serving = [line for line in lines if "serving gRPC on" in line]
    assert serving and " INFO app.embedded [-]: " in serving[0]
    assert not serving[0].startswith("{")
