"""Where the server's CPU goes: py-spy samples of every thread, summed by function and by layer."""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Layers a sample is charged to: the first layer with a pattern anywhere in its stack. Without
# --native the C code is charged to the Python frame that called it: SQLite (statements,
# triggers, fsync) to SQLAlchemy's do_execute/do_commit, the gRPC core and protobuf
# serialisation of a frame to the transport's send and receive.
LAYERS: Sequence[tuple[str, Sequence[str]]] = (
    (
        "SQLite engine (C: statements, triggers, fsync)",
        ("do_commit", "do_execute", "(sqlite3", "aiosqlite/"),
    ),
    ("gRPC stream read/write (C core, frame encode)", ("_GrpcTransport", "cygrpc")),
    ("SQLAlchemy (statement build, compile, execute, rows)", ("sqlalchemy/",)),
    ("protobuf (encode/decode)", ("google/protobuf", "_pb2", "SerializeToString", "FromString")),
    ("gRPC (framing, C core, aio glue)", ("grpc/", "grpc_", "cygrpc")),
    ("conversions (natter/convert.py)", ("natter/convert.py",)),
    ("client SDK (natter/sdk)", ("natter/sdk/",)),
    ("metrics", ("prometheus_client", "natter/metrics.py")),
    ("logging", ("logging/",)),
    ("store (message_svc/sqlstore.py)", ("message_svc/sqlstore.py", "message_svc/schema.py")),
    ("message_svc rules (messaging, committer)", ("message_svc/",)),
    ("socket_svc (session, hub, sends)", ("socket_svc/",)),
    ("routing / composition (app/)", ("app/routing.py", "app/embedded.py", "app/roles/")),
    ("asyncio (event loop, tasks, futures)", ("asyncio/", "selectors.py")),
)


def pyspy() -> str | None:
    """The py-spy binary next to this interpreter, or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(
    pid: int, out: Path, rate: int = 200, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Sample every thread of `pid` until it exits, collapsed stacks into `out`."""
    binary = pyspy()
    if binary is None:
        raise SystemExit("--py-spy needs py-spy (pip install -e '.[dev]')")
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--nonblocking",
            "--threads",
            *extra,
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(sampler: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """End a sampler of `start` before its process exits: py-spy writes its file on SIGINT."""
    with contextlib.suppress(ProcessLookupError):
        sampler.send_signal(signal.SIGINT)
    try:
        sampler.wait(timeout)
    except subprocess.TimeoutExpired:
        sampler.kill()
        sampler.wait(5)


def _layer(frames: Sequence[str]) -> str:
    for name, patterns in LAYERS:
        for frame in reversed(frames):
            if any(p in frame for p in patterns):
                return name
    return "other"


def summary(path: Path, top: int = 25) -> str:
    """Busy samples (the loop's and threads' idle waits left out) by layer and by function."""
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1]
        if any(w in leaf for w in ("select (", "poll (", "_worker (", "wait (threading", "epoll")):
            idle += count
            continue
        threads[frames[0]] += count
        layers[_layer(frames[1:])] += count
        own[leaf] += count
    busy = sum(layers.values()) or 1
    lines = [f"== py-spy: {busy:,} busy samples ({idle:,} idle left out)", "-- by thread"]
    lines += [f"{n * 100 / busy:5.1f}%  {t}" for t, n in threads.most_common(8)]
    lines.append("-- by layer (the first whose pattern is in the stack)")
    lines += [f"{n * 100 / busy:5.1f}%  {name}" for name, n in layers.most_common()]
    lines.append("-- by own time")
    lines += [f"{n * 100 / busy:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
