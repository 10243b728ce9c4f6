"""Real `natter` processes for fault tests, and a raw wire-level stream for protocol tests.

`NatterServer` runs `natter serve` as a child process on free 127.0.0.1 ports over a data
folder; it can be SIGKILLed and started again on the same ports and data::

    async with natter_server(tmp_path / "data") as srv:
        client = Client(srv.grpc_address)
        ...
        srv.kill()               # kill -9: no shutdown, no flush beyond what was committed
        await srv.start()        # same ports, same data; returns once health says SERVING

`run_cli` / `start_cli` run the `natter` command line with `NATTER_HOME` in a temporary folder.
`RawStream` speaks SocketService.Connect frame by frame, for tests that need to misbehave.
Synchronisation is by polling for conditions with deadlines, never by sleeping for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.ports import free_port
from devtools.processes import log_tail
from devtools.serving import natter_command
from natter import tls
from natter.sdk import Client
from natter.sdk.client import open_channel
from natter.v1 import socket_service_pb2 as spb
from natter.v1 import socket_service_pb2_grpc as spb_grpc
from natter.v1 import types_pb2 as tpb

START_TIMEOUT = 30.0
_POLL = 0.05

# Cheap password hashing and quick ack flushes: these processes are for tests only.
TEST_ENV = {
    "NATTER_ARGON2_MEMORY_KIB": "1024",
    "NATTER_ARGON2_TIME_COST": "1",
    "NATTER_ACK_FLUSH_SECONDS": "0.05",
    "NATTER_LOG_LEVEL": "WARNING",
    "NATTER_LOGINS_PER_IP_PER_MINUTE": "0",
    "NATTER_REGISTRATIONS_PER_IP_PER_HOUR": "0",
    "NATTER_REGISTRATIONS_PER_HOUR": "0",
    "NATTER_MAX_DEVICES_PER_USER": "1000",
    "NATTER_MAX_PENDING_STREAMS_PER_ADDRESS": "0",
    "NATTER_CANARY_INTERVAL_SECONDS": "0",
}


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATTER_")}
    env.update(TEST_ENV)
    env.update(extra or {})
    return env


class NatterServer:
    """`natter serve` (embedded) in a child process; kill -9 and restart on the same ports."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.env = _child_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and return once its gRPC health check answers SERVING."""
        assert not self.running, "already running"
        self._spawn()
        await self.wait_serving(timeout)

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *natter_command(),
            "serve",
            "--data",
            str(self.data_dir),
            "--grpc",
            self.grpc_address,
            "--http",
            f"127.0.0.1:{self.http_port}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.starts += 1

    async def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cert = self.env.get("NATTER_TLS_CERT_FILE")  # a self-signed test certificate
        creds = tls.channel_credentials(cert) if cert else None
        async with open_channel(self.grpc_address, creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.running:
                    raise RuntimeError(f"natter serve exited early:\n{self.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    res = await stub.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                    if res.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if loop.time() > deadline:
                    raise TimeoutError(
                        f"natter serve not healthy in {timeout} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(_POLL)

    def kill(self) -> None:
        """kill -9 and reap: no graceful shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the process answers nothing more (until killed), its sockets stay open."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        self.proc.send_signal(signal.SIGSTOP)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (a clean stop) and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    async def restart(self) -> None:
        self.kill()
        await self.start()


@contextlib.asynccontextmanager
async def natter_server(
    data_dir: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[NatterServer]:
    srv = NatterServer(data_dir, env)
    await srv.start()
    try:
        yield srv
    finally:
        srv.kill()


@contextlib.asynccontextmanager
async def refusing_listener(port: int) -> AsyncIterator[list[int]]:
    """Holds `port` while the server is down: accepts and drops each connection, counting them.

    A test waits until the count grows to know a client is retrying, without sleeping.
    """
    attempts = [0]

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts[0] += 1
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(drop, "127.0.0.1", port, reuse_address=True)
    try:
        yield attempts
    finally:
        server.close()
        await server.wait_closed()


# -- the command line ----------------------------------------------------------------------


@dataclass
class Cli:
    """The `natter` command line with its own NATTER_HOME (profiles live there)."""

    home: Path
    server: str
    password: str
    # More environment, such as NATTER_NEW_PASSWORD for `natter password`.
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return _child_env(
            {"NATTER_HOME": str(self.home), "NATTER_PASSWORD": self.password, **self.extra}
        )

    def args(self, profile: str, argv: Sequence[str]) -> list[str]:
        return [*natter_command(), "--server", self.server, "--profile", profile, *argv]

    def start(self, profile: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(profile, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    async def run(
        self, profile: str, *argv: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = await asyncio.create_subprocess_exec(
            *self.args(profile, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        done = subprocess.CompletedProcess(
            list(argv), proc.returncode or 0, out.decode(), err.decode()
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"natter {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    async def json(self, profile: str, *argv: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        done = await self.run(profile, "--json", *argv, timeout=timeout)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


async def wait_exit(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """Wait for a child without blocking the event loop; its output pipes are drained after."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.poll() is None:
        if loop.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"process did not exit within {timeout} s: {out} {err}")
        await asyncio.sleep(_POLL)
    out, err = proc.communicate()
    return proc.returncode, out, err


# -- a raw stream --------------------------------------------------------------------------


class RawStream:
    """SocketService.Connect without the SDK: write any frame, read frames one at a time."""

    def __init__(self, client: Client, address: str = "") -> None:
        # With an address (a socket server found by Locate), the stream has its own channel.
        self._own = open_channel(address, client.credentials) if address else None
        stub = spb_grpc.SocketServiceStub(self._own or client.channel)
        self.call = stub.Connect(metadata=client.metadata())
        self.frames: list[spb.ServerFrame] = []

    async def hello(
        self, cursors: Mapping[int, int] | None = None, skip_replay: bool = False
    ) -> spb.SyncDone:
        cs = [tpb.Cursor(thread_id=t, seq=s) for t, s in (cursors or {}).items()]
        await self.call.write(spb.ClientFrame(hello=spb.Hello(cursors=cs, skip_replay=skip_replay)))
        done = await self.until("sync_done")
        return done.sync_done

    async def write(self, frame: spb.ClientFrame) -> None:
        await self.call.write(frame)

    async def read(self, timeout: float = 10.0) -> spb.ServerFrame:
        frame = await asyncio.wait_for(self.call.read(), timeout)
        if frame is grpc.aio.EOF:
            raise EOFError("stream ended")
        assert isinstance(frame, spb.ServerFrame)
        self.frames.append(frame)
        return frame

    async def until(self, which: str, timeout: float = 10.0) -> spb.ServerFrame:
        """Read until a frame of this kind arrives (earlier frames are kept in `frames`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.read(max(0.01, deadline - loop.time()))
            if frame.WhichOneof("payload") == which:
                return frame

    def of(self, which: str) -> list[spb.ServerFrame]:
        return [f for f in self.frames if f.WhichOneof("payload") == which]

    async def status(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Read to the end of the stream; the final status code."""
        with contextlib.suppress(grpc.aio.AioRpcError, EOFError):
            while True:
                await self.read(timeout)
        return await self.call.code()

    def cancel(self) -> None:
        self.call.cancel()

    async def close(self) -> None:
        self.call.cancel()
        if self._own is not None:
            await self._own.close()
