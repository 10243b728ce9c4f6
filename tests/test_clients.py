"""The client SDKs and tools beyond Python: the Kotlin SDK's JUnit tests (Maven), the TypeScript
SDK's vitest tests under Node, and the README's grpcurl lines against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.embedded import EmbeddedServer
from natter import domain as d
from natter.sdk import Client, Connection
from tests import conftest
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
KOTLIN = ROOT / "clients" / "kotlin"
TS = ROOT / "clients" / "ts"
GRPCURL = ROOT / ".cache" / "go" / "bin" / "grpcurl"


def _run(cmd: list[str], cwd: Path, what: str, timeout: float) -> str:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish in {timeout:.0f} s:\n{e.stdout!r}", pytrace=False)
    out = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{out[-8000:]}", pytrace=False)
    return out


@pytest.mark.timeout(900)
def test_kotlin_sdk_junit_against_a_real_server() -> None:
    """`scripts/kotlin verify`: generate from proto/, compile, check Android API 24, run JUnit."""
    if shutil.which("java") is None:
        pytest.fail("no JDK: scripts/install --all installs one", pytrace=False)
    out = _run([str(ROOT / "scripts" / "kotlin"), "verify"], ROOT, "the Kotlin SDK build", 880)
    summary = re.findall(
        r"Tests run: (\d+), Failures: (\d+), Errors: (\d+), Skipped: (\d+)\s*$", out, re.M
    )
    assert summary, out[-3000:]
    run, failures, errors, _ = map(int, summary[-1])
    assert run >= 10 and failures == 0 and errors == 0, out[-3000:]
    assert "animal-sniffer" in out  # the Android API check ran


@pytest.mark.timeout(400)
def test_typescript_sdk_vitest_against_a_real_server() -> None:
    """clients/ts: vitest under Node, scenarios over native gRPC to a real `natter serve`."""
    vitest = TS / "node_modules" / ".bin" / "vitest"
    if not vitest.exists():
        pytest.fail("clients/ts/node_modules is missing: run scripts/install --all", pytrace=False)
    out = re.sub(r"\x1b\[[0-9;]*m", "", _run([str(vitest), "run"], TS, "vitest in clients/ts", 380))
    found = re.search(r"Tests\s+(\d+) passed", out)
    assert found and int(found.group(1)) >= 10, out[-3000:]
    assert "failed" not in out.split("Test Files")[-1], out[-3000:]


def _readme_grpcurl_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### grpcurl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's grpcurl section has no sh block"
    return block.group(1)


@pytest.mark.timeout(120)
async def test_the_readmes_grpcurl_lines_work(tmp_path: Path) -> None:
    """Every grpcurl line of the README's Clients section, against a real embedded server."""
    if not GRPCURL.exists():
        pytest.fail("no grpcurl in .cache/go/bin: run scripts/install --all", pytrace=False)
    lines = _readme_grpcurl_block()
    assert lines.count("grpcurl ") >= 5
    async with EmbeddedServer(conftest.test_settings(tmp_path / "data")) as server:
        address = server.grpc_address
        for name in ("alice", "bob"):
            async with Client(address) as c:
                await c.register(name, PASSWORD)
        script = "set -euo pipefail\n" + lines.replace("127.0.0.1:7070", address)
        env = {**os.environ, "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}"}
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out_b, _ = await asyncio.wait_for(proc.communicate(), 90)
        out = out_b.decode()
        assert proc.returncode == 0, out
        assert "natter.v1.SocketService" in out  # reflection lists the services
        assert '"status": "SERVING"' in out  # the health check
        assert '"sync_done"' in out  # the stream: Welcome, replay, SyncDone
        assert '"send_result"' in out
        # The message the README sends over the stream is stored and reaches bob.
        async with Client(address) as bob:
            await bob.login("bob", PASSWORD)
            async with Connection(bob) as conn:
                ev = await conn.next_event(10)
                while not isinstance(ev, d.Message):
                    ev = await conn.next_event(10)
                assert ev.text == "hi from grpcurl"


def _fenced(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(after, 1)[1]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, re.S)
    assert blocks, f"README has no {lang} block after {after!r}"
    block: str = blocks[-1] if lang == "kotlin" else blocks[0]
    return block


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def test_the_readmes_kotlin_example_is_the_one_the_tests_run() -> None:
    block = _fenced("kotlin", "### Kotlin (Android)")
    body = block.split("runBlocking {", 1)[1].rsplit("}", 1)[0]
    expected = _lines(body.replace('"127.0.0.1:7070"', "address"))
    tested = _lines((KOTLIN / "src/test/kotlin/dev/natter/client/ReadmeTest.kt").read_text())
    start = tested.index(expected[0])
    assert tested[start : start + len(expected)] == expected


def test_the_readmes_typescript_example_is_the_one_the_tests_run() -> None:
    block = _fenced("ts", "### TypeScript (browser, React Native, Node)")
    body = block.split("\n\n", 1)[1]  # after the import
    expected = _lines(body.replace('"127.0.0.1:7070"', "address"))
    tested = _lines((TS / "test/readme.test.ts").read_text())
    start = tested.index(expected[0])
    assert tested[start : start + len(expected)] == expected
