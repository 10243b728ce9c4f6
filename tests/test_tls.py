"""TLS on the public listeners: gRPC for the SDK and CLI, HTTPS and WSS for the web app."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from app.embedded import EmbeddedServer
from natter import tls
from natter.errors import Unavailable
from natter.sdk import Client, Connection
from natter.v1 import socket_service_pb2 as spb
from tests.conftest import PASSWORD
from tests.conftest import test_settings as make_settings
from tests.helpers import collect
from tests.procs import Cli, natter_server


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (it is its own CA)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate", pytrace=False)
    folder = tmp_path_factory.mktemp("tls")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.fixture
async def secure(tmp_path: Path, cert: tuple[Path, Path]) -> AsyncIterator[EmbeddedServer]:
    crt, key = cert
    settings = make_settings(tmp_path / "data", tls_cert_file=str(crt), tls_key_file=str(key))
    async with EmbeddedServer(settings) as srv:
        yield srv


async def test_sdk_chats_over_tls_and_plaintext_is_refused(
    secure: EmbeddedServer, cert: tuple[Path, Path]
) -> None:
    creds = tls.channel_credentials(str(cert[0]))
    alice = Client(secure.grpc_address, credentials=creds)
    bob = Client(secure.grpc_address, credentials=creds)
    plain = Client(secure.grpc_address, timeout=2.0)
    try:
        for c, name in ((alice, "alice"), (bob, "bob")):
            await c.register(name, PASSWORD)
            await c.login(name, PASSWORD, "laptop")
        ca, cb = Connection(alice), Connection(bob)
        await ca.start()
        await cb.start()
        await ca.send("over tls", recipient="bob")
        [got] = await collect(cb, 1)
        assert got.text == "over tls"
        await ca.close()
        await cb.close()
        with pytest.raises(Unavailable):
            await plain.register("mallory", PASSWORD)
    finally:
        for c in (alice, bob, plain):
            await c.close()


async def test_web_app_gateway_and_websocket_over_https(
    secure: EmbeddedServer, cert: tuple[Path, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(cert[0]))
    base = f"https://127.0.0.1:{secure.http_port}"
    headers = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz", ssl=context) as r:
            assert r.status == 200
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
        async with http.post(
            f"{base}/natter.v1.AccountService/Register",
            ssl=context,
            json={"username": "carol", "password": PASSWORD},
            headers=headers,
        ) as r:
            assert r.status == 200, await r.text()
        async with http.post(
            f"{base}/natter.v1.AccountService/Login",
            ssl=context,
            json={"username": "carol", "password": PASSWORD, "deviceName": "web"},
            headers=headers,
        ) as r:
            token = (await r.json())["token"]
        async with http.ws_connect(
            f"wss://127.0.0.1:{secure.http_port}/ws",
            ssl=context,
            protocols=("natter.v1", f"natter.bearer.{token}"),
        ) as ws:
            await ws.send_bytes(spb.ClientFrame(hello=spb.Hello()).SerializeToString())
            first = spb.ServerFrame.FromString(await ws.receive_bytes(timeout=10))
            assert first.welcome.user.username == "carol"
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{secure.http_port}/healthz") as r:
                await r.read()


async def test_cli_remembers_tls_from_login(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    crt, key = cert
    env = {"NATTER_TLS_CERT_FILE": str(crt), "NATTER_TLS_KEY_FILE": str(key)}
    async with natter_server(tmp_path / "data", env) as srv:
        cli = Cli(tmp_path / "home", srv.grpc_address, PASSWORD)
        await cli.run("a", "--ca", str(crt), "register", "alice")
        await cli.run("a", "--ca", str(crt), "login", "alice")
        [sent] = await cli.json("a", "send", "alice", "a note to self")  # no --ca: remembered
        assert sent["type"] == "sent"
        refused = await cli.run("b", "register", "bob", check=False, timeout=60)
        assert refused.returncode != 0
