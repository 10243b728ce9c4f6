"""The web app: its unit tests (vitest) and browser scenarios (Playwright, Debian's chromium)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from devtools.pushservice import PushService
from natter import domain as d
from natter.sdk import Client, Connection
from tests import conftest
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DIST = WEB / "dist"
SOURCES = (
    "src",
    "public",
    "sw",
    "e2e",
    "index.html",
    "vite.config.ts",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
)
SDK = ROOT / "clients" / "ts"


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return path


def chromium() -> str:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(path).exists():
        pytest.fail(
            f"no Chromium at {path}: install Debian's chromium (scripts/install --all, "
            "or apt-get install chromium), or set CHROMIUM",
            pytrace=False,
        )
    return path


def _newest(paths: list[Path]) -> float:
    newest = 0.0
    for p in paths:
        if p.is_file():
            newest = max(newest, p.stat().st_mtime)
        elif p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    newest = max(newest, f.stat().st_mtime)
    return newest


def _run(cmd: list[str], what: str, timeout: float = 300) -> None:
    done = subprocess.run(
        cmd, cwd=WEB, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def npm_ready() -> None:
    _tool("node", "install Node.js 20+ to build and test the web app")
    npm = _tool("npm", "install npm with Node.js")
    lock = WEB / "package-lock.json"
    stamp = WEB / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], "npm ci")


@pytest.fixture(scope="session")
def built_app(npm_ready: None) -> Path:
    """web/dist, rebuilt when any source is newer than the last build."""
    index = DIST / "index.html"
    sources = [WEB / s for s in SOURCES] + [SDK / "src", SDK / "package.json"]
    if not index.exists() or _newest(sources) > index.stat().st_mtime:
        _run([_tool("npm", "install npm"), "run", "build"], "npm run build")
    assert index.exists()
    return DIST


@pytest.mark.timeout(180)
def test_client_unit_tests(npm_ready: None) -> None:
    _run([str(WEB / "node_modules" / ".bin" / "vitest"), "run"], "vitest", timeout=170)


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "scenario",
    [
        "chat",
        "offline",
        "group",
        "mobile",
        "expired",
        "settings",
        "report",
        "typing",
        "logins",
        "rich",
        "profile",
        "blocked",
    ],
)
async def test_browser(scenario: str, built_app: Path, tmp_path: Path) -> None:
    """One scenario of web/e2e/run.mjs against a real embedded server serving the built app."""
    browser = chromium()
    node = _tool("node", "install Node.js")
    shots = (
        ROOT / "docs" / "screenshots"
        if os.environ.get("NATTER_UPDATE_SCREENSHOTS")
        else tmp_path / "screenshots"
    )
    settings = conftest.test_settings(tmp_path / "data", web_dir=built_app)
    async with EmbeddedServer(settings) as server:
        env = {
            **os.environ,
            "NATTER_URL": f"http://127.0.0.1:{server.http_port}",
            "NATTER_SCREENSHOTS": str(shots),
            "CHROMIUM": browser,
        }
        proc = await asyncio.create_subprocess_exec(
            node,
            "e2e/run.mjs",
            scenario,
            cwd=WEB,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 170)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"browser scenario {scenario} did not finish in 170 s")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    if scenario == "mobile":
        assert {p.name for p in shots.glob("*.png")} >= {
            "mobile-chat.png",
            "mobile-chats.png",
            "mobile-offline.png",
        }


@pytest.mark.timeout(200)
async def test_browser_push(built_app: Path, tmp_path: Path) -> None:
    """What natter really pushed, delivered to the app's service worker in Chromium (CDP).

    The server encrypts to a subscription made here with a browser's keys; the loopback
    push service decrypts it; the payloads go to `e2e/run.mjs push`, which delivers them with
    ServiceWorker.deliverPushMessage and checks the notification and the tap.
    """
    browser = chromium()
    node = _tool("node", "install Node.js")
    async with PushService() as ps:
        settings = conftest.test_settings(
            tmp_path / "data",
            web_dir=built_app,
            push_grace_seconds=0.3,
            push_poll_seconds=0.05,
            push_allow_http=True,
            web_push_hosts=("127.0.0.1",),
        )
        async with EmbeddedServer(settings) as server:
            alice = Client(server.grpc_address)
            bob = Client(server.grpc_address)
            await alice.register("alice", conftest.PASSWORD, "Alice")
            await bob.register("bob", conftest.PASSWORD, "Bob")
            await alice.login("alice", conftest.PASSWORD)
            await bob.login("bob", conftest.PASSWORD, "phone")
            sub = ps.subscribe((await bob.push_config()).vapid_public_key)
            await bob.set_web_push(sub.endpoint, sub.p256dh, sub.auth)
            async with Connection(alice) as conn:
                await conn.send("hello from the push test", recipient="bob")
                await eventually(lambda: len(ps.of(sub)) == 1, timeout=15)
                await bob.update_settings(notification_preview=d.NotificationPreview.HIDDEN)
                await conn.send("not shown", recipient="bob")
                await eventually(lambda: len(ps.of(sub)) == 2, timeout=15)
            assert ps.problems == []
            payloads = [r.payload for r in ps.of(sub)]
            env = {
                **os.environ,
                "NATTER_URL": f"http://127.0.0.1:{server.http_port}",
                "NATTER_SCREENSHOTS": str(tmp_path / "screenshots"),
                "CHROMIUM": browser,
                "NATTER_PUSH_PAYLOADS": json.dumps(payloads),
                "NATTER_PUSH_USER": "bob",
            }
            proc = await asyncio.create_subprocess_exec(
                node,
                "e2e/run.mjs",
                "push",
                cwd=WEB,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 170)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                pytest.fail("browser push scenario did not finish in 170 s")
            for c in (alice, bob):
                await c.close()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "ok push" in text


@pytest.mark.timeout(240)
async def test_browser_bench_small(built_app: Path) -> None:
    """bench.web runs end to end, small: figures come out and the list holds a window, not all."""
    from bench import web

    chromium()
    result = await web.measure(
        argparse.Namespace(messages=200, sends=3, keys=5, rates="1,4", no_record=True)
    )
    assert result["loaded"] == 200
    assert [r["rate"] for r in result["runs"]] == [1, 4]
    for r in result["runs"]:
        assert r["enter"]["n"] == 3 and r["key"]["n"] == 5
        assert r["enter"]["p95"] > 0 and r["key"]["p95"] > 0
        # 200 messages plus those sent, but only the window is rendered (the list's other items
        # are its date separators and the unread divider).
        assert r["dom"]["messages"] == 120, r["dom"]
