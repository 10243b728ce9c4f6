"""The ceiling: bare grpc.aio bidirectional echo of 64-byte messages, client and server apart."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import grpc

from bench.common import SPAWN, append_result, cpu_seconds, fmt, print_table

PAYLOAD = bytes(range(64))
SERVICE = "bench.Echo"
WARMUP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class EchoResult:
    streams: int
    inflight: int
    seconds: float
    round_trips: int
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.round_trips / self.seconds

    @property
    def shape(self) -> str:
        return f"{self.streams}x{self.inflight}"


@dataclass(frozen=True, slots=True)
class PushResult:
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


# -- server process ---------------------------------------------------------------------------


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message


async def _push(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(int.from_bytes(request, "big")):
        yield PAYLOAD


async def _serve(pipe: Pipe) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.stream_stream_rpc_method_handler(_echo),
            "Push": grpc.unary_stream_rpc_method_handler(_push),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pipe.send(port)
    await asyncio.to_thread(pipe.recv)  # any message means stop
    await server.stop(0)


def _server_main(pipe: Pipe) -> None:
    asyncio.run(_serve(pipe))


# -- client process ---------------------------------------------------------------------------


async def _run_echo(address: str, streams: int, inflight: int, seconds: float) -> EchoResult:
    channel = grpc.aio.insecure_channel(address)
    await channel.channel_ready()
    count = 0
    stopping = False

    async def stream() -> None:
        nonlocal count
        call: Any = channel.stream_stream(f"/{SERVICE}/Echo")()
        credit = asyncio.Semaphore(inflight)

        # Reader and writer apart: a write completes only when gRPC has taken it, so one
        # coroutine doing read-then-write would serialise the stream and understate the ceiling.
        async def writer() -> None:
            while not stopping:
                await credit.acquire()
                if stopping:
                    break
                await call.write(PAYLOAD)
            await call.done_writing()

        writing = asyncio.create_task(writer())
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            count += 1
            credit.release()
        await writing

    tasks = [asyncio.create_task(stream()) for _ in range(streams)]
    await asyncio.sleep(WARMUP_SECONDS)
    c0, cpu0, t0 = count, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    c1, cpu1, t1 = count, time.process_time(), time.perf_counter()
    stopping = True
    await asyncio.gather(*tasks)
    await channel.close()
    return EchoResult(streams, inflight, t1 - t0, c1 - c0, 0.0, cpu1 - cpu0)


async def _run_push(address: str, count: int) -> PushResult:
    channel = grpc.aio.insecure_channel(address)
    await channel.channel_ready()
    await _drain_push(channel, 100)  # warm up the connection and the handler
    t0 = time.perf_counter()
    got = await _drain_push(channel, count)
    elapsed = time.perf_counter() - t0
    await channel.close()
    assert got == count, (got, count)
    return PushResult(count, elapsed)


async def _drain_push(channel: grpc.aio.Channel, count: int) -> int:
    method: Any = channel.unary_stream(f"/{SERVICE}/Push")
    call = method(count.to_bytes(8, "big"))
    got = 0
    async for _ in call:
        got += 1
    return got


def _client_main(pipe: Pipe, address: str, job: tuple[str, int, int, float]) -> None:
    kind, a, b, seconds = job
    if kind == "echo":
        pipe.send(asyncio.run(_run_echo(address, a, b, seconds)))
    else:
        pipe.send(asyncio.run(_run_push(address, a)))


# -- orchestration (no gRPC in this process) --------------------------------------------------


class EchoServer:
    """The bare grpc.aio server in a process of its own (`address`, `pid`), until `close()`."""

    def __init__(self) -> None:
        self.pipe, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_server_main, args=(child,), daemon=True)
        self.proc.start()
        if not self.pipe.poll(30):
            raise RuntimeError("echo server did not start")
        self.address = f"127.0.0.1:{self.pipe.recv()}"
        assert self.proc.pid is not None
        self.pid: int = self.proc.pid

    def run(self, job: tuple[str, int, int, float]) -> Any:
        pipe, child = SPAWN.Pipe()
        proc = SPAWN.Process(target=_client_main, args=(child, self.address, job), daemon=True)
        proc.start()
        pid = self.proc.pid
        assert pid is not None
        cpu0 = cpu_seconds(pid)
        result = pipe.recv()
        server_cpu = cpu_seconds(pid) - cpu0
        proc.join(10)
        if isinstance(result, EchoResult):
            # Server CPU spans the whole client run (warm-up and drain too): an upper bound.
            return EchoResult(
                result.streams,
                result.inflight,
                result.seconds,
                result.round_trips,
                server_cpu,
                result.client_cpu,
            )
        return result

    def close(self) -> None:
        self.pipe.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def measure(shapes: Sequence[tuple[int, int]], seconds: float) -> list[EchoResult]:
    """Round trips/s for each (streams, in flight) shape, one client process per shape."""
    server = EchoServer()
    try:
        return [server.run(("echo", s, k, seconds)) for s, k in shapes]
    finally:
        server.close()


def measure_push(count: int) -> PushResult:
    """Time for the server to stream `count` 64-byte messages to one client (sync's ceiling)."""
    server = EchoServer()
    try:
        result: PushResult = server.run(("push", count, 0, 0.0))
        return result
    finally:
        server.close()


def echo_rows(results: Sequence[EchoResult]) -> list[tuple[str, str]]:
    return [
        (
            f"echo {r.shape} (streams x in flight)",
            f"{fmt(r.rate)} round trips/s  (client CPU {r.client_cpu / r.seconds:.0%}, "
            f"server CPU {r.server_cpu / (r.seconds + WARMUP_SECONDS):.0%})",
        )
        for r in results
    ]


def parse_shape(text: str) -> tuple[int, int]:
    streams, _, inflight = text.partition("x")
    return int(streams), int(inflight or 1)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per shape")
    p.add_argument(
        "--shape",
        action="append",
        type=parse_shape,
        metavar="SxK",
        help="S streams x K in flight (repeatable; default 1x1 and 8x8)",
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    shapes: list[tuple[int, int]] = args.shape or [(1, 1), (8, 8)]
    results = measure(shapes, args.seconds)
    print_table("bare grpc.aio echo, 64-byte messages, separate processes", echo_rows(results))
    if not args.no_record:
        append_result(
            "echo",
            f"{args.seconds:g} s per shape",
            "; ".join(f"{r.shape}: {fmt(r.rate)} rt/s" for r in results),
            "(is the ceiling)",
            "1",
        )


if __name__ == "__main__":
    main()
