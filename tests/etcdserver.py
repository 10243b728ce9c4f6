"""A real etcd for tests: free loopback ports, a temporary data dir, kill -9 and restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import aiohttp

ETCD_CANDIDATES = ("/usr/bin/etcd", "/usr/local/bin/etcd")


def etcd_binary() -> str | None:
    """Return the etcd executable (`apt-get install -y etcd-server` provides it), or None."""
    found = shutil.which("etcd")
    if found:
        return found
    for path in ETCD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    pred: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> float:
    """Poll `pred` until it is true; return the seconds it took, fail after `timeout`."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = pred()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {message or pred}")
        await asyncio.sleep(interval)


class EtcdServer:
    """One single-member etcd on 127.0.0.1, owned by the test.

    Use as `async with EtcdServer() as etcd:`; `etcd.endpoint` is `host:port` for
    clients. `kill()` sends SIGKILL; `restart()` starts it again on the same ports and
    data dir (or an empty one with `wipe=True`); `stop()` ends it and removes the dir.
    """

    def __init__(self, binary: str | None = None, startup_timeout: float = 20.0) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise RuntimeError("etcd not found; install it with: apt-get install -y etcd-server")
        self.binary = found
        self.startup_timeout = startup_timeout
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="natter-etcd-"))
        self.data_dir = self._tmp / "data"
        self.log_path = self._tmp / "etcd.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _args(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name", "default",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            # One member: a short election timeout only shortens start-up (about 1 s with
            # the default 1000 ms) and cannot cause elections, as there is no peer.
            "--heartbeat-interval", "25",
            "--election-timeout", "250",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    async def start(self) -> None:
        """Start etcd and wait until /health says it serves; raise with its log if not."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self._args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            await self._wait_healthy()
        except BaseException:
            await self.kill()
            raise

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self.running:
                    raise RuntimeError(f"etcd exited at startup:\n{self.log_tail()}")
                try:
                    async with session.get(f"{self.client_url}/health") as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200 and body.get("health") == "true":
                            return
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"etcd not healthy after {self.startup_timeout} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL etcd (no clean shutdown) and wait for it to be gone."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def restart(self, *, wipe: bool = False) -> None:
        """Kill -9 if running, then start again on the same ports (`wipe`: empty data)."""
        await self.kill()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        await self.start()

    async def stop(self) -> None:
        """End etcd and remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> EtcdServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.stop()
